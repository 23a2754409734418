// typing and presence helpers, on the fake socket (voice: voice.test.mjs).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { harness } from '../support/harness.mjs';
import { settle } from '../support/fake-clock.mjs';

test('typing: one typing_start per topic per second however often it is called', async () => {
  const { gw, clock, sockets } = harness();
  assert.equal(gw.typing('channel:1'), false, 'not connected: nothing');
  sockets[0].handshake();
  assert.equal(gw.typing('channel:1'), true);
  for (let i = 0; i < 9; i++) {
    await clock.advance(100);
    gw.typing('channel:1');
  }
  assert.equal(gw.typing('channel:2'), true, 'another topic has its own throttle');
  assert.equal(sockets[0].sentOps('typing_start').length, 2);
  await clock.advance(100);
  assert.equal(gw.typing('channel:1'), true);
  assert.deepEqual(sockets[0].sentOps('typing_start').map((m) => m.d.topic), ['channel:1', 'channel:2', 'channel:1']);
  assert.equal(gw.stopTyping('channel:1'), true);
  assert.equal(gw.stopTyping('channel:1'), false, 'nothing to stop');
  assert.deepEqual(sockets[0].sentOps('typing_stop'), [{ op: 'typing_stop', d: { topic: 'channel:1' } }]);
  assert.equal(gw.typing('channel:1'), true, 'after a stop, the next start goes out at once');
});

test('presence.set is sent, and sent again after a reconnect', async () => {
  const { gw, clock, sockets } = harness();
  sockets[0].handshake();
  gw.presence.set('away');
  assert.deepEqual(sockets[0].sentOps('presence_set').map((m) => m.d), [{ status: 'away' }]);
  sockets[0].serverClose(1006);
  await clock.advance(250);
  sockets[1].handshake();
  assert.deepEqual(sockets[1].sentOps('presence_set').map((m) => m.d), [{ status: 'away' }]);
});

test('presence.query: past 100 ids, several queries, answers in order', async () => {
  const { gw, sockets } = harness();
  sockets[0].handshake();
  const ids = Array.from({ length: 150 }, (_, i) => `u${i}`);
  const result = gw.presence.query(ids);
  const queries = sockets[0].sentOps('presence_query');
  assert.deepEqual(queries.map((q) => q.d.user_ids.length), [100, 50]);
  for (const query of [...queries].reverse()) {
    sockets[0].deliver({
      op: 'presence_state',
      d: { users: query.d.user_ids.map((user_id) => ({ user_id, status: 'offline', since: 0 })) },
      ref: query.ref,
    });
  }
  assert.deepEqual((await result).map((u) => u.user_id), ids);
});

test('presence.watch: subscribes presence:<id>, seeds by query, follows updates, stops', async () => {
  const { gw, clock, sockets } = harness();
  sockets[0].handshake();
  const watch = gw.presence.watch(['bob', 'carol']);
  const changes = [];
  watch.on('change', (user) => changes.push(`${user.user_id}:${user.status}`));
  await settle();
  const [subscribe] = sockets[0].sentOps('subscribe');
  assert.deepEqual(subscribe.d.topics, ['presence:bob', 'presence:carol']);
  sockets[0].deliver({ op: 'subscribed', d: { topics: ['presence:bob', 'presence:carol'] }, ref: subscribe.ref });
  await settle();
  const [query] = sockets[0].sentOps('presence_query');
  assert.deepEqual(query.d.user_ids, ['bob', 'carol'], 'one query for both');
  // An update that crosses the query's answer: the newer one wins.
  sockets[0].deliver({ op: 'presence_update', d: { user_id: 'bob', status: 'away', since: 200 }, topic: 'presence:bob' });
  sockets[0].deliver({
    op: 'presence_state',
    d: { users: [{ user_id: 'bob', status: 'online', since: 100 }, { user_id: 'carol', status: 'busy', since: 150 }] },
    ref: query.ref,
  });
  await settle();
  assert.equal(watch.get('bob').status, 'away');
  assert.equal(watch.get('carol').status, 'busy');
  assert.deepEqual(changes, ['bob:away', 'carol:busy']);
  // After a reconnect the statuses are queried again (presence has no history to recover).
  sockets[0].serverClose(1006);
  await clock.advance(250);
  sockets[1].handshake();
  const [resubscribe] = sockets[1].sentOps('subscribe');
  sockets[1].deliver({ op: 'subscribed', d: { topics: resubscribe.d.topics }, ref: resubscribe.ref });
  await settle();
  assert.equal(sockets[1].sentOps('presence_query').length, 1);
  watch.stop();
  await settle();
  assert.deepEqual(sockets[1].sentOps('unsubscribe').map((m) => m.d.topics), [['presence:bob', 'presence:carol']]);
});

test('presence.watch reports a refused presence topic', async () => {
  const { gw, sockets } = harness();
  sockets[0].handshake();
  const watch = gw.presence.watch(['bob']);
  const errors = [];
  watch.on('error', (error) => errors.push([error.code, error.topics]));
  await settle();
  const [subscribe] = sockets[0].sentOps('subscribe');
  sockets[0].deliver({ op: 'error', d: { code: 'forbidden', message: 'no', topics: ['presence:bob'] }, ref: subscribe.ref });
  assert.deepEqual(errors, [['forbidden', ['presence:bob']]]);
  watch.stop();
});

test("presence.watch leaves the app's own subscription alone", async () => {
  const { gw, sockets } = harness();
  sockets[0].handshake();
  const own = gw.subscribe('presence:bob');
  const watch = gw.presence.watch(['bob']);
  watch.stop();
  await settle();
  assert.equal(own.state, 'subscribing');
  assert.deepEqual(sockets[0].sentOps('unsubscribe'), []);
});
