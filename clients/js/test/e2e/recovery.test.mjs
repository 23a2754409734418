// Recovery through a real Redis: what was published while the client was away arrives after
// it reconnects, exactly once and in order; a drain brings it back within retry_after_ms.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { connect, record } from '../support/clients.mjs';
import { cleanups, GatewayProcess, RedisProcess } from '../support/processes.mjs';
import { state, until } from '../support/wait.mjs';

const texts = (log) => log.publications.map((p) => p.d.text);

for (const encoding of ['json', 'msgpack']) {
  test(`${encoding}: killed and restarted, the client recovers what it missed with since`, async (t) => {
    const defer = cleanups(t);
    const redis = await RedisProcess.start();
    defer(() => redis.stop());
    const flags = ['--redis-url', redis.url, '--history', 'channel:=100/1h'];
    let node = await GatewayProcess.start(flags);
    defer(() => node.kill());
    const other = await GatewayProcess.start(flags); // the backend keeps publishing through it
    defer(() => other.kill());
    const port = node.port;

    const gw = await connect(t, node.url, 'alice', { encoding });
    const sub = gw.subscribe('channel:9', { recover: true });
    const log = record(sub);
    await state(sub, 'subscribed');
    for (const text of ['m1', 'm2', 'm3']) assert.equal(await node.publish('channel:9', 'message_new', { text }), 202);
    await until(sub, 'publication', () => log.publications.length === 3);
    const before = sub.position;
    assert.equal(before.offset, 3);

    await node.kill();
    await state(gw, 'disconnected');
    for (const text of ['m4', 'm5', 'm6']) assert.equal(await other.publish('channel:9', 'message_new', { text }), 202);
    node = await GatewayProcess.start(flags, { listen: `127.0.0.1:${port}` });
    await until(sub, 'publication', () => log.publications.length === 6, 10_000);
    assert.deepEqual(log.subscribed.at(-1), {
      topic: 'channel:9',
      recovered: true,
      resubscribed: true,
      position: before,
    });
    await other.publish('channel:9', 'message_new', { text: 'm7' });
    await until(sub, 'publication', () => log.publications.length === 7);
    assert.deepEqual(texts(log), ['m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7']);
    assert.deepEqual(log.publications.map((p) => p.offset), [1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual(log.gaps, []);
  });
}

test('drain (SIGTERM): reconnect + 1012, back on the successor after retry_after_ms, recovered', async (t) => {
  const defer = cleanups(t);
  const redis = await RedisProcess.start();
  defer(() => redis.stop());
  const flags = ['--redis-url', redis.url, '--history', 'channel:=100/1h', '--drain-window', '200ms'];
  const old = await GatewayProcess.start(flags);
  defer(() => old.kill());
  const gw = await connect(t, old.url, 'alice');
  const sub = gw.subscribe('channel:1', { recover: true });
  const log = record(sub);
  await state(sub, 'subscribed');
  assert.equal(await old.publish('channel:1', 'message_new', { text: 'm1' }), 202);
  await until(sub, 'publication', () => log.publications.length === 1);
  // The zero-downtime restart of the README: the successor joins the port, then the old node drains.
  const successor = await GatewayProcess.start([...flags, '--reuse-port-with-running'], { listen: old.ws });
  defer(() => successor.kill());
  const reconnect = new Promise((resolve) => gw.on('reconnect', (m) => resolve(m.d)));
  // When each transition happened, whenever the test gets to look.
  const at = {};
  gw.on('state', (s) => (at[s] ??= Date.now()));
  const drained = old.drain();
  const info = await state(gw, 'disconnected');
  assert.equal(info.code, 1012);
  const advice = await reconnect;
  assert.equal(advice.retry_after_ms, 1000);
  assert.equal(await successor.publish('channel:1', 'message_new', { text: 'm2 (while away)' }), 202);
  await state(gw, 'connected', 5000);
  const away = at.connected - at.disconnected;
  assert.ok(away >= 1000 && away < 1000 * 1.1 + 400, `back after ${away} ms`);
  await until(sub, 'publication', () => log.publications.length === 2);
  assert.equal(log.subscribed.at(-1).recovered, true);
  assert.deepEqual(texts(log), ['m1', 'm2 (while away)']);
  assert.equal(await drained, 0, 'the old node exits 0 once drained');
});
