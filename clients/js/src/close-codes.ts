/**
 * What to do after a connection closes: every close code's advice (PROTOCOL.md §7, the
 * right-hand column) turned into a plan: stop, or retry after some delay, with a new token or
 * not. Pure, so that the whole table is unit-tested (centrifuge's `disconnect.go` is the model:
 * each close is one value with its code and its reconnect advice).
 */
import { backoffDelay, type BackoffOptions } from './backoff.js';

/** A close: its code and reason, as the `state` event reports them. */
export interface CloseInfo {
  code?: number;
  reason?: string;
}

/**
 * Closes the client decides itself, without a close frame from the server. They use the
 * 3000–3999 range (for libraries, RFC 6455 §7.4.2), so they never collide with the server's.
 */
export const LocalClose = {
  /** `gw.close()`. */
  clientClosed: { code: 1000, reason: 'client closed' },
  /** No message from the server within the watchdog's time (a half-open TCP connection). */
  serverSilent: { code: 3001, reason: 'server silent' },
  /** The browser went offline. */
  offline: { code: 3002, reason: 'offline' },
  /** `getToken` failed, or gave no token. */
  tokenUnavailable: { code: 3003, reason: 'token unavailable' },
  /** No `ready` within `connectTimeoutMs`. */
  connectTimeout: { code: 3004, reason: 'connect timeout' },
  /** The server sent a frame this client cannot decode. */
  undecodableFrame: { code: 3005, reason: 'undecodable frame' },
  /** The socket closed without a close frame (network error, refused upgrade, server killed). */
  abnormal: { code: 1006, reason: 'connection lost' },
} as const satisfies Record<string, Required<CloseInfo>>;

/** Close codes after which retrying cannot help (§7: "no"). */
const NO_RETRY = new Set([
  1000, // normal
  4004, // authentication failed: not with the same token
  4011, // too many connections for this user: not until one closes
]);

/** Close codes that mean the token expired: retry with a new one. */
const NEW_TOKEN = new Set([4006]);

/** What is known when a connection closes. */
export interface CloseFacts {
  code: number;
  /**
   * The server's `retry_after_ms` for this close: from the `reconnect` message that preceded
   * it (1012, 4010, …), or from the last `rate_limited` error (4008).
   */
  retryAfterMs?: number | undefined;
  /** Attempts made since the last successful connection (0 right after losing one). */
  attempt: number;
  /** Whether a new token can be had (`getToken` was given). */
  canRenewToken: boolean;
}

export type ReconnectPlan =
  | { retry: false }
  | { retry: true; delayMs: number; newToken: boolean };

export interface PlanOptions extends BackoffOptions {
  /** Extra random wait on top of a server's `retry_after_ms`, as a fraction of it. */
  retryAfterJitter: number;
}

/**
 * The plan after a close. A server's `retry_after_ms` is a floor ("wait this long first"):
 * the first retry waits it plus a little jitter; later attempts (the node still unreachable)
 * fall back to the exponential backoff, never under that floor.
 */
export function planReconnect(facts: CloseFacts, options: PlanOptions, random: () => number): ReconnectPlan {
  if (NO_RETRY.has(facts.code)) return { retry: false };
  const newToken = NEW_TOKEN.has(facts.code);
  if (newToken && !facts.canRenewToken) return { retry: false };
  const backoff = backoffDelay(facts.attempt, options, random);
  if (facts.retryAfterMs !== undefined && facts.retryAfterMs > 0) {
    const floor = facts.retryAfterMs;
    const jittered = floor + Math.floor(random() * floor * options.retryAfterJitter);
    return { retry: true, delayMs: facts.attempt === 0 ? jittered : Math.max(floor, backoff), newToken };
  }
  return { retry: true, delayMs: backoff, newToken };
}

/** Whether the server's close `code` means that no retry will help. */
export function isTerminal(code: number, canRenewToken: boolean): boolean {
  return NO_RETRY.has(code) || (NEW_TOKEN.has(code) && !canRenewToken);
}
