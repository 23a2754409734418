/**
 * Reconnection delays: exponential backoff with full jitter (a uniformly random delay
 * between 0 and the capped exponential), which spreads a crowd of clients that lost the
 * same node over the whole window instead of bringing them back in waves.
 */

export interface BackoffOptions {
  /** The first attempt's ceiling, in ms. */
  minDelayMs: number;
  /** No delay exceeds this, in ms. */
  maxDelayMs: number;
}

/** The ceiling of attempt `attempt` (0-based): `min(max, min × 2^attempt)`. */
export function backoffCeiling(attempt: number, options: BackoffOptions): number {
  const exponent = Math.min(Math.max(0, attempt), 30);
  return Math.min(options.maxDelayMs, options.minDelayMs * 2 ** exponent);
}

/** The delay before attempt `attempt`: uniform in `[0, ceiling]`, from `random()` in [0, 1). */
export function backoffDelay(attempt: number, options: BackoffOptions, random: () => number): number {
  return Math.floor(random() * backoffCeiling(attempt, options));
}
