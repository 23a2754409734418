import assert from 'node:assert/strict';
import { test } from 'node:test';
import { StreamCursor } from '../../dist/stream-cursor.js';

test('publications move the position on; copies at or below it are not delivered', () => {
  const cursor = new StreamCursor();
  cursor.subscribed({ offset: 4, epoch: 'e1' });
  assert.deepEqual(cursor.publication(5, 'e1'), { deliver: true });
  assert.deepEqual(cursor.publication(5, 'e1'), { deliver: false });
  assert.deepEqual(cursor.publication(3, 'e1'), { deliver: false });
  assert.deepEqual(cursor.position, { offset: 5, epoch: 'e1' });
  assert.deepEqual(cursor.since(), { offset: 5, epoch: 'e1' });
});

test('an offset that skips some, or a new epoch, is a gap (delivered all the same)', () => {
  const cursor = new StreamCursor();
  cursor.subscribed({ offset: 4, epoch: 'e1' });
  assert.deepEqual(cursor.publication(7, 'e1'), { deliver: true, gap: 'missed' });
  assert.deepEqual(cursor.publication(1, 'e2'), { deliver: true, gap: 'epoch_changed' });
  assert.deepEqual(cursor.position, { offset: 1, epoch: 'e2' });
});

test('a topic without a stream yet ({0, ""}) continues with offset 1 of any epoch', () => {
  const cursor = new StreamCursor();
  cursor.subscribed({ offset: 0, epoch: '' });
  assert.deepEqual(cursor.publication(1, 'fresh'), { deliver: true });
  const late = new StreamCursor();
  late.subscribed({ offset: 0, epoch: '' });
  assert.deepEqual(late.publication(3, 'fresh'), { deliver: true, gap: 'missed' });
});

test('recovered: the replay moves on from `since`, not from the server position', () => {
  const cursor = new StreamCursor();
  cursor.subscribed({ offset: 10, epoch: 'e1' }, { offset: 7, epoch: 'e1' });
  assert.deepEqual(cursor.publication(8, 'e1'), { deliver: true });
  assert.deepEqual(cursor.publication(9, 'e1'), { deliver: true });
  assert.deepEqual(cursor.publication(10, 'e1'), { deliver: true });
  assert.deepEqual(cursor.publication(10, 'e1'), { deliver: false });
});

test('publications without offset (a plain PUBLISH, topics without history) pass and move nothing', () => {
  const cursor = new StreamCursor();
  cursor.subscribed(undefined);
  assert.deepEqual(cursor.publication(undefined, undefined), { deliver: true });
  assert.equal(cursor.position, undefined);
  cursor.subscribed({ offset: 2, epoch: 'e' });
  assert.deepEqual(cursor.publication(undefined, undefined), { deliver: true });
  assert.deepEqual(cursor.position, { offset: 2, epoch: 'e' });
});
