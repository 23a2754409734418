// What a chat client does, against a real gateway: typing, presence, rpc to a real backend
// (voice: voice.test.mjs).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { startBackend } from '../support/backend.mjs';
import { connect } from '../support/clients.mjs';
import { GatewayProcess } from '../support/processes.mjs';
import { state, until } from '../support/wait.mjs';

test("typing: the throttle sends one start for a burst of keys; the server's TTL stops it", async (t) => {
  const gateway = await GatewayProcess.start(['--typing-ttl', '1s']);
  t.after(() => gateway.kill());
  const alice = await connect(t, gateway.url, 'alice');
  const bob = await connect(t, gateway.url, 'bob', { encoding: 'msgpack' });
  const mine = alice.subscribe('channel:1');
  const theirs = bob.subscribe('channel:1');
  await Promise.all([state(mine, 'subscribed'), state(theirs, 'subscribed')]);
  const seen = [];
  theirs.on('typing_start', (m) => seen.push(['start', m.d.user_id, m.d.name, Date.now()]));
  theirs.on('typing_stop', (m) => seen.push(['stop', m.d.user_id, m.d.name, Date.now()]));
  let sent = 0;
  for (let key = 0; key < 20; key++) if (alice.typing('channel:1')) sent += 1;
  assert.equal(sent, 1, 'twenty keystrokes, one typing_start');
  await until(theirs, 'typing_stop', () => seen.length === 2, 4000);
  assert.deepEqual(seen.map(([kind, user, name]) => [kind, user, name]), [['start', 'alice', 'ALICE'], ['stop', 'alice', 'ALICE']]);
  assert.ok(seen[1][3] - seen[0][3] >= 900, 'stopped by the TTL');
  // The TTL ran from the server's receipt of the start, so the client's second is due too;
  // stopTyping then ends the indicator at once.
  assert.equal(alice.typing('channel:1'), true);
  await until(theirs, 'typing_start', () => seen.length === 3, 3000);
  assert.equal(alice.stopTyping('channel:1'), true);
  await until(theirs, 'typing_stop', () => seen.length === 4, 1000);
  assert.ok(seen[3][3] - seen[2][3] < 900, 'stopped before the TTL');
});

test('presence: set, query and watch, with offline after the grace', async (t) => {
  const gateway = await GatewayProcess.start(['--presence-grace', '300ms']);
  t.after(() => gateway.kill());
  const bob = await connect(t, gateway.url, 'bob');
  const watch = bob.presence.watch(['alice', 'carol']);
  t.after(() => watch.stop());
  const changes = [];
  watch.on('change', (user) => changes.push(`${user.user_id}:${user.status}`));
  await until(watch, 'change', () => changes.length === 2, 3000);
  assert.deepEqual(changes.sort(), ['alice:offline', 'carol:offline']);

  const alice = await connect(t, gateway.url, 'alice', { encoding: 'msgpack' });
  await until(watch, 'change', () => watch.get('alice').status === 'online', 3000);
  alice.presence.set('away');
  await until(watch, 'change', () => watch.get('alice').status === 'away', 3000);
  const [state_] = await bob.presence.query(['alice', 'nobody']).then((users) => [users]);
  assert.deepEqual(state_.map((u) => [u.user_id, u.status]), [['alice', 'away'], ['nobody', 'offline']]);
  alice.close();
  await until(watch, 'change', () => watch.get('alice').status === 'offline', 3000);
  assert.deepEqual(changes.filter((c) => c.startsWith('alice')), ['alice:offline', 'alice:online', 'alice:away', 'alice:offline']);
});

test('rpc: resolves with the backend answer, rejects with its error code, and times out as unavailable', async (t) => {
  const backend = await startBackend((call) => {
    if (call.method === 'send_message') return { d: { id: 1, text: call.d.text, by: call.user_id } };
    if (call.method === 'ban') return { error: { code: 'not_a_moderator', message: 'moderators only' } };
    return undefined; // never answers
  });
  t.after(() => backend.stop());
  const gateway = await GatewayProcess.start(['--proxy-rpc-url', backend.url, '--proxy-timeout', '300ms']);
  t.after(() => gateway.kill());
  for (const encoding of ['json', 'msgpack']) {
    const gw = await connect(t, gateway.url, 'alice', { encoding });
    assert.deepEqual(await gw.rpc('send_message', { text: 'hi' }), { id: 1, text: 'hi', by: 'alice' });
    await assert.rejects(gw.rpc('ban', { user: 'bob' }), { code: 'not_a_moderator', message: 'moderators only' });
    await assert.rejects(gw.rpc('slow', {}), { code: 'unavailable' });
    await assert.rejects(gw.rpc('slow', {}, { timeoutMs: 50 }), { code: 'timeout' });
    gw.close();
  }
  assert.equal(backend.calls.filter((c) => c.body.method === 'send_message').length, 2);
  assert.equal(backend.calls[0].body.session_id.length > 0, true);
});
