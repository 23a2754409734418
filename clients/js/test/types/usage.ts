// The public API as an app writes it, type-checked against the built declarations
// (`npm run typecheck`): the example, typed events, and what must not compile.
import { Gateway, GatewayError, type ConnectionState, type Publication, type StateInfo } from 'coregate-client';
import 'coregate-client/msgpack';

declare const token: string;

const gw = new Gateway('ws://host:8080/ws', { token, encoding: 'json' });
gw.on('state', (state: ConnectionState, info: StateInfo) => {
  const code: number | undefined = info.code;
  const reason: string | undefined = info.reason;
  void [state, code, reason];
});
const sub = gw.subscribe('channel:42', { recover: true });
sub.on('publication', (ev: Publication) => {
  const offset: number | undefined = ev.offset;
  const epoch: string | undefined = ev.epoch;
  void [ev.op, ev.d, ev.topic, offset, epoch];
});
sub.on('gap', (gap) => {
  const reason: 'not_recovered' | 'epoch_changed' | 'missed' = gap.reason;
  void reason;
});
sub.on('subscribed', (info) => {
  const recovered: boolean = info.recovered;
  void recovered;
});
gw.on('event', (ev) => void ev.op);
gw.on('presence_update', (m) => {
  const status: 'online' | 'away' | 'busy' | 'invisible' | 'offline' = m.d.status;
  void status;
});
gw.on('voice_offer', (m) => void m.d.sdp.length);
gw.on('hello', (m) => void m.d.heartbeat_interval_ms.toFixed());

async function chat(): Promise<void> {
  const result: { id: number } = await gw.rpc<{ id: number }>('send_message', { text: 'hi' });
  const history = await gw.history('channel:42', { limit: 20 });
  const offsets: number[] = history.publications.map((p) => p.offset);
  const users = await gw.presence.query(['bob']);
  const room = await gw.voice.join('voice:1');
  void [result, offsets, users[0]?.status, room.participants];
  gw.typing('channel:42');
  gw.presence.set('away');
  const watch = gw.presence.watch(['bob']);
  watch.on('change', (user) => void user.since);
  try {
    await gw.rpc('x');
  } catch (error) {
    if (error instanceof GatewayError) void error.code;
  }
}
void chat;

const msgpack = new Gateway('wss://host/ws', { getToken: async () => token, encoding: 'msgpack', tokenIn: 'identify' });
msgpack.close();

// @ts-expect-error: not an encoding
new Gateway('ws://h/ws', { encoding: 'xml' });
// @ts-expect-error: `offline` is read, never set
gw.presence.set('offline');
// @ts-expect-error: hello carries no status
gw.on('hello', (m) => m.d.status);
// @ts-expect-error: no such subscription event
sub.on('message', () => {});
gw.close();
