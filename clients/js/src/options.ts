/**
 * The gateway's options, each with its default and why. `resolveOptions` fills the defaults
 * once, so the rest of the code never wonders.
 */
import { systemClock, type Clock } from './clock.js';
import type { Codec } from './codec.js';
import { browserSignals, type Signals } from './signals.js';
import type { GetToken } from './token.js';
import type { WebSocketConstructor } from './transport.js';

export interface GatewayOptions {
  /** A JWT (PROTOCOL.md §1). Without `getToken`, a connection closed 4006 (expired) is not retried. */
  token?: string;
  /**
   * Fetches a token (from the app's backend): called when there is none yet, before the
   * current one expires (then sent with `refresh`, without reconnecting), and after a 4006.
   * Called once at a time. Resolving `null` means signed out: the gateway closes.
   */
  getToken?: GetToken;
  /** `'json'` (built in) or `'msgpack'` (after `import 'coregate-client/msgpack'`), or a codec. Default `'json'`. */
  encoding?: 'json' | 'msgpack' | Codec;
  /**
   * How the token travels: in the URL's `?token=` (checked before the upgrade, the default), or
   * in an `identify` message after `hello` (the token stays out of URLs and proxies' logs, and a
   * bad one is a visible close 4004 rather than a refused upgrade).
   */
  tokenIn?: 'query' | 'identify';
  /** The first reconnect's ceiling; each failed attempt doubles it. Default 500 ms. */
  minReconnectDelayMs?: number;
  /** The most a reconnect waits (backoff ceiling). Default 20 000 ms. */
  maxReconnectDelayMs?: number;
  /** Random extra wait on top of the server's `retry_after_ms`, as a fraction of it. Default 0.1. */
  retryAfterJitter?: number;
  /** From the start of an attempt to `ready`, at most; then it counts as failed (3004). Default 10 000 ms. */
  connectTimeoutMs?: number;
  /**
   * How long past the heartbeat interval the client waits for any message before it declares
   * the server gone (3001) and reconnects. Default 10 000 ms.
   */
  pongTimeoutMs?: number;
  /** Default timeout of `rpc`, `history`, `presence.query`, `voice.join` (and `leave`, `mute`, `unmute`), `request`. Default 10 000 ms. */
  requestTimeoutMs?: number;
  /** At most one `typing_start` per topic per this many ms. Default 1 000 ms (the server's own per-user rate). */
  typingThrottleMs?: number;
  /** Renew the token this long before its `exp` (at most a fifth of its remaining life). Default 60 000 ms. */
  refreshBeforeMs?: number;
  /** The WebSocket implementation. Default `globalThis.WebSocket` (browsers, Node ≥ 22, Node 20 with `--experimental-websocket`). */
  WebSocket?: WebSocketConstructor;
  /** Clock and timers (tests inject a fake one). Default the platform's. */
  clock?: Clock;
  /** Randomness for jitter, in [0, 1). Default `Math.random`. */
  random?: () => number;
  /** Network and page-visibility signals; `null` for none. Default the browser's, when there is one. */
  signals?: Signals | null;
}

export interface ResolvedOptions {
  token: string | undefined;
  getToken: GetToken | undefined;
  encoding: 'json' | 'msgpack' | Codec;
  tokenIn: 'query' | 'identify';
  minReconnectDelayMs: number;
  maxReconnectDelayMs: number;
  retryAfterJitter: number;
  connectTimeoutMs: number;
  pongTimeoutMs: number;
  requestTimeoutMs: number;
  typingThrottleMs: number;
  refreshBeforeMs: number;
  WebSocket: WebSocketConstructor;
  clock: Clock;
  random: () => number;
  signals: Signals | undefined;
}

export function resolveOptions(options: GatewayOptions): ResolvedOptions {
  const WebSocketImpl =
    options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (!WebSocketImpl) {
    throw new Error(
      'no WebSocket here: pass options.WebSocket (on Node 20, run with --experimental-websocket or pass the ws package)',
    );
  }
  const resolved: ResolvedOptions = {
    token: options.token,
    getToken: options.getToken,
    encoding: options.encoding ?? 'json',
    tokenIn: options.tokenIn ?? 'query',
    minReconnectDelayMs: options.minReconnectDelayMs ?? 500,
    maxReconnectDelayMs: options.maxReconnectDelayMs ?? 20_000,
    retryAfterJitter: options.retryAfterJitter ?? 0.1,
    connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
    pongTimeoutMs: options.pongTimeoutMs ?? 10_000,
    requestTimeoutMs: options.requestTimeoutMs ?? 10_000,
    typingThrottleMs: options.typingThrottleMs ?? 1_000,
    refreshBeforeMs: options.refreshBeforeMs ?? 60_000,
    WebSocket: WebSocketImpl,
    clock: options.clock ?? systemClock,
    random: options.random ?? Math.random,
    signals: options.signals === null ? undefined : (options.signals ?? browserSignals()),
  };
  if (resolved.minReconnectDelayMs <= 0 || resolved.maxReconnectDelayMs < resolved.minReconnectDelayMs) {
    throw new Error('need 0 < minReconnectDelayMs <= maxReconnectDelayMs');
  }
  return resolved;
}
