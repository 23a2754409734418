/** Why a request (`rpc`, `history`, `presence.query`, …) failed. */

import type { VoiceErrorCode } from './protocol.js';

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

/**
 * The gateway's `voice_error`. A class of its own because its `timeout` (the WebRTC session
 * failed) is not the request `timeout` of a {@link GatewayError} (no reply in time).
 */
export class VoiceError extends GatewayError {
  declare readonly code: VoiceErrorCode;
  /** The channel the error is about, when the client knows it (the server does not say). */
  readonly channel?: string;

  constructor(code: VoiceErrorCode, message: string, channel?: string) {
    super(code, message);
    this.name = 'VoiceError';
    if (channel !== undefined) this.channel = channel;
  }
}
