// Subscriptions across reconnects: one message per moment, `since` from the last publication,
// `recovered` and `gap`, refusals and retries.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { harness } from '../support/harness.mjs';
import { settle } from '../support/fake-clock.mjs';

/** Records a subscription's events as `[name, payload]`. */
function record(sub) {
  const seen = [];
  for (const name of ['state', 'subscribed', 'publication', 'gap', 'error']) {
    sub.on(name, (payload) => seen.push([name, payload]));
  }
  return seen;
}

const pub = (topic, offset, epoch = 'e1', text = `m${offset}`) => ({ op: 'message_new', d: { text }, topic, offset, epoch });

test('the subscribes of one moment go in one message, once ready', async () => {
  const { gw, sockets } = harness();
  const a = gw.subscribe('channel:1');
  const b = gw.subscribe('channel:2', { recover: true });
  assert.equal(gw.subscribe('channel:1'), a, 'one subscription per topic');
  await settle();
  assert.equal(sockets[0].sent.length, 0, 'nothing before ready');
  sockets[0].handshake();
  const [subscribe] = sockets[0].sentOps('subscribe');
  assert.deepEqual(subscribe.d, { topics: ['channel:1', 'channel:2'] });
  assert.equal(a.state, 'subscribing');
  sockets[0].deliver({ op: 'subscribed', d: { topics: ['channel:1', 'channel:2'] }, ref: subscribe.ref });
  assert.equal(a.state, 'subscribed');
  assert.equal(b.state, 'subscribed');
  gw.subscribe('channel:3');
  gw.subscribe('channel:4');
  await settle();
  assert.deepEqual(sockets[0].sentOps('subscribe')[1].d, { topics: ['channel:3', 'channel:4'] });
});

test('recovery: resubscribes with since = the last publication, replay delivered, copies dropped', async () => {
  const { gw, clock, sockets } = harness();
  const sub = gw.subscribe('channel:42', { recover: true });
  const seen = record(sub);
  const all = [];
  gw.on('publication', (p) => all.push(p.offset));
  sockets[0].handshake();
  const first = sockets[0].sentOps('subscribe')[0];
  sockets[0].deliver({
    op: 'subscribed',
    d: { topics: ['channel:42'], positions: { 'channel:42': { offset: 5, epoch: 'e1' } } },
    ref: first.ref,
  });
  sockets[0].deliver(pub('channel:42', 6), pub('channel:42', 7));
  assert.deepEqual(sub.position, { offset: 7, epoch: 'e1' });
  sockets[0].deliver({ op: 'reconnect', d: { reason: 'slow consumer', retry_after_ms: 1000 } });
  sockets[0].serverClose(4010, 'slow consumer');
  assert.equal(sub.state, 'subscribing');
  await clock.advance(1050);
  sockets[1].handshake();
  const again = sockets[1].sentOps('subscribe')[0];
  assert.deepEqual(again.d, { topics: ['channel:42'], since: { 'channel:42': { offset: 7, epoch: 'e1' } } });
  sockets[1].deliver(
    {
      op: 'subscribed',
      d: { topics: ['channel:42'], positions: { 'channel:42': { offset: 9, epoch: 'e1' } }, recovered: { 'channel:42': true } },
      ref: again.ref,
    },
    pub('channel:42', 8),
    pub('channel:42', 9),
    pub('channel:42', 9),
    pub('channel:42', 10),
  );
  const subscribedEvents = seen.filter(([n]) => n === 'subscribed').map(([, p]) => p);
  assert.deepEqual(subscribedEvents[1], {
    topic: 'channel:42',
    recovered: true,
    resubscribed: true,
    position: { offset: 7, epoch: 'e1' },
  });
  assert.deepEqual(all, [6, 7, 8, 9, 10], 'each once, in order');
  assert.equal(seen.filter(([n]) => n === 'gap').length, 0);
});

