// rpc, history and their timeouts, queueing while disconnected, loss in flight.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { harness } from '../support/harness.mjs';

test('rpc resolves with rpc_result.d of the reply that echoes its ref', async () => {
  const { gw, sockets } = harness();
  sockets[0].handshake();
  const call = gw.rpc('send_message', { text: 'hi' });
  const [sent] = sockets[0].sentOps('rpc');
  assert.deepEqual(sent.d, { method: 'send_message', d: { text: 'hi' } });
  sockets[0].deliver({ op: 'rpc_result', d: { d: { id: 7 } }, ref: sent.ref + 1000 }); // not ours
  sockets[0].deliver({ op: 'rpc_result', d: { d: { id: 1 } }, ref: sent.ref });
  assert.deepEqual(await call, { id: 1 });
});

test("an error reply rejects with the server's code, the backend's own included", async () => {
  const { gw, sockets } = harness();
  sockets[0].handshake();
  const call = gw.rpc('ban', {});
  const { ref } = sockets[0].sentOps('rpc')[0];
  sockets[0].deliver({ op: 'error', d: { code: 'not_a_moderator', message: 'no' }, ref });
  await assert.rejects(call, (error) => error.name === 'GatewayError' && error.code === 'not_a_moderator' && error.message === 'no');
});

test('no reply within the timeout: rejected `timeout` (on the fake clock)', async () => {
  const { gw, clock, sockets } = harness({ requestTimeoutMs: 2000 });
  sockets[0].handshake();
  let outcome;
  gw.rpc('slow').catch((error) => (outcome = error.code));
  const quick = gw.rpc('slow', undefined, { timeoutMs: 500 }).catch((error) => error.code);
  await clock.advance(500);
  assert.equal(await quick, 'timeout');
  assert.equal(outcome, undefined);
  await clock.advance(1500);
  assert.equal(outcome, 'timeout');
});

test('made while disconnected: sent once connected; lost in flight: rejected `disconnected`', async () => {
  const { gw, clock, sockets } = harness();
  const early = gw.history('channel:1', { limit: 5 });
  sockets[0].handshake();
  const [history] = sockets[0].sentOps('history');
  assert.deepEqual(history.d, { topic: 'channel:1', limit: 5 });
  sockets[0].deliver({ op: 'history', d: { topic: 'channel:1', publications: [{ op: 'm', d: 1, offset: 1 }], offset: 1, epoch: 'e' }, ref: history.ref });
  assert.deepEqual((await early).publications, [{ op: 'm', d: 1, offset: 1 }]);

  const inFlight = gw.rpc('x');
  sockets[0].serverClose(1006);
  await assert.rejects(inFlight, { code: 'disconnected' });
  const queued = gw.rpc('y');
  await clock.advance(250);
  sockets[1].handshake();
  const [rpc] = sockets[1].sentOps('rpc');
  assert.equal(rpc.d.method, 'y');
  sockets[1].deliver({ op: 'rpc_result', d: { d: 'ok' }, ref: rpc.ref });
  assert.equal(await queued, 'ok');
});

test('a queued request that times out is never sent', async () => {
  const { gw, clock, sockets } = harness();
  const call = gw.rpc('late', undefined, { timeoutMs: 100 }).catch((error) => error.code);
  await clock.advance(100);
  assert.equal(await call, 'timeout');
  sockets[0].handshake();
  assert.deepEqual(sockets[0].sentOps('rpc'), []);
});
