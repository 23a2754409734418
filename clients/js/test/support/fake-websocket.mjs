// A WebSocket whose server side is the test: it accepts, sends frames, closes with a code,
// and records what the client sent. Speaks the JSON encoding (text frames, `\n`-joined).

export class FakeWebSocket {
  static instances = [];

  /** The most recent socket the client opened. */
  static get last() {
    return FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
  }

  static reset() {
    FakeWebSocket.instances = [];
  }

  constructor(url, protocols) {
    this.url = url;
    this.protocols = Array.isArray(protocols) ? protocols : [protocols];
    this.readyState = 0;
    this.protocol = '';
    this.binaryType = 'blob';
    this.sent = [];
    this.closedByClient = undefined;
    /** Answers every `ping` with a `pong`, as a live server does; heartbeat tests turn it off. */
    this.autoPong = true;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeWebSocket.instances.push(this);
  }

  send(data) {
    if (this.readyState !== 1) throw new Error('send on a socket that is not open');
    this.sent.push(data);
    if (this.autoPong && JSON.parse(data).op === 'ping') {
      queueMicrotask(() => this.readyState === 1 && this.deliver({ op: 'pong' }));
    }
  }

  close(code, reason) {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }

  // ---- the server's side ----

  accept() {
    this.readyState = 1;
    this.protocol = this.protocols[0];
    this.onopen?.({});
  }

  /** Sends one frame carrying `messages`. */
  deliver(...messages) {
    this.onmessage?.({ data: messages.map((m) => JSON.stringify(m)).join('\n') });
  }

  /** Accepts and answers `hello` and `ready`. */
  handshake({ heartbeat = 30_000, user = 'alice', session = 's1' } = {}) {
    this.accept();
    this.deliver({ op: 'hello', d: { session_id: session, heartbeat_interval_ms: heartbeat } });
    this.deliver({ op: 'ready', d: { user_id: user, session_id: session, topics: [`user:${user}`, 'global'] } });
  }

  /** The server closes with `code` (1006: the connection was lost without a close frame). */
  serverClose(code, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** The connection fails before it opens, with an error and no close event (Node 20's undici). */
  refuse() {
    this.onerror?.({ message: 'Received network error or non-101 status code.' });
  }

  /** Every message the client sent, decoded. */
  get messages() {
    return this.sent.map((frame) => JSON.parse(frame));
  }

  /** The messages the client sent with `op`. */
  sentOps(op) {
    return this.messages.filter((m) => m.op === op);
  }

  get token() {
    return new URL(this.url).searchParams.get('token');
  }
}
