// The browser's online/offline and visibility signals, raised by the test.
export class FakeSignals {
  constructor() {
    this.listeners = new Set();
    this.isOffline = false;
  }

  subscribe(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  offline() {
    return this.isOffline;
  }

  raise(signal) {
    if (signal === 'offline') this.isOffline = true;
    if (signal === 'online') this.isOffline = false;
    for (const listener of [...this.listeners]) listener(signal);
  }
}
