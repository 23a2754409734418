import assert from 'node:assert/strict';
import { test } from 'node:test';
import { planReconnect } from '../../dist/close-codes.js';

const options = { minDelayMs: 500, maxDelayMs: 20_000, retryAfterJitter: 0.1 };
const half = () => 0.5;
const plan = (code, extra = {}) =>
  planReconnect({ code, attempt: 0, canRenewToken: false, ...extra }, options, half);

test('4004, 4011 and 1000 are never retried (PROTOCOL.md §7)', () => {
  for (const code of [1000, 4004, 4011]) {
    assert.deepEqual(plan(code), { retry: false }, `${code}`);
    assert.deepEqual(plan(code, { canRenewToken: true, attempt: 3 }), { retry: false }, `${code}`);
  }
});

test('4006 is retried with a new token, and only when one can be had', () => {
  assert.deepEqual(plan(4006), { retry: false });
  assert.deepEqual(plan(4006, { canRenewToken: true }), { retry: true, delayMs: 250, newToken: true });
});

test("a server's retry_after_ms is waited out first, plus at most the jitter", () => {
  assert.deepEqual(plan(1012, { retryAfterMs: 1000 }), { retry: true, delayMs: 1050, newToken: false });
  const low = planReconnect({ code: 4010, retryAfterMs: 1000, attempt: 0, canRenewToken: false }, options, () => 0);
  const high = planReconnect({ code: 4010, retryAfterMs: 1000, attempt: 0, canRenewToken: false }, options, () => 0.9999);
  assert.equal(low.delayMs, 1000);
  assert.equal(high.delayMs, 1099);
});

test('after a failed attempt the backoff grows, never under the retry_after floor', () => {
  // A server that keeps saying `reconnect {retry_after_ms: 1000}` then closing (4000): the
  // backoff still grows past the floor.
  const delays = [0, 1, 2, 3, 4].map(
    (attempt) => planReconnect({ code: 4000, retryAfterMs: 1000, attempt, canRenewToken: false }, options, () => 0.99).delayMs,
  );
  assert.deepEqual(delays, [1099, 1000, 1980, 3960, 7920]);
});

test('every other close code of §7 (and the local ones) is retried with the backoff', () => {
  for (const code of [1002, 1006, 1007, 1009, 1011, 1013, 4000, 4003, 4005, 4008, 4009, 4010, 3001, 3002, 3003, 3004, 3005]) {
    const result = planReconnect({ code, attempt: 2, canRenewToken: false }, options, half);
    assert.deepEqual(result, { retry: true, delayMs: 1000, newToken: false }, `${code}`);
  }
});
