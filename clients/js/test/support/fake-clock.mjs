// A clock the test moves by hand: timers run when `advance` passes their due time, in due
// order, each followed by the promise callbacks it queued. No test waits on real time.

/** Lets every queued promise callback run (a macrotask turn; no time passes on the fake clock). */
export function settle() {
  return new Promise((resolve) => setImmediate(resolve));
}

export class FakeClock {
  constructor(start = 1_700_000_000_000) {
    this.time = start;
    this.timers = new Map();
    this.nextId = 1;
  }

  now() {
    return this.time;
  }

  setTimeout(callback, ms) {
    const id = this.nextId++;
    this.timers.set(id, { at: this.time + Math.max(0, ms), callback });
    return id;
  }

  clearTimeout(id) {
    this.timers.delete(id);
  }

  /** Moves time forward by `ms`, running every timer due on the way. */
  async advance(ms) {
    const end = this.time + ms;
    for (;;) {
      await settle();
      let next;
      for (const [id, timer] of this.timers) {
        if (timer.at <= end && (!next || timer.at < next[1].at)) next = [id, timer];
      }
      if (!next) break;
      this.timers.delete(next[0]);
      this.time = next[1].at;
      next[1].callback();
    }
    this.time = end;
    await settle();
  }

  /** How many timers are set. */
  get pending() {
    return this.timers.size;
  }
}
