// SDK clients against a real gateway, closed by the test that made them.
import { Gateway } from '../../dist/index.js';
import '../../dist/msgpack.js';
import { token } from './jwt.mjs';
import { state } from './wait.mjs';

/**
 * A connected `Gateway` for `user` (`options` override the defaults), closed after the test.
 * Reconnects fast (tests restart gateways) and sees no browser signals.
 */
export async function connect(t, url, user, options = {}) {
  const gw = new Gateway(url, {
    token: token(user),
    minReconnectDelayMs: 100,
    maxReconnectDelayMs: 1000,
    signals: null,
    ...options,
  });
  t.after(() => gw.close());
  if (process.env.SDK_TRACE) {
    // SDK_TRACE=1: every state and message of the test's clients, on stderr.
    const started = Date.now();
    gw.on('state', (s, info) => console.error(`[${user} +${Date.now() - started}] state ${s} ${JSON.stringify(info)}`));
    gw.on('event', (m) => console.error(`[${user} +${Date.now() - started}] ${JSON.stringify(m).slice(0, 300)}`));
  }
  await state(gw, 'connected');
  return gw;
}

/** Every publication a subscription delivers, and every `gap`/`subscribed` event, in order. */
export function record(sub) {
  const log = { publications: [], gaps: [], subscribed: [] };
  sub.on('publication', (p) => log.publications.push(p));
  sub.on('gap', (g) => log.gaps.push(g));
  sub.on('subscribed', (s) => log.subscribed.push(s));
  return log;
}
