// 4010: a client that stops reading is closed by the gateway as a slow consumer; the SDK comes
// back after retry_after_ms and resubscribes with `since`, and gets everything exactly once.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { token } from '../support/jwt.mjs';
import { GatewayProcess } from '../support/processes.mjs';
import { pause } from '../support/wait.mjs';

/** Waits for the worker's first message that `accept`s (`what` names it in a failure). */
function message(worker, what, accept, ms = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      worker.off('message', listen);
      reject(new Error(`no ${what} from the worker within ${ms} ms`));
    }, ms);
    const listen = (m) => {
      if (!accept(m)) return;
      clearTimeout(timer);
      worker.off('message', listen);
      resolve(m);
    };
    worker.on('message', listen);
  });
}

async function slowConsumerCloses(gateway) {
  const response = await fetch(`http://${gateway.admin}/metrics`);
  const text = await response.text();
  const line = text.split('\n').find((l) => l.startsWith('coregate_closes_total{') && l.includes('reason="slow_consumer"'));
  return line ? Number(line.split(' ').pop()) : 0;
}

/**
 * A stallable SDK client in a worker, subscribed to `topic` with recovery (and to `noise`,
 * without, if given); its reports.
 */
async function stallableClient(t, gateway, topic, noise) {
  const stall = new SharedArrayBuffer(4);
  const release = () => {
    Atomics.store(new Int32Array(stall), 0, 1);
    Atomics.notify(new Int32Array(stall), 0);
  };
  const worker = new Worker(new URL('../support/slow-client-worker.mjs', import.meta.url), {
    workerData: { url: gateway.url, token: token('slowpoke', { topics: ['channel:*', 'server:*'] }), topic, noise, stall },
  });
  t.after(async () => {
    release();
    worker.postMessage('close');
    await Promise.race([once(worker, 'exit'), pause(2000).then(() => worker.terminate())]);
  });
  const client = { worker, release, received: [], noise: 0, states: [], subscribed: [], answers: [], gaps: [] };
  worker.on('message', (m) => {
    if (process.env.SDK_TRACE && m.type !== 'publication') console.error('worker', JSON.stringify(m));
    if (m.type === 'publication') client.received.push(m.seq);
    if (m.type === 'noise') client.noise += 1;
    if (m.type === 'state') client.states.push([m.state, m.info.code]);
    if (m.type === 'subscribed') client.subscribed.push(m.info);
    if (m.type === 'answer') client.answers.push(m.d);
    if (m.type === 'gap') client.gaps.push(m.info);
  });
  // Publications may come before the wait for them starts: look at what arrived first.
  client.receivedSeq = (wanted) =>
    client.received.includes(wanted)
      ? Promise.resolve()
      : message(worker, `publication ${wanted}`, (m) => m.type === 'publication' && m.seq === wanted);
  client.stall = async () => {
    worker.postMessage('stall');
    await message(worker, 'stalled', (m) => m.type === 'stalled');
  };
  /** Resolves once `condition()` holds, looking again at each of the worker's messages. */
  client.until = (what, condition, ms) =>
    condition() ? Promise.resolve() : message(worker, what, () => condition(), ms);
  await message(worker, 'subscribed', (m) => m.type === 'subscribed');
  return client;
}

const SLOW_FLAGS = [
  '--history', 'channel:=5000/1h',
  '--socket-send-buffer', '16384',
  '--outbound-budget', '131072',
  '--slow-client-grace', '200ms',
];

