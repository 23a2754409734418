// The connection state machine and its reconnection plan, on a fake clock and socket.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { harness, URL_, fakeToken } from '../support/harness.mjs';
import { settle } from '../support/fake-clock.mjs';

test('connects at once with the subprotocol and the token; connected only on ready', async () => {
  const { gw, sockets, states } = harness();
  assert.equal(gw.state, 'connecting');
  assert.equal(sockets.length, 1);
  const ws = sockets[0];
  assert.deepEqual(ws.protocols, ['coregate.v1.json']);
  assert.equal(new URL(ws.url).origin + new URL(ws.url).pathname, URL_);
  assert.ok(ws.token.split('.').length === 3);
  ws.accept();
  ws.deliver({ op: 'hello', d: { session_id: 's1', heartbeat_interval_ms: 30_000 } });
  assert.equal(gw.state, 'connecting', 'hello is not ready');
  ws.deliver({ op: 'ready', d: { user_id: 'alice', session_id: 's1', topics: ['user:alice', 'global'] } });
  assert.equal(gw.state, 'connected');
  assert.deepEqual(states, [['connected', {}]]);
  assert.equal(gw.userId, 'alice');
  assert.equal(gw.sessionId, 's1');
});

test('a lost connection reconnects with full-jitter backoff that grows, and resets on ready', async () => {
  const { gw, clock, sockets, states } = harness();
  sockets[0].handshake();
  sockets[0].serverClose(1006);
  assert.deepEqual(states.at(-1), ['disconnected', { code: 1006, reason: 'connection lost' }]);
  // random() = 0.5: attempt 0 waits 250 ms (of 500), attempt 1 500 ms (of 1000), attempt 2 1000 ms.
  await clock.advance(249);
  assert.equal(sockets.length, 1);
  await clock.advance(1);
  assert.equal(sockets.length, 2);
  assert.deepEqual(states.at(-1), ['connecting', { code: 1006, reason: 'connection lost' }]);
  sockets[1].serverClose(1006);
  await clock.advance(499);
  assert.equal(sockets.length, 2);
  await clock.advance(1);
  assert.equal(sockets.length, 3);
  sockets[2].serverClose(1006);
  await clock.advance(999);
  assert.equal(sockets.length, 3);
  await clock.advance(1);
  assert.equal(sockets.length, 4);
  sockets[3].handshake();
  assert.equal(gw.state, 'connected');
  sockets[3].serverClose(1006);
  await clock.advance(250);
  assert.equal(sockets.length, 5, 'back to the first delay after a successful connection');
  assert.deepEqual(
    states.map(([s]) => s),
    ['connected', 'disconnected', 'connecting', 'disconnected', 'connecting', 'disconnected', 'connecting',
      'connected', 'disconnected', 'connecting'],
  );
});

test('the backoff never exceeds maxReconnectDelayMs', async () => {
  const { clock, sockets } = harness({ random: () => 0.999, maxReconnectDelayMs: 4000 });
  for (let i = 0; i < 8; i++) {
    sockets.at(-1).serverClose(1006);
    const before = sockets.length;
    await clock.advance(4000);
    assert.equal(sockets.length, before + 1, `attempt ${i} within 4 s`);
  }
});

test("1012 after `reconnect {retry_after_ms}`: waits the server's delay, not the backoff", async () => {
  const { clock, sockets, states } = harness();
  sockets[0].handshake();
  sockets[0].deliver({ op: 'reconnect', d: { reason: 'service restart', retry_after_ms: 1000 } });
  sockets[0].serverClose(1012, 'service restart');
  assert.deepEqual(states.at(-1), ['disconnected', { code: 1012, reason: 'service restart' }]);
  await clock.advance(999);
  assert.equal(sockets.length, 1, 'not before retry_after_ms');
  await clock.advance(51); // 1000 + 0.5 × 10% jitter
  assert.equal(sockets.length, 2);
});

test('4008 waits the retry_after_ms of the last rate_limited error', async () => {
  const { clock, sockets } = harness();
  sockets[0].handshake();
  sockets[0].deliver({ op: 'error', d: { code: 'rate_limited', message: 'slow down', retry_after_ms: 3000 } });
  sockets[0].serverClose(4008, 'rate limited');
  await clock.advance(2999);
  assert.equal(sockets.length, 1);
  await clock.advance(151);
  assert.equal(sockets.length, 2);
});

