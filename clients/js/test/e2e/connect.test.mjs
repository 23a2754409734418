// Connect, subscribe and receive, in both encodings, against a real gateway.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Gateway } from '../../dist/index.js';
import { connect, record } from '../support/clients.mjs';
import { sign, token } from '../support/jwt.mjs';
import { GatewayProcess } from '../support/processes.mjs';
import { next, state, until } from '../support/wait.mjs';

for (const encoding of ['json', 'msgpack']) {
  test(`${encoding}: connect, subscribe, receive publications (and the automatic topics'), read history`, async (t) => {
    const gateway = await GatewayProcess.start(['--history', 'channel:=200/24h']);
    t.after(() => gateway.kill());
    const gw = await connect(t, gateway.url, 'alice', { encoding });
    assert.equal(gw.userId, 'alice');
    const sub = gw.subscribe('channel:42', { recover: true });
    const log = record(sub);
    await state(sub, 'subscribed');
    assert.deepEqual(log.subscribed[0].position, { offset: 0, epoch: '' });
    const everywhere = [];
    gw.on('publication', (p) => everywhere.push(`${p.topic} ${p.op}`));

    assert.equal(await gateway.publish('channel:42', 'message_new', { text: 'hi', n: 2 ** 40 }), 202);
    await until(sub, 'publication', () => log.publications.length === 1);
    const [ev] = log.publications;
    assert.equal(ev.op, 'message_new');
    assert.deepEqual(ev.d, { text: 'hi', n: 2 ** 40 });
    assert.equal(ev.topic, 'channel:42');
    assert.equal(ev.offset, 1);
    assert.equal(typeof ev.epoch, 'string');
    assert.deepEqual(sub.position, { offset: 1, epoch: ev.epoch });

    await gateway.publish('user:alice', 'incoming_call', { from: 'bob' });
    await gateway.publish('global', 'notice', { text: 'maintenance' });
    await until(gw, 'publication', () => everywhere.length === 3);
    assert.deepEqual(everywhere, ['channel:42 message_new', 'user:alice incoming_call', 'global notice']);

    await gateway.publish('channel:42', 'message_new', { text: 'second' });
    await gateway.publish('channel:42', 'message_new', { text: 'third' });
    await until(sub, 'publication', () => log.publications.length === 3);
    const history = await gw.history('channel:42', { limit: 2 });
    assert.deepEqual(history.publications.map((p) => [p.offset, p.d.text]), [[2, 'second'], [3, 'third']]);
    assert.equal(history.offset, 3);
    await assert.rejects(gw.history('channel:42', { limit: 1000 }), { code: 'limit' });
  });
}

test('a topic the token does not allow: the subscription errors and ends', async (t) => {
  const gateway = await GatewayProcess.start();
  t.after(() => gateway.kill());
  const gw = await connect(t, gateway.url, 'alice', { token: token('alice', { topics: ['channel:1'] }) });
  const allowed = gw.subscribe('channel:1');
  const refused = gw.subscribe('channel:2');
  const [error] = await next(refused, 'error');
  assert.equal(error.code, 'forbidden');
  assert.equal(refused.state, 'unsubscribed');
  await state(allowed, 'subscribed');
});

test('identify mode with a bad token: closed 4004, and never retried', async (t) => {
  const gateway = await GatewayProcess.start();
  t.after(() => gateway.kill());
  const gw = new Gateway(gateway.url, {
    token: sign({ sub: 'mallory', exp: Math.floor(Date.now() / 1000) + 60 }, 'another-secret-0123456789'),
    tokenIn: 'identify',
    minReconnectDelayMs: 50,
    signals: null,
  });
  t.after(() => gw.close());
  const transitions = [];
  gw.on('state', (s, info) => transitions.push([s, info.code]));
  const info = await state(gw, 'closed');
  assert.equal(info.code, 4004);
  assert.deepEqual(transitions, [['closed', 4004]]);
});

test('identify mode with a good token connects without a token in the URL', async (t) => {
  const gateway = await GatewayProcess.start();
  t.after(() => gateway.kill());
  const gw = await connect(t, gateway.url, 'alice', { tokenIn: 'identify', encoding: 'msgpack' });
  assert.equal(gw.userId, 'alice');
});
