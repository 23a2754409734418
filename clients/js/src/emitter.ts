/**
 * A small typed event emitter: `on` returns the function that removes the listener, and a
 * listener that throws does not stop the others (the error is reported on the next tick, so
 * that it is not lost and does not break the gateway's own bookkeeping).
 */

/** Event name → the arguments its listeners receive. */
export type EventMap = Record<string, unknown[]>;

type Listener<Args extends unknown[]> = (...args: Args) => void;

export class Emitter<Events extends EventMap> {
  private readonly listeners = new Map<keyof Events, Set<Listener<never[]>>>();

  /** Calls `listener` on every `event`; returns what removes it. */
  on<E extends keyof Events>(event: E, listener: Listener<Events[E]>): () => void {
    let set = this.listeners.get(event);
    if (!set) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener as unknown as Listener<never[]>);
    return () => this.off(event, listener);
  }

  /** Calls `listener` on the next `event` only. */
  once<E extends keyof Events>(event: E, listener: Listener<Events[E]>): () => void {
    const off = this.on(event, ((...args: Events[E]) => {
      off();
      listener(...args);
    }) as Listener<Events[E]>);
    return off;
  }

  off<E extends keyof Events>(event: E, listener: Listener<Events[E]>): void {
    this.listeners.get(event)?.delete(listener as unknown as Listener<never[]>);
  }

  /** Calls every listener of `event` (a copy of the set: listeners may remove themselves). */
  protected emit<E extends keyof Events>(event: E, ...args: Events[E]): void {
    const set = this.listeners.get(event);
    if (!set || set.size === 0) return;
    for (const listener of [...set]) {
      try {
        (listener as unknown as Listener<Events[E]>)(...args);
      } catch (error) {
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  /** Removes every listener. */
  protected removeAllListeners(): void {
    this.listeners.clear();
  }
}
