// An SDK client in a worker thread, so that the test can stall it: while the worker blocks on
// `Atomics.wait`, its event loop reads nothing from the socket, as a frozen tab or an
// overloaded device would, and the gateway's queue for it grows until it is closed 4010.
import { parentPort, workerData } from 'node:worker_threads';
import { Gateway } from '../../dist/index.js';

const { url, token, topic, noise, stall } = workerData;
const flag = new Int32Array(stall);
const gw = new Gateway(url, { token, signals: null, minReconnectDelayMs: 100, maxReconnectDelayMs: 1000 });
const post = (message) => parentPort.postMessage(message);
gw.on('state', (state, info) => post({ type: 'state', state, info, at: Date.now() }));
const sub = gw.subscribe(topic, { recover: true });
sub.on('subscribed', (info) => post({ type: 'subscribed', info }));
// The gateway's own answer too: whether it was asked to recover, and what it said.
gw.on('subscribed', (message) => post({ type: 'answer', d: message.d }));
sub.on('gap', (info) => post({ type: 'gap', info }));
sub.on('publication', (p) => post({ type: 'publication', offset: p.offset, seq: p.d.seq }));
// A busy topic without history beside it, if the test asks: it fills the queue, and has nothing to replay.
if (noise) gw.subscribe(noise).on('publication', () => post({ type: 'noise' }));
parentPort.on('message', (message) => {
  if (message === 'stall') {
    post({ type: 'stalled' });
    Atomics.wait(flag, 0, 0); // until the test stores 1 and notifies
  } else if (message === 'close') {
    gw.close();
    parentPort.close();
  }
});
