/**
 * What the browser says about the network and the page: `online`/`offline` (the network went
 * away or came back) and page visibility (a page hidden for a while may have had its timers
 * throttled, so it checks its connection when shown again). Injected, so that Node and tests
 * supply their own or none.
 */

export type Signal = 'online' | 'offline' | 'visible' | 'hidden';

export interface Signals {
  /** Calls `listener` on each signal; returns what stops it. */
  subscribe(listener: (signal: Signal) => void): () => void;
  /** Whether the platform believes it is offline now. */
  offline(): boolean;
}

interface EventTargetLike {
  addEventListener(type: string, listener: () => void): void;
  removeEventListener(type: string, listener: () => void): void;
}

/** The browser's signals (`window` and `document`); undefined outside a browser. */
export function browserSignals(): Signals | undefined {
  const scope = globalThis as unknown as Partial<EventTargetLike> & {
    document?: EventTargetLike & { visibilityState?: string };
    navigator?: { onLine?: boolean };
  };
  if (typeof scope.addEventListener !== 'function' || typeof scope.removeEventListener !== 'function') {
    return undefined;
  }
  const window = scope as EventTargetLike;
  const document = scope.document;
  return {
    subscribe(listener) {
      const online = () => listener('online');
      const offline = () => listener('offline');
      const visibility = () => listener(document?.visibilityState === 'hidden' ? 'hidden' : 'visible');
      window.addEventListener('online', online);
      window.addEventListener('offline', offline);
      document?.addEventListener('visibilitychange', visibility);
      return () => {
        window.removeEventListener('online', online);
        window.removeEventListener('offline', offline);
        document?.removeEventListener('visibilitychange', visibility);
      };
    },
    offline: () => scope.navigator?.onLine === false,
  };
}