for (const [code, reason] of [[4004, 'authentication failed'], [4011, 'too many connections'], [1000, 'normal closure']]) {
  test(`${code} closes for good: no reconnect, ever`, async () => {
    const { gw, clock, sockets, states } = harness();
    sockets[0].handshake();
    sockets[0].serverClose(code, reason);
    assert.equal(gw.state, 'closed');
    assert.deepEqual(states.at(-1), ['closed', { code, reason }]);
    await clock.advance(120_000);
    assert.equal(sockets.length, 1);
    assert.equal(clock.pending, 0, 'no timer left running');
  });
}

test('4006 with getToken: a new token, then reconnect; with a fixed token: closed', async () => {
  let issued = 0;
  const h = harness({ getToken: async () => fakeToken(undefined, 3600, `u${++issued}`) });
  await settle();
  assert.equal(issued, 1, 'no token yet: getToken before the first connect');
  h.sockets[0].handshake();
  const first = h.sockets[0].token;
  h.sockets[0].serverClose(4006, 'token expired');
  await h.clock.advance(250);
  assert.equal(issued, 2);
  assert.equal(h.sockets.length, 2);
  assert.notEqual(h.sockets[1].token, first);

  const fixed = harness();
  fixed.sockets[0].handshake();
  fixed.sockets[0].serverClose(4006, 'token expired');
  assert.equal(fixed.gw.state, 'closed');
  assert.deepEqual(fixed.states.at(-1), ['closed', { code: 4006, reason: 'token expired' }]);
});

test('getToken resolving null means signed out: closed, 3003', async () => {
  const { gw, sockets, states } = harness({ getToken: async () => null });
  await settle();
  assert.equal(sockets.length, 0);
  assert.equal(gw.state, 'closed');
  assert.equal(states.at(-1)[1].code, 3003);
});

test('getToken throwing is retried with the backoff', async () => {
  let calls = 0;
  const h = harness({
    getToken: async () => {
      calls += 1;
      if (calls === 1) throw new Error('backend down');
      return fakeToken(h.clock);
    },
  });
  await settle();
  assert.equal(h.gw.state, 'disconnected');
  assert.equal(h.states.at(-1)[1].code, 3003);
  assert.match(h.states.at(-1)[1].reason, /backend down/);
  await h.clock.advance(250);
  assert.equal(calls, 2);
  assert.equal(h.sockets.length, 1);
});

test('no ready within connectTimeoutMs: the attempt fails (3004) and is retried', async () => {
  const { gw, clock, sockets, states } = harness({ connectTimeoutMs: 5000 });
  sockets[0].accept();
  await clock.advance(4999);
  assert.equal(gw.state, 'connecting');
  await clock.advance(1);
  assert.deepEqual(states.at(-1), ['disconnected', { code: 3004, reason: 'connect timeout' }]);
  assert.equal(sockets[0].closedByClient.code, 3004);
  await clock.advance(250);
  assert.equal(sockets.length, 2);
});

test('close(): closed with 1000, the socket closed, nothing pending rejects silently', async () => {
  const { gw, clock, sockets, states } = harness();
  sockets[0].handshake();
  const call = gw.rpc('slow', {});
  gw.close();
  assert.deepEqual(states.at(-1), ['closed', { code: 1000, reason: 'client closed' }]);
  assert.equal(sockets[0].closedByClient.code, 1000);
  await assert.rejects(call, { name: 'GatewayError', code: 'closed' });
  await assert.rejects(gw.rpc('after', {}), { code: 'closed' });
  await clock.advance(60_000);
  assert.equal(sockets.length, 1);
  assert.equal(clock.pending, 0);
});

test('connect() after close() opens again', async () => {
  const { gw, sockets, states } = harness();
  sockets[0].handshake();
  gw.close();
  gw.connect();
  assert.equal(sockets.length, 2);
  assert.deepEqual(states.at(-1), ['connecting', {}]);
  sockets[1].handshake();
  assert.equal(gw.state, 'connected');
});

