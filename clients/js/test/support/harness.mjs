// A gateway wired to the fake clock, socket and signals, recording its state transitions.
import { Gateway } from '../../dist/index.js';
import { FakeClock } from './fake-clock.mjs';
import { FakeSignals } from './fake-signals.mjs';
import { FakeWebSocket } from './fake-websocket.mjs';

export const URL_ = 'ws://gateway.test/ws';

/** Where every fake clock starts. */
const START_CLOCK = new FakeClock();

/** A token whose `exp` is `secondsFromNow` after the clock's now (the signature is not checked here). */
export function fakeToken(clock = START_CLOCK, secondsFromNow = 3600, sub = 'alice') {
  const part = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  return `${part({ alg: 'HS256' })}.${part({ sub, exp: Math.floor(clock.now() / 1000) + secondsFromNow })}.sig`;
}

/**
 * `new Gateway` on fakes. `random` defaults to 0.5 so that jittered delays are predictable;
 * `states` records every transition as `[state, info]`.
 */
export function harness(options = {}) {
  FakeWebSocket.reset();
  const clock = new FakeClock();
  const signals = new FakeSignals();
  const gw = new Gateway(URL_, {
    token: options.getToken ? undefined : fakeToken(clock),
    WebSocket: FakeWebSocket,
    clock,
    signals,
    random: () => 0.5,
    ...options,
  });
  const states = [];
  gw.on('state', (state, info) => states.push([state, info]));
  return { gw, clock, signals, states, sockets: FakeWebSocket.instances };
}

export { FakeWebSocket };
