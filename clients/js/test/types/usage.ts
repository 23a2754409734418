// The public API as an app writes it, type-checked against the built declarations
// (`npm run typecheck`): the example, typed events, and what must not compile.
import {
  Gateway,
  GatewayError,
  VoiceError,
  type ConnectionState,
  type Publication,
  type StateInfo,
  type VoiceEnd,
  type VoiceErrorCode,
  type VoiceSession,
} from 'coregate-client';
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
gw.on('voice_ice_candidate', (m) => void m.d.candidate.startsWith('candidate:'));
gw.on('voice_error', (m) => {
  const code: VoiceErrorCode = m.d.code;
  void code;
});
gw.voice.on('session', (session: VoiceSession) => {
  const cause: 'join' | 'rejoin' | 'moved' = session.cause;
  void [cause, session.participants[0]?.muted];
});
gw.voice.on('end', (end: VoiceEnd) => void [end.reason, end.rejoining, end.error?.code]);
gw.voice.on('error', (error) => void error.channel);
gw.on('hello', (m) => void m.d.heartbeat_interval_ms.toFixed());

async function chat(): Promise<void> {
  const result: { id: number } = await gw.rpc<{ id: number }>('send_message', { text: 'hi' });
  const history = await gw.history('channel:42', { limit: 20 });
  const offsets: number[] = history.publications.map((p) => p.offset);
  const users = await gw.presence.query(['bob']);
  const room = await gw.voice.join('lounge', { rejoin: true, timeoutMs: 5000 });
  void [result, offsets, users[0]?.status, room.participants];
  const sent: boolean = gw.voice.answer('lounge', 'v=0') && gw.voice.candidate('lounge', { candidate: 'candidate:1 …' });
  await gw.voice.mute('lounge');
  await gw.voice.unmute('lounge');
  const state: 'joining' | 'joined' | 'away' | undefined = gw.voice.room?.state;
  await gw.voice.leave('lounge');
  void [sent, state];
  gw.typing('channel:42');
  gw.presence.set('away');
  const watch = gw.presence.watch(['bob']);
  watch.on('change', (user) => void user.since);
  try {
    await gw.rpc('x');
  } catch (error) {
    if (error instanceof GatewayError) void error.code;
  }
  try {
    await gw.voice.join('vip');
  } catch (error) {
    if (error instanceof VoiceError) {
      const code: VoiceErrorCode = error.code;
      void [code, error.channel];
    }
  }
}
void chat;

// The README's voice recipe, as written there.
declare const speakers: { play(userId: string, track: MediaStreamTrack): void };
async function voiceRecipe(): Promise<void> {
  const microphone = await navigator.mediaDevices.getUserMedia({ audio: true });
  let pc: RTCPeerConnection | undefined;
  let steps = Promise.resolve(); // offers and candidates are applied in order
  const inOrder = (step: () => Promise<void>) => (steps = steps.then(step).catch(console.error));

  gw.voice.on('session', () => {
    pc?.close();
    pc = new RTCPeerConnection();
    pc.addTrack(microphone.getAudioTracks()[0]!, microphone);
    pc.ontrack = ({ track, streams }) => speakers.play(streams[0]!.id, track);
  });
  gw.voice.on('end', () => {
    pc?.close();
    pc = undefined;
  });
  gw.on('voice_offer', ({ d }) => {
    const session = pc!;
    inOrder(async () => {
      await session.setRemoteDescription({ type: 'offer', sdp: d.sdp });
      await session.setLocalDescription();
      gw.voice.answer(d.channel, session.localDescription!.sdp);
    });
  });
  gw.on('voice_ice_candidate', ({ d }) => {
    const session = pc!;
    inOrder(() => session.addIceCandidate({ candidate: d.candidate, sdpMid: session.getTransceivers()[0]!.mid }));
  });

  const room = await gw.voice.join('lounge', { rejoin: true });
  await gw.voice.mute('lounge');
  await gw.voice.leave('lounge');
  void room.participants;
}
void voiceRecipe;

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
// @ts-expect-error: a candidate is its SDP line, not any value
gw.voice.candidate('lounge', 42);
// @ts-expect-error: not a voice error code
const wrongCode: VoiceErrorCode = 'nope';
void wrongCode;
gw.close();
