// Reconnection against real gateways: a restart, a drain, a frozen server, token renewal.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { connect, record } from '../support/clients.mjs';
import { token } from '../support/jwt.mjs';
import { GatewayProcess } from '../support/processes.mjs';
import { next, state, until } from '../support/wait.mjs';

test('the gateway is killed and started again: the client comes back and resubscribes', async (t) => {
  let gateway = await GatewayProcess.start(['--history', 'channel:=100/1h']);
  t.after(() => gateway.kill());
  const port = gateway.port;
  const gw = await connect(t, gateway.url, 'alice');
  const sub = gw.subscribe('channel:7', { recover: true });
  const log = record(sub);
  await state(sub, 'subscribed');
  await gateway.publish('channel:7', 'message_new', { text: 'before' });
  await until(sub, 'publication', () => log.publications.length === 1);

  const transitions = [];
  gw.on('state', (s, info) => transitions.push([s, info.code]));
  await gateway.kill();
  await state(gw, 'disconnected');
  assert.deepEqual(transitions[0], ['disconnected', 1006]);
  // On the same port at once: the killed process's connections linger in TIME_WAIT there,
  // which the gateway's listeners (SO_REUSEADDR) start through.
  gateway = await GatewayProcess.start(['--history', 'channel:=100/1h'], { listen: `127.0.0.1:${port}` });
  await state(gw, 'connected', 10_000);
  await until(sub, 'subscribed', () => log.subscribed.length === 2);
  // The new process keeps its streams in memory: another epoch, so nothing to recover from.
  assert.equal(log.subscribed[1].resubscribed, true);
  assert.equal(log.subscribed[1].recovered, false);
  assert.deepEqual(log.gaps.map((g) => g.reason), ['not_recovered']);
  await gateway.publish('channel:7', 'message_new', { text: 'after' });
  await until(sub, 'publication', () => log.publications.length === 2);
  assert.deepEqual(log.publications.map((p) => p.d.text), ['before', 'after']);
});

test('a server that goes silent (SIGSTOP: half-open) is noticed by the watchdog, 3001', async (t) => {
  const gateway = await GatewayProcess.start(['--heartbeat-interval', '1s']);
  t.after(async () => {
    gateway.thaw();
    await gateway.kill();
  });
  const gw = await connect(t, gateway.url, 'alice', { pongTimeoutMs: 1000, connectTimeoutMs: 1500 });
  const sub = gw.subscribe('channel:1');
  await state(sub, 'subscribed');
  const frozenAt = Date.now();
  gateway.freeze();
  const info = await state(gw, 'disconnected', 5000);
  assert.equal(info.code, 3001);
  assert.ok(Date.now() - frozenAt <= 2500, `noticed after ${Date.now() - frozenAt} ms`);
  // Attempts against the frozen process time out (3004) rather than hang.
  const failed = await next(gw, 'state', (s, i) => s === 'disconnected' && i.code === 3004, 5000);
  assert.equal(failed[1].reason, 'connect timeout');
  gateway.thaw();
  await state(gw, 'connected', 5000);
  await state(sub, 'subscribed');
});

test('the token is renewed before it expires and handed over with refresh: no reconnect', async (t) => {
  const gateway = await GatewayProcess.start();
  t.after(() => gateway.kill());
  let issued = 0;
  const gw = await connect(t, gateway.url, 'alice', {
    token: undefined,
    getToken: async () => {
      issued += 1;
      return token('alice', { ttlSeconds: 3 });
    },
  });
  const session = gw.sessionId;
  const refreshed = [];
  gw.on('refreshed', (m) => refreshed.push(m.d.exp));
  const transitions = [];
  gw.on('state', (s) => transitions.push(s));
  // Each 3-second token is renewed at four fifths of its life: past two of them, the first
  // token has long expired and the connection is still the same.
  await until(gw, 'refreshed', () => refreshed.length === 2, 8000);
  assert.ok(issued >= 3, `${issued} tokens`);
  assert.equal(gw.sessionId, session);
  assert.deepEqual(transitions, []);
  assert.ok(refreshed[1] > refreshed[0]);
});
