// Waiting on real events with a deadline: the end-to-end tests never sleep to synchronize.

/** Resolves with the arguments of the next `event` of `emitter` that `accept`s, or rejects after `ms`. */
export function next(emitter, event, accept = () => true, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${event} within ${ms} ms`));
    }, ms);
    const off = emitter.on(event, (...args) => {
      if (!accept(...args)) return;
      clearTimeout(timer);
      off();
      resolve(args);
    });
  });
}

/** The next transition of `gw` to `state`, as `info`. */
export async function state(gw, wanted, ms = 5000) {
  if (gw.state === wanted) return {};
  const [, info] = await next(gw, 'state', (s) => s === wanted, ms);
  return info;
}

/** Resolves once `condition()` holds, checking it whenever `emitter` emits `event`. */
export function until(emitter, event, condition, ms = 5000) {
  if (condition()) return Promise.resolve();
  return next(emitter, event, () => condition(), ms).then(() => undefined);
}

/** Resolves after `ms` of real time (only for pacing a load, never to wait for an outcome). */
export const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Resolves with `probe()`'s first value that `accept`s, asking every 100 ms, or rejects after
 * `ms` (for what no event announces, e.g. a browser's WebRTC stats).
 */
export async function poll(probe, accept, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (accept(value)) return value;
    if (Date.now() > deadline) throw new Error(`no ${what} within ${ms} ms (last: ${JSON.stringify(value)})`);
    await pause(100);
  }
}