test('not recovered: one gap, and the subscription continues from the server position', async () => {
  const { gw, clock, sockets } = harness();
  const sub = gw.subscribe('channel:42', { recover: true });
  const seen = record(sub);
  sockets[0].handshake();
  sockets[0].deliver({
    op: 'subscribed',
    d: { topics: ['channel:42'], positions: { 'channel:42': { offset: 3, epoch: 'e1' } } },
    ref: sockets[0].sentOps('subscribe')[0].ref,
  });
  sockets[0].serverClose(1006);
  await clock.advance(250);
  sockets[1].handshake();
  const again = sockets[1].sentOps('subscribe')[0];
  assert.deepEqual(again.d.since, { 'channel:42': { offset: 3, epoch: 'e1' } });
  sockets[1].deliver({
    op: 'subscribed',
    d: { topics: ['channel:42'], positions: { 'channel:42': { offset: 1, epoch: 'e2' } }, recovered: { 'channel:42': false } },
    ref: again.ref,
  });
  const gaps = seen.filter(([n]) => n === 'gap').map(([, p]) => p);
  assert.deepEqual(gaps, [{ topic: 'channel:42', reason: 'not_recovered', position: { offset: 1, epoch: 'e2' } }]);
  sockets[1].deliver(pub('channel:42', 2, 'e2'));
  assert.deepEqual(sub.position, { offset: 2, epoch: 'e2' });
  assert.equal(seen.filter(([n]) => n === 'gap').length, 1, 'the next publication follows on: no second gap');
});

test('recover on a topic without history: a resubscribe cannot recover, so it is a gap', async () => {
  const { gw, clock, sockets } = harness();
  const sub = gw.subscribe('channel:plain', { recover: true });
  const plain = gw.subscribe('channel:other');
  const seen = record(sub);
  const seenPlain = record(plain);
  sockets[0].handshake();
  sockets[0].deliver({ op: 'subscribed', d: { topics: ['channel:plain', 'channel:other'] }, ref: sockets[0].sentOps('subscribe')[0].ref });
  assert.equal(seen.filter(([n]) => n === 'gap').length, 0, 'a first subscribe is no gap');
  sockets[0].serverClose(1006);
  await clock.advance(250);
  sockets[1].handshake();
  const again = sockets[1].sentOps('subscribe')[0];
  assert.equal(again.d.since, undefined, 'no position to send');
  sockets[1].deliver({ op: 'subscribed', d: { topics: ['channel:plain', 'channel:other'] }, ref: again.ref });
  assert.deepEqual(seen.filter(([n]) => n === 'gap').map(([, p]) => p.reason), ['not_recovered']);
  assert.equal(seenPlain.filter(([n]) => n === 'gap').length, 0, 'without recover: no gap events');
  assert.equal(seenPlain.filter(([n]) => n === 'subscribed').at(-1)[1].resubscribed, true);
});

test('a live offset jump or epoch change is a gap', () => {
  const { gw, sockets } = harness();
  const sub = gw.subscribe('channel:1', { recover: true });
  const seen = record(sub);
  sockets[0].handshake();
  return settle().then(() => {
    sockets[0].deliver({
      op: 'subscribed',
      d: { topics: ['channel:1'], positions: { 'channel:1': { offset: 1, epoch: 'e1' } } },
      ref: sockets[0].sentOps('subscribe')[0].ref,
    });
    sockets[0].deliver(pub('channel:1', 2), pub('channel:1', 5), pub('channel:1', 1, 'e9'));
    assert.deepEqual(seen.filter(([n]) => n === 'gap').map(([, p]) => p.reason), ['missed', 'epoch_changed']);
    assert.equal(seen.filter(([n]) => n === 'publication').length, 3);
  });
});

test('since given by the app: the first subscribe recovers from it', async () => {
  const { gw, sockets } = harness();
  const sub = gw.subscribe('channel:1', { since: { offset: 10, epoch: 'e1' } });
  assert.equal(sub.recover, true);
  const seen = record(sub);
  sockets[0].handshake();
  const [subscribe] = sockets[0].sentOps('subscribe');
  assert.deepEqual(subscribe.d.since, { 'channel:1': { offset: 10, epoch: 'e1' } });
  sockets[0].deliver(
    {
      op: 'subscribed',
      d: { topics: ['channel:1'], positions: { 'channel:1': { offset: 11, epoch: 'e1' } }, recovered: { 'channel:1': true } },
      ref: subscribe.ref,
    },
    pub('channel:1', 11),
  );
  assert.equal(seen.filter(([n]) => n === 'publication').length, 1, 'the replayed one is not taken for a copy');
  assert.equal(seen.find(([n]) => n === 'subscribed')[1].recovered, true);
});