test('stalled reader: closed 4010, back after retry_after_ms, recovered with since, nothing lost or doubled', async (t) => {
  // A small kernel send buffer and budget, so that a stalled reader is found slow quickly. The
  // queue fills with a busy topic without history (server:firehose), beside the chat the
  // client recovers: what a 4010 drops is more than the budget, and a replay goes out only
  // if it fits the budget (the next test), so only a backlog that is mostly elsewhere can be
  // recovered.
  const gateway = await GatewayProcess.start(SLOW_FLAGS);
  t.after(() => gateway.kill());
  const client = await stallableClient(t, gateway, 'channel:chat', 'server:firehose');
  const filler = 'x'.repeat(1000);
  let seq = 0;
  const chat = () => gateway.publish('channel:chat', 'message_new', { seq: seq++ });
  for (let i = 0; i < 5; i++) assert.equal(await chat(), 202);
  await client.receivedSeq(4);

  await client.stall();
  // Paced at ~200 KB/s, so that it is closed for staying over budget past its grace (4010).
  while ((await slowConsumerCloses(gateway)) === 0) {
    assert.ok(seq < 300, 'the stalled reader was never closed 4010');
    for (let i = 0; i < 10; i++) assert.equal(await gateway.publish('server:firehose', 'tick', { filler }), 202);
    assert.equal(await chat(), 202);
    await pause(50);
  }
  const published = seq;
  client.release();

  const lost = await message(client.worker, 'disconnected', (m) => m.type === 'state' && m.state === 'disconnected');
  assert.deepEqual(client.states.find(([s]) => s === 'disconnected'), ['disconnected', 4010]);
  const back = await message(client.worker, 'connected', (m) => m.type === 'state' && m.state === 'connected');
  assert.ok(back.at - lost.at >= 1000, 'waited the retry_after_ms of the reconnect message');
  await client.until('resubscribed', () => client.subscribed.some((s) => s.resubscribed));
  assert.equal(client.subscribed.at(-1).recovered, true);
  await chat();
  await client.receivedSeq(published);
  assert.deepEqual(client.received, Array.from({ length: published + 1 }, (_, i) => i), 'every chat message once, in order');
  assert.ok(client.noise > 0, 'the firehose flowed before the stall');
  assert.equal(client.states.filter(([s, code]) => s === 'disconnected' && code === 4010).length, 1);
  assert.deepEqual(client.gaps, []);
});

test('a backlog larger than the outbound budget: answered recovered: false with the position, one gap, then live', async (t) => {
  const gateway = await GatewayProcess.start(SLOW_FLAGS);
  t.after(() => gateway.kill());
  const topic = 'channel:flood';
  const client = await stallableClient(t, gateway, topic);
  await client.stall();
  // At full speed the queue passes twice the budget at once (4010 without grace), and what the
  // client misses (600 KB and more) is far more than the 128 KB budget can hold in one replay.
  const filler = 'x'.repeat(1000);
  let seq = 0;
  while ((await slowConsumerCloses(gateway)) === 0 || seq < 600) {
    assert.ok(seq < 5000, 'the stalled reader was never closed 4010');
    assert.equal(await gateway.publish(topic, 'message_new', { seq: seq++, filler }), 202);
  }
  const published = seq;
  client.release();
  // The gateway does not make a replay that cannot fit: it answers the resubscribe's `since`
  // with recovered: false and where the stream stands, and the client reports one gap.
  await client.until('the resubscribe and its gap', () => client.answers.length === 2 && client.gaps.length > 0, 15_000);
  const resubscribe = client.answers[1];
  assert.equal(resubscribe.recovered?.[topic], false, 'asked to recover (since), refused');
  assert.equal(resubscribe.positions[topic].offset, published);
  assert.deepEqual(client.gaps, [{ topic, reason: 'not_recovered', position: resubscribe.positions[topic] }]);
  assert.equal(client.subscribed.at(-1).resubscribed, true);
  assert.equal(client.subscribed.at(-1).recovered, false);
  // Live from there on: the next publication, and nothing of the backlog after the gap.
  const receivedBeforeGap = client.received.length;
  await gateway.publish(topic, 'message_new', { seq: seq++, filler });
  await client.receivedSeq(published);
  assert.deepEqual(client.received.slice(receivedBeforeGap), [published]);
  assert.deepEqual(client.received, [...new Set(client.received)].sort((a, b) => a - b), 'nothing twice, in order');
  // One 4010 and one reconnect: no replay was started and cut, so no loop to guard against.
  assert.deepEqual(client.states.filter(([s]) => s === 'disconnected'), [['disconnected', 4010]]);
  assert.equal(client.states.filter(([s]) => s === 'connected').length, 2);
  assert.equal(await slowConsumerCloses(gateway), 1);
});
