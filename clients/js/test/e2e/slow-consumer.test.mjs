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

/** A stallable SDK client in a worker, subscribed to `topic` with recovery; its reports. */
async function stallableClient(t, gateway, topic) {
  const stall = new SharedArrayBuffer(4);
  const release = () => {
    Atomics.store(new Int32Array(stall), 0, 1);
    Atomics.notify(new Int32Array(stall), 0);
  };
  const worker = new Worker(new URL('../support/slow-client-worker.mjs', import.meta.url), {
    workerData: { url: gateway.url, token: token('slowpoke'), topic, stall },
  });
  t.after(async () => {
    release();
    worker.postMessage('close');
    await Promise.race([once(worker, 'exit'), pause(2000).then(() => worker.terminate())]);
  });
  const client = { worker, release, received: [], states: [], subscribed: [], gaps: [] };
  worker.on('message', (m) => {
    if (process.env.SDK_TRACE && m.type !== 'publication') console.error('worker', JSON.stringify(m));
    if (m.type === 'publication') client.received.push(m.seq);
    if (m.type === 'state') client.states.push([m.state, m.info.code]);
    if (m.type === 'subscribed') client.subscribed.push(m.info);
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
  // A small kernel send buffer and budget, so that a stalled reader is found slow quickly; a
  // grace short enough that the queue is between the budget and twice it when it is closed
  // (see the comment on pacing below).
  const gateway = await GatewayProcess.start(SLOW_FLAGS);
  t.after(() => gateway.kill());
  const client = await stallableClient(t, gateway, 'channel:flood');
  const filler = 'x'.repeat(1000);
  let seq = 0;
  const publish = () => gateway.publish('channel:flood', 'message_new', { seq: seq++, filler });
  for (let i = 0; i < 5; i++) assert.equal(await publish(), 202);
  await client.receivedSeq(4);

  await client.stall();
  // Paced at ~200 KB/s: over its 200 ms grace the queue grows by ~40 KB past the budget, so
  // it is closed for staying over budget (4010), and what it missed (about the budget) is a
  // replay the same budget can hold. (Faster, see the next test.)
  while ((await slowConsumerCloses(gateway)) === 0) {
    assert.ok(seq < 3000, 'the stalled reader was never closed 4010');
    for (let i = 0; i < 10; i++) assert.equal(await publish(), 202);
    await pause(50);
  }
  const published = seq;
  client.release();

  const lost = await message(client.worker, 'disconnected', (m) => m.type === 'state' && m.state === 'disconnected');
  assert.deepEqual(client.states.find(([s]) => s === 'disconnected'), ['disconnected', 4010]);
  const back = await message(client.worker, 'connected', (m) => m.type === 'state' && m.state === 'connected');
  assert.ok(back.at - lost.at >= 1000, 'waited the retry_after_ms of the reconnect message');
  await message(client.worker, 'resubscribed', (m) => m.type === 'subscribed' && m.info.resubscribed);
  assert.equal(client.subscribed.at(-1).recovered, true);
  await publish();
  await client.receivedSeq(published);
  assert.deepEqual(client.received, Array.from({ length: published + 1 }, (_, i) => i), 'every publication once, in order');
  assert.equal(client.states.filter(([s, code]) => s === 'disconnected' && code === 4010).length, 1);
  assert.deepEqual(client.gaps, []);
});

test('a backlog larger than the gateway can replay: the SDK stops asking after two cut replays, and goes on live with a gap', async (t) => {
  const gateway = await GatewayProcess.start(SLOW_FLAGS);
  t.after(() => gateway.kill());
  const client = await stallableClient(t, gateway, 'channel:flood');
  await client.stall();
  // At full speed the queue passes twice the budget at once (4010 without grace), and what the
  // client missed is more than the gateway queues for one replay.
  const filler = 'x'.repeat(1000);
  let seq = 0;
  while ((await slowConsumerCloses(gateway)) === 0 || seq < 600) {
    assert.ok(seq < 5000, 'the stalled reader was never closed 4010');
    await gateway.publish('channel:flood', 'message_new', { seq: seq++, filler });
  }
  client.release();
  // However the gateway handles the replay, the client ends up live: everything once and in
  // order (recovered), or a gap reported once and the live publications after it.
  const published = seq;
  if (client.gaps.length === 0 && client.received.length < published) {
    await message(
      client.worker,
      'a gap, or everything',
      (m) => m.type === 'gap' || (m.type === 'publication' && client.received.length === published),
      15_000,
    );
  }
  const live = seq;
  await gateway.publish('channel:flood', 'message_new', { seq: seq++, filler });
  await client.receivedSeq(live);
  const counts = new Map();
  for (const n of client.received) counts.set(n, (counts.get(n) ?? 0) + 1);
  assert.ok([...counts.values()].every((c) => c === 1), 'nothing twice');
  assert.deepEqual(client.received, [...client.received].sort((a, b) => a - b), 'in order');
  if (client.gaps.length > 0) {
    assert.equal(client.gaps.length, 1);
    assert.equal(client.gaps[0].reason, 'not_recovered');
  } else {
    assert.equal(client.received.length, live + 1, 'recovered: everything');
  }
  if (process.env.SDK_TRACE) console.error('gaps', client.gaps.length, 'received', client.received.length, 'of', live + 1);
});