test('refusals: forbidden is final (error, unsubscribed), even when it comes before subscribed', async () => {
  const { gw, sockets } = harness();
  const ok = gw.subscribe('channel:1');
  const no = gw.subscribe('channel:secret');
  const seen = record(no);
  sockets[0].handshake();
  const [subscribe] = sockets[0].sentOps('subscribe');
  sockets[0].deliver(
    { op: 'error', d: { code: 'forbidden', message: 'not allowed', topics: ['channel:secret'] }, ref: subscribe.ref },
    { op: 'subscribed', d: { topics: ['channel:1'] }, ref: subscribe.ref },
  );
  assert.equal(ok.state, 'subscribed');
  assert.equal(no.state, 'unsubscribed');
  const [, error] = seen.find(([n]) => n === 'error');
  assert.equal(error.code, 'forbidden');
  assert.deepEqual(error.topics, ['channel:secret']);
  assert.equal(gw.getSubscription('channel:secret'), undefined);
});

test('not_ready and rate_limited are retried after a while', async () => {
  const { gw, clock, sockets } = harness({ random: () => 0 });
  const sub = gw.subscribe('channel:1');
  sockets[0].handshake();
  const [first] = sockets[0].sentOps('subscribe');
  sockets[0].deliver({ op: 'error', d: { code: 'not_ready', message: 'try again', topics: ['channel:1'] }, ref: first.ref });
  assert.equal(sub.state, 'subscribing');
  gw.subscribe('channel:2');
  await settle();
  assert.equal(sockets[0].sentOps('subscribe').length, 1, 'held back while waiting out the refusal');
  await clock.advance(500);
  const [, second] = sockets[0].sentOps('subscribe');
  assert.deepEqual(second.d.topics, ['channel:1', 'channel:2']);
  sockets[0].deliver({ op: 'error', d: { code: 'rate_limited', message: 'slow', retry_after_ms: 2000 }, ref: second.ref });
  await clock.advance(1999);
  assert.equal(sockets[0].sentOps('subscribe').length, 2);
  await clock.advance(1);
  assert.equal(sockets[0].sentOps('subscribe').length, 3);
});

test('unsubscribe: sent when the server has it, batched, and not resubscribed after a reconnect', async () => {
  const { gw, clock, sockets } = harness();
  const a = gw.subscribe('channel:1');
  const b = gw.subscribe('channel:2');
  sockets[0].handshake();
  sockets[0].deliver({ op: 'subscribed', d: { topics: ['channel:1', 'channel:2'] }, ref: sockets[0].sentOps('subscribe')[0].ref });
  a.unsubscribe();
  b.unsubscribe();
  await settle();
  assert.deepEqual(sockets[0].sentOps('unsubscribe').map((m) => m.d.topics), [['channel:1', 'channel:2']]);
  const never = gw.subscribe('channel:3');
  never.unsubscribe();
  await settle();
  assert.equal(sockets[0].sentOps('subscribe').length, 1, 'undone before it was sent: nothing sent');
  const c = gw.subscribe('channel:3');
  await settle();
  c.unsubscribe();
  await settle();
  assert.equal(sockets[0].sentOps('unsubscribe').length, 2, 'a subscribe in flight is undone too');
  const unasked = gw.subscribe('channel:4');
  sockets[0].serverClose(1006);
  unasked.unsubscribe();
  await clock.advance(250);
  sockets[1].handshake();
  assert.deepEqual(sockets[1].sentOps('subscribe'), []);
  assert.deepEqual(sockets[1].sentOps('unsubscribe'), []);
});