test('a listener closing the gateway on `disconnected` stops the reconnect', async () => {
  const { gw, clock, sockets } = harness();
  gw.on('state', (state) => {
    if (state === 'disconnected') gw.close();
  });
  sockets[0].handshake();
  sockets[0].serverClose(1006);
  assert.equal(gw.state, 'closed');
  await clock.advance(30_000);
  assert.equal(sockets.length, 1);
});

test('offline: drops the connection (3002) and waits for online, which reconnects at once', async () => {
  const { gw, clock, signals, sockets, states } = harness();
  sockets[0].handshake();
  signals.raise('offline');
  assert.deepEqual(states.at(-1), ['disconnected', { code: 3002, reason: 'offline' }]);
  await clock.advance(15_000);
  assert.equal(sockets.length, 1, 'no attempt while offline');
  signals.raise('online');
  assert.equal(sockets.length, 2);
  sockets[1].handshake();
  assert.equal(gw.state, 'connected');
});

test('offline that never says online: still retried, at the backoff ceiling', async () => {
  const { clock, signals, sockets } = harness({ maxReconnectDelayMs: 8000 });
  sockets[0].handshake();
  signals.raise('offline');
  await clock.advance(7999);
  assert.equal(sockets.length, 1);
  await clock.advance(1);
  assert.equal(sockets.length, 2);
});

test('page shown while waiting to reconnect: reconnects at once (not during a server-advised wait)', async () => {
  const { clock, signals, sockets } = harness({ random: () => 0.99 });
  sockets[0].handshake();
  sockets[0].serverClose(1006);
  signals.raise('visible');
  assert.equal(sockets.length, 2, 'skipped the backoff');
  sockets[1].handshake();
  sockets[1].deliver({ op: 'reconnect', d: { reason: 'service restart', retry_after_ms: 1000 } });
  sockets[1].serverClose(1012);
  signals.raise('visible');
  assert.equal(sockets.length, 2, 'the drain asked for a second');
  await clock.advance(1099);
  assert.equal(sockets.length, 3);
});

test('identify mode: the URL carries no token; identify follows hello', () => {
  const { gw, sockets } = harness({ tokenIn: 'identify' });
  const ws = sockets[0];
  assert.equal(ws.token, null);
  ws.accept();
  ws.deliver({ op: 'hello', d: { session_id: 's', heartbeat_interval_ms: 30_000 } });
  const [identify] = ws.sentOps('identify');
  assert.ok(identify.d.token.length > 10);
  assert.equal(typeof identify.ref, 'number');
  ws.deliver({ op: 'ready', d: { user_id: 'alice', session_id: 's', topics: [] }, ref: identify.ref });
  assert.equal(gw.state, 'connected');
});

test('an undecodable frame ends the connection (3005) and reconnects', async () => {
  const { clock, sockets, states } = harness();
  sockets[0].handshake();
  sockets[0].onmessage({ data: '{"op":"pong"}\n{not json' });
  assert.equal(states.at(-1)[0], 'disconnected');
  assert.equal(states.at(-1)[1].code, 3005);
  await clock.advance(250);
  assert.equal(sockets.length, 2);
});

test('`event` carries every server message; typed events carry each op', () => {
  const { gw, sockets } = harness();
  const events = [];
  const hellos = [];
  gw.on('event', (message) => events.push(message.op));
  gw.on('hello', (message) => hellos.push(message.d.heartbeat_interval_ms));
  sockets[0].handshake({ heartbeat: 25_000 });
  sockets[0].deliver({ op: 'pong' }, { op: 'notice', d: {}, topic: 'global' });
  assert.deepEqual(events, ['hello', 'ready', 'pong', 'notice']);
  assert.deepEqual(hellos, [25_000]);
});

test('a connection refused with an error alone (no close event) fails the attempt at once', async () => {
  const { gw, clock, sockets, states } = harness();
  sockets[0].refuse();
  assert.deepEqual(states.at(-1), ['disconnected', { code: 1006, reason: 'connection failed' }]);
  sockets[0].serverClose(1006); // a late close event changes nothing
  assert.equal(states.length, 1);
  await clock.advance(250);
  assert.equal(sockets.length, 2);
  sockets[1].handshake();
  assert.equal(gw.state, 'connected');
});
