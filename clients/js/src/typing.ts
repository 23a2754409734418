/**
 * Client-side throttle of typing indicators: at most one `typing_start` per topic per
 * interval (1 s by default), however fast keys are pressed. The server keeps the indicator on
 * for its `--typing-ttl` after each one and announces `typing_stop` itself when they stop
 * coming, so the app only calls `gw.typing(topic)` on input.
 */
export class TypingThrottle {
  private readonly lastSent = new Map<string, number>();

  constructor(private readonly intervalMs: number) {}

  /** Whether a `typing_start` on `topic` may go out at `now`; records it if so. */
  start(topic: string, now: number): boolean {
    const last = this.lastSent.get(topic);
    if (last !== undefined && now - last < this.intervalMs) return false;
    this.lastSent.set(topic, now);
    return true;
  }

  /** Whether a `typing_stop` on `topic` is worth sending (a start went out); forgets it. */
  stop(topic: string): boolean {
    return this.lastSent.delete(topic);
  }

  /** The connection dropped: the server stopped every indicator it had. */
  reset(): void {
    this.lastSent.clear();
  }
}