test('typing and presence events reach the subscription of their topic', async () => {
  const { gw, sockets } = harness();
  const sub = gw.subscribe('channel:1');
  const typing = [];
  sub.on('typing_start', (m) => typing.push(['start', m.d.user_id]));
  sub.on('typing_stop', (m) => typing.push(['stop', m.d.user_id]));
  const presence = [];
  sub.on('presence_update', (m) => presence.push(m.d.status));
  sockets[0].handshake();
  sockets[0].deliver(
    { op: 'typing_start', d: { user_id: 'bob', name: 'Bob' }, topic: 'channel:1' },
    { op: 'typing_stop', d: { user_id: 'bob' }, topic: 'channel:1' },
    { op: 'presence_update', d: { user_id: 'bob', status: 'away', since: 1 }, topic: 'channel:1' },
    { op: 'typing_start', d: { user_id: 'eve' }, topic: 'channel:2' },
  );
  assert.deepEqual(typing, [['start', 'bob'], ['stop', 'bob']]);
  assert.deepEqual(presence, ['away']);
});

test('a replay cut short twice in a row (a server that cannot send it): resubscribe afresh, with a gap', async () => {
  const { gw, clock, sockets } = harness();
  const sub = gw.subscribe('channel:1', { recover: true });
  const seen = record(sub);
  sockets[0].handshake();
  sockets[0].deliver({
    op: 'subscribed',
    d: { topics: ['channel:1'], positions: { 'channel:1': { offset: 10, epoch: 'e1' } } },
    ref: sockets[0].sentOps('subscribe')[0].ref,
  });
  const recoverOnce = async (socket, delivered) => {
    socket.deliver({ op: 'reconnect', d: { reason: 'slow consumer', retry_after_ms: 1000 } });
    socket.serverClose(4010, 'slow consumer');
    await clock.advance(1100);
    const next = sockets.at(-1);
    next.handshake();
    const [subscribe] = next.sentOps('subscribe');
    if (subscribe.d.since) {
      next.deliver({
        op: 'subscribed',
        d: { topics: ['channel:1'], positions: { 'channel:1': { offset: 500, epoch: 'e1' } }, recovered: { 'channel:1': true } },
        ref: subscribe.ref,
      });
      for (const offset of delivered) next.deliver(pub('channel:1', offset));
    }
    return { socket: next, subscribe };
  };
  // Cut short twice: the replay (11..500) never gets through.
  let round = await recoverOnce(sockets[0], [11, 12]);
  assert.deepEqual(round.subscribe.d.since, { 'channel:1': { offset: 10, epoch: 'e1' } });
  round = await recoverOnce(round.socket, [13]);
  assert.deepEqual(round.subscribe.d.since, { 'channel:1': { offset: 12, epoch: 'e1' } });
  round = await recoverOnce(round.socket, []);
  assert.equal(round.subscribe.d.since, undefined, 'gave up recovering');
  round.socket.deliver({
    op: 'subscribed',
    d: { topics: ['channel:1'], positions: { 'channel:1': { offset: 520, epoch: 'e1' } } },
    ref: round.subscribe.ref,
  });
  assert.deepEqual(seen.filter(([n]) => n === 'gap').map(([, g]) => [g.reason, g.position]), [
    ['not_recovered', { offset: 520, epoch: 'e1' }],
  ]);
  assert.deepEqual(sub.position, { offset: 520, epoch: 'e1' });
});

test('a replay that completes resets the count: a later cut recovers again', async () => {
  const { gw, clock, sockets } = harness();
  const sub = gw.subscribe('channel:1', { recover: true });
  sockets[0].handshake();
  sockets[0].deliver({
    op: 'subscribed',
    d: { topics: ['channel:1'], positions: { 'channel:1': { offset: 1, epoch: 'e1' } } },
    ref: sockets[0].sentOps('subscribe')[0].ref,
  });
  for (let round = 0; round < 3; round++) {
    const socket = sockets.at(-1);
    socket.serverClose(1006);
    await clock.advance(1000);
    const next = sockets.at(-1);
    next.handshake();
    const [subscribe] = next.sentOps('subscribe');
    assert.ok(subscribe.d.since, `round ${round} recovers`);
    const from = subscribe.d.since['channel:1'].offset;
    next.deliver({
      op: 'subscribed',
      d: { topics: ['channel:1'], positions: { 'channel:1': { offset: from + 2, epoch: 'e1' } }, recovered: { 'channel:1': true } },
      ref: subscribe.ref,
    });
    next.deliver(pub('channel:1', from + 1), pub('channel:1', from + 2));
  }
  assert.deepEqual(sub.position, { offset: 7, epoch: 'e1' });
});
