// The heartbeat and the watchdog that notices a silent server (half-open TCP).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { harness } from '../support/harness.mjs';

test('pings every heartbeat_interval_ms from hello', async () => {
  const { clock, sockets } = harness();
  sockets[0].autoPong = false;
  sockets[0].handshake({ heartbeat: 20_000 });
  await clock.advance(19_999);
  assert.equal(sockets[0].sentOps('ping').length, 0);
  await clock.advance(1);
  assert.equal(sockets[0].sentOps('ping').length, 1);
  sockets[0].deliver({ op: 'pong' });
  await clock.advance(20_000);
  assert.equal(sockets[0].sentOps('ping').length, 2);
  assert.deepEqual(sockets[0].messages.at(-1), { op: 'ping' });
});

test('a server silent for the interval plus pongTimeoutMs is gone: 3001, then reconnect', async () => {
  const { gw, clock, sockets, states } = harness({ pongTimeoutMs: 5000 });
  sockets[0].autoPong = false;
  sockets[0].handshake({ heartbeat: 20_000 });
  await clock.advance(20_000);
  sockets[0].deliver({ op: 'pong' }); // alive at t=20 s: the watchdog now runs to 45 s
  await clock.advance(24_999);
  assert.equal(gw.state, 'connected');
  await clock.advance(1);
  assert.deepEqual(states.at(-1), ['disconnected', { code: 3001, reason: 'server silent' }]);
  assert.equal(sockets[0].closedByClient.code, 3001);
  await clock.advance(250);
  assert.equal(sockets.length, 2);
});

test('any message keeps the connection alive, not only pongs', async () => {
  const { gw, clock, sockets } = harness({ pongTimeoutMs: 5000 });
  sockets[0].autoPong = false;
  sockets[0].handshake({ heartbeat: 10_000 });
  for (let i = 0; i < 10; i++) {
    await clock.advance(14_000);
    sockets[0].deliver({ op: 'notice', d: {}, topic: 'global' });
  }
  assert.equal(gw.state, 'connected');
});

test('page shown again: pings at once and expects an answer within pongTimeoutMs', async () => {
  const { gw, clock, signals, sockets } = harness({ pongTimeoutMs: 3000 });
  sockets[0].autoPong = false;
  sockets[0].handshake({ heartbeat: 30_000 });
  signals.raise('visible');
  assert.equal(sockets[0].sentOps('ping').length, 1);
  await clock.advance(2999);
  assert.equal(gw.state, 'connected');
  await clock.advance(1);
  assert.equal(gw.state, 'disconnected');
});
