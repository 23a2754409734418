/**
 * Encodings (PROTOCOL.md §1–§2): how messages become WebSocket frames and back.
 *
 * A frame carries one or more messages: JSON joins them with `\n`, MessagePack concatenates
 * them. JSON is built in; MessagePack lives in `coregate-client/msgpack` and registers itself
 * when imported, so that the JSON build carries no MessagePack code.
 */
import type { ClientMessage, ServerMessage } from './protocol.js';

/** An encoding: its subprotocol and how it turns messages into frames and frames into messages. */
export interface Codec {
  /** The name `encoding` selects it by. */
  readonly name: string;
  /** The `Sec-WebSocket-Protocol` it is offered under. */
  readonly subprotocol: string;
  /** The socket's `binaryType` it needs to receive its frames. */
  readonly binaryType: 'arraybuffer' | 'blob';
  /** One client message as one frame. */
  encode(message: ClientMessage): string | Uint8Array;
  /** Every message of one received frame, in order. Throws on a frame it cannot read. */
  decode(frame: string | ArrayBuffer | Uint8Array): ServerMessage[];
}

const textDecoder = /* @__PURE__ */ new TextDecoder();

/** `coregate.v1.json`: text frames of newline-delimited JSON. */
export const jsonCodec: Codec = {
  name: 'json',
  subprotocol: 'coregate.v1.json',
  binaryType: 'arraybuffer',
  encode(message) {
    return JSON.stringify(message);
  },
  decode(frame) {
    const text = typeof frame === 'string' ? frame : textDecoder.decode(frame);
    // A raw newline cannot occur inside a JSON value (strings escape it), so splitting on it
    // is exact.
    return text.split('\n').map((line) => JSON.parse(line) as ServerMessage);
  },
};

const codecs = new Map<string, Codec>([[jsonCodec.name, jsonCodec]]);

/** Makes `codec` available by name to `new Gateway(url, { encoding: name })`. */
export function registerCodec(codec: Codec): void {
  codecs.set(codec.name, codec);
}

/** The codec `encoding` names (or is). */
export function resolveCodec(encoding: string | Codec): Codec {
  if (typeof encoding !== 'string') return encoding;
  const codec = codecs.get(encoding);
  if (codec) return codec;
  if (encoding === 'msgpack') {
    throw new Error("encoding 'msgpack' needs `import 'coregate-client/msgpack'` first");
  }
  throw new Error(`unknown encoding '${encoding}' (json, msgpack)`);
}
