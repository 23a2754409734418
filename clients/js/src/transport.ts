/**
 * One WebSocket connection as messages: opens the socket with the codec's subprotocol, turns
 * every received frame into messages, and reports its close exactly once. It decides nothing:
 * the gateway owns the state machine and tells it when to close.
 */
import type { Codec } from './codec.js';
import type { CloseInfo } from './close-codes.js';
import { LocalClose } from './close-codes.js';
import type { ClientMessage, ServerMessage } from './protocol.js';

/** The part of the WHATWG `WebSocket` this client uses (browsers, Node ≥ 22, `ws`, undici). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  binaryType: string;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string | ArrayBufferLike | ArrayBufferView): void;
  close(code?: number, reason?: string): void;
}

/** A `WebSocket` constructor. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** `WebSocket.OPEN`, which not every implementation exposes as a static. */
const OPEN = 1;

export interface TransportHandlers {
  onOpen(): void;
  onMessages(messages: ServerMessage[]): void;
  /** The socket closed by itself (the server's close frame, or a network failure). */
  onClose(info: Required<CloseInfo>): void;
  /** A frame that the codec could not read. */
  onUndecodable(error: unknown): void;
}

export class Transport {
  private readonly socket: WebSocketLike;
  private detached = false;
  private opened = false;

  constructor(
    WebSocketImpl: WebSocketConstructor,
    url: string,
    private readonly codec: Codec,
    private readonly handlers: TransportHandlers,
  ) {
    this.socket = new WebSocketImpl(url, [codec.subprotocol]);
    this.socket.binaryType = codec.binaryType;
    this.socket.onmessage = (event) => this.receive(event.data);
    this.socket.onopen = () => {
      this.opened = true;
      if (!this.detached) this.handlers.onOpen();
    };
    this.socket.onclose = (event) => {
      const code = typeof event.code === 'number' && event.code > 0 ? event.code : LocalClose.abnormal.code;
      this.closed({ code, reason: event.reason || (code === LocalClose.abnormal.code ? LocalClose.abnormal.reason : '') });
    };
    // Browsers follow an error with a close event, which says more. A connection that fails
    // before it opens (refused, a 401 before the upgrade) is over at the error already: Node
    // 20's WebSocket (undici) fires the error alone then, and stays CONNECTING for good.
    this.socket.onerror = () => {
      if (this.opened) return;
      this.closed({ code: LocalClose.abnormal.code, reason: 'connection failed' });
      try {
        this.socket.close();
      } catch {
        // Not closable while connecting in some implementations: it is detached anyway.
      }
    };
  }

  /** Reports the close once; whatever the socket does afterwards is ignored. */
  private closed(info: Required<CloseInfo>): void {
    if (this.detached) return;
    this.detached = true;
    this.handlers.onClose(info);
  }

  /** Whether messages can be sent now. */
  get open(): boolean {
    return !this.detached && this.socket.readyState === OPEN;
  }

  /** Sends `message` as one frame; false (and nothing sent) when the socket is not open. */
  send(message: ClientMessage): boolean {
    if (!this.open) return false;
    this.socket.send(this.codec.encode(message));
    return true;
  }

  /**
   * Closes the socket on the client's decision. The handlers are detached first: the gateway
   * already knows why it closed, so the socket's own close event is not reported.
   */
  close(code: number = LocalClose.clientClosed.code, reason = ''): void {
    if (this.detached) return;
    this.detached = true;
    try {
      // Browsers accept only 1000 and 3000–4999 from a client.
      this.socket.close(code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000, reason);
    } catch {
      // Already closing: nothing to do.
    }
  }

  private receive(data: unknown): void {
    if (this.detached) return;
    let messages: ServerMessage[];
    try {
      if (typeof data !== 'string' && !(data instanceof ArrayBuffer) && !ArrayBuffer.isView(data)) {
        throw new Error(`unexpected frame type ${Object.prototype.toString.call(data)}`);
      }
      const frame = ArrayBuffer.isView(data)
        ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
        : (data as string | ArrayBuffer);
      messages = this.codec.decode(frame);
    } catch (error) {
      this.handlers.onUndecodable(error);
      return;
    }
    this.handlers.onMessages(messages);
  }
}
