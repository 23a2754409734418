import assert from 'node:assert/strict';
import { test } from 'node:test';
import { encode } from '@msgpack/msgpack';
import { jsonCodec, resolveCodec } from '../../dist/codec.js';

test('JSON: one frame carries several messages, newline-delimited', () => {
  const frame = '{"op":"pong"}\n{"op":"message_new","d":{"text":"a\\nb"},"topic":"channel:1","offset":3,"epoch":"e"}';
  assert.deepEqual(jsonCodec.decode(frame), [
    { op: 'pong' },
    { op: 'message_new', d: { text: 'a\nb' }, topic: 'channel:1', offset: 3, epoch: 'e' },
  ]);
  assert.deepEqual(jsonCodec.decode(new TextEncoder().encode('{"op":"pong"}').buffer), [{ op: 'pong' }]);
  assert.equal(jsonCodec.encode({ op: 'ping' }), '{"op":"ping"}');
  assert.equal(jsonCodec.subprotocol, 'coregate.v1.json');
});

test("'msgpack' needs its module imported first; then it is found by name", async () => {
  assert.throws(() => resolveCodec('msgpack'), /coregate-client\/msgpack/);
  assert.throws(() => resolveCodec('xml'), /unknown encoding/);
  const { msgpackCodec } = await import('../../dist/msgpack.js');
  assert.equal(resolveCodec('msgpack'), msgpackCodec);
  assert.equal(msgpackCodec.subprotocol, 'coregate.v1.msgpack');
});

test('MessagePack: messages back to back in one binary frame; absent fields stay absent', async () => {
  const { msgpackCodec } = await import('../../dist/msgpack.js');
  const a = encode({ op: 'hello', d: { session_id: 's', heartbeat_interval_ms: 30000 } });
  const b = encode({ op: 'message_new', d: { n: 1 }, topic: 'channel:1', offset: 2 ** 40, epoch: 'e' });
  const frame = new Uint8Array([...a, ...b]);
  assert.deepEqual(msgpackCodec.decode(frame.buffer), [
    { op: 'hello', d: { session_id: 's', heartbeat_interval_ms: 30000 } },
    { op: 'message_new', d: { n: 1 }, topic: 'channel:1', offset: 2 ** 40, epoch: 'e' },
  ]);
  // {op: "ping"}: a one-entry map, no `d: nil`.
  assert.deepEqual([...msgpackCodec.encode({ op: 'ping', d: undefined })], [...encode({ op: 'ping' })]);
  assert.throws(() => msgpackCodec.decode('text'), /text frame/);
});
