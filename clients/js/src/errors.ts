/** Why a request (`rpc`, `history`, `presence.query`, …) failed. */

/** Codes the client itself gives, besides the server's (PROTOCOL.md §7). */
export type LocalErrorCode =
  /** No answer within the request's timeout. */
  | 'timeout'
  /** The connection dropped while the request was in flight; it may or may not have run. */
  | 'disconnected'
  /** `gw.close()` was called, or the gateway closed for good. */
  | 'closed';

/**
 * A failed request: the server's `error {code, message, ..}`, or one of the
 * {@link LocalErrorCode}s. `code` is the server's as is, the backend's own codes included.
 */
export class GatewayError extends Error {
  readonly code: string;
  /** The topics the error is about, when the server names them. */
  readonly topics?: string[];
  /** When to try again (`rate_limited`). */
  readonly retryAfterMs?: number;

  constructor(code: string, message: string, extra: { topics?: string[]; retryAfterMs?: number } = {}) {
    super(message);
    this.name = 'GatewayError';
    this.code = code;
    if (extra.topics !== undefined) this.topics = extra.topics;
    if (extra.retryAfterMs !== undefined) this.retryAfterMs = extra.retryAfterMs;
  }
}
