/**
 * `coregate.v1.msgpack` (PROTOCOL.md §1–§2): binary frames of MessagePack messages, back to
 * back. A separate entry point (`coregate-client/msgpack`) on `@msgpack/msgpack`, so that an
 * app that speaks JSON never downloads it. Importing this module registers the codec, after
 * which `new Gateway(url, { encoding: 'msgpack' })` uses it.
 */
import { decodeMulti, encode } from '@msgpack/msgpack';
import { registerCodec, type Codec } from './codec.js';
import type { ServerMessage } from './protocol.js';

/** The MessagePack codec. */
export const msgpackCodec: Codec = {
  name: 'msgpack',
  subprotocol: 'coregate.v1.msgpack',
  binaryType: 'arraybuffer',
  encode(message) {
    // Absent fields stay absent (`ping` has no `d`), rather than becoming nil.
    return encode(message, { ignoreUndefined: true });
  },
  decode(frame) {
    if (typeof frame === 'string') {
      throw new Error('a text frame on a MessagePack connection');
    }
    const bytes = frame instanceof Uint8Array ? frame : new Uint8Array(frame);
    return Array.from(decodeMulti(bytes), (value) => value as ServerMessage);
  },
};

registerCodec(msgpackCodec);
