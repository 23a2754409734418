/**
 * Requests waiting for their reply, by `ref` (PROTOCOL.md §2: a reply echoes its request's
 * `ref`). Each has a timeout on the injected clock; the connection's loss rejects the ones in
 * flight (they may or may not have run, so none is retried behind the app's back).
 */
import { Timer, type Clock } from './clock.js';
import { GatewayError } from './errors.js';
import type { ServerMessage } from './protocol.js';

interface Waiter {
  resolve(message: ServerMessage): void;
  reject(error: GatewayError): void;
  timer: Timer;
}

export class PendingRequests {
  private readonly waiters = new Map<number, Waiter>();

  constructor(private readonly clock: Clock) {}

  /**
   * Waits for the reply to `ref`, for at most `timeoutMs`. `onTimeout` runs when it gives up
   * (to drop the request from a queue it may still be in).
   */
  wait(ref: number, timeoutMs: number, onTimeout?: () => void): Promise<ServerMessage> {
    return new Promise((resolve, reject) => {
      const timer = new Timer(this.clock);
      this.waiters.set(ref, { resolve, reject, timer });
      timer.set(timeoutMs, () => {
        this.waiters.delete(ref);
        onTimeout?.();
        reject(new GatewayError('timeout', `no reply within ${timeoutMs} ms`));
      });
    });
  }

  has(ref: number): boolean {
    return this.waiters.has(ref);
  }

  /** Settles `ref` with its reply; false when nothing waits for it. */
  resolve(ref: number, message: ServerMessage): boolean {
    const waiter = this.take(ref);
    waiter?.resolve(message);
    return waiter !== undefined;
  }

  reject(ref: number, error: GatewayError): boolean {
    const waiter = this.take(ref);
    waiter?.reject(error);
    return waiter !== undefined;
  }

  /** Rejects every waiter whose ref `which` selects. */
  rejectWhere(which: (ref: number) => boolean, error: () => GatewayError): void {
    for (const ref of [...this.waiters.keys()]) {
      if (which(ref)) this.reject(ref, error());
    }
  }

  get size(): number {
    return this.waiters.size;
  }

  private take(ref: number): Waiter | undefined {
    const waiter = this.waiters.get(ref);
    if (waiter) {
      this.waiters.delete(ref);
      waiter.timer.clear();
    }
    return waiter;
  }
}
