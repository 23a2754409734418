/**
 * The client's side of the heartbeat (PROTOCOL.md §5): a `ping` every
 * `heartbeat_interval_ms` (the server closes a connection silent for twice that), and a
 * watchdog that declares the server gone when nothing at all arrives for the interval plus
 * `pongTimeoutMs`. A TCP connection can be half-open (a NAT dropped it, the server's host
 * died): the socket then reports nothing for minutes, and only the missing pong tells.
 */
import { Timer, type Clock } from './clock.js';

export class Heartbeat {
  private readonly pingTimer: Timer;
  private readonly watchdog: Timer;
  private intervalMs = 0;

  constructor(
    clock: Clock,
    private readonly pongTimeoutMs: number,
    private readonly sendPing: () => void,
    private readonly onSilent: () => void,
  ) {
    this.pingTimer = new Timer(clock);
    this.watchdog = new Timer(clock);
  }

  /** Starts pinging every `intervalMs` (from `hello`) and watching for silence. */
  start(intervalMs: number): void {
    this.intervalMs = Math.max(1, intervalMs);
    this.schedulePing();
    this.received();
  }

  /** Anything arrived from the server: it is alive. */
  received(): void {
    if (this.intervalMs === 0) return;
    this.watchdog.set(this.intervalMs + this.pongTimeoutMs, this.onSilent);
  }

  /**
   * Pings now and expects an answer within `pongTimeoutMs` (a page that becomes visible again
   * checks its connection at once: its timers may have been throttled while hidden).
   */
  probe(): void {
    if (this.intervalMs === 0) return;
    this.sendPing();
    this.schedulePing();
    this.watchdog.set(this.pongTimeoutMs, this.onSilent);
  }

  stop(): void {
    this.intervalMs = 0;
    this.pingTimer.clear();
    this.watchdog.clear();
  }

  private schedulePing(): void {
    this.pingTimer.set(this.intervalMs, () => {
      this.sendPing();
      this.schedulePing();
    });
  }
}
