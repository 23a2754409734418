/**
 * Time, injected: the gateway reads the clock and sets timers only through a {@link Clock}, so
 * that tests drive time by hand (a fake clock) instead of sleeping.
 */

/** An opaque timer handle. */
export type TimerHandle = unknown;

/** The clock and timers the gateway uses. */
export interface Clock {
  /** Milliseconds since the Unix epoch (token expiry is compared with it). */
  now(): number;
  setTimeout(callback: () => void, ms: number): TimerHandle;
  clearTimeout(handle: TimerHandle): void;
}

/** The platform's clock: `Date.now` and the global timers. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** One timer that is either off or due once: setting it again replaces the previous due time. */
export class Timer {
  private handle: TimerHandle | undefined;

  constructor(private readonly clock: Clock) {}

  /** Runs `callback` after `ms`, cancelling whatever was set before. */
  set(ms: number, callback: () => void): void {
    this.clear();
    this.handle = this.clock.setTimeout(() => {
      this.handle = undefined;
      callback();
    }, Math.max(0, ms));
  }

  clear(): void {
    if (this.handle !== undefined) {
      this.clock.clearTimeout(this.handle);
      this.handle = undefined;
    }
  }

  get active(): boolean {
    return this.handle !== undefined;
  }
}
