import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backoffCeiling, backoffDelay } from '../../dist/backoff.js';

const options = { minDelayMs: 500, maxDelayMs: 20_000 };

test('the ceiling doubles from the minimum and stops at the maximum', () => {
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 6, 10, 100].map((attempt) => backoffCeiling(attempt, options)),
    [500, 1000, 2000, 4000, 8000, 16_000, 20_000, 20_000, 20_000],
  );
});

test('full jitter: the delay is uniform between 0 and the ceiling', () => {
  assert.equal(backoffDelay(3, options, () => 0), 0);
  assert.equal(backoffDelay(3, options, () => 0.5), 2000);
  assert.equal(backoffDelay(3, options, () => 0.999999), 3999);
  // A crowd of clients spreads over the whole window rather than bunching at its end.
  let state = 7;
  const random = () => ((state = (state * 48271) % 2147483647) / 2147483647);
  const delays = Array.from({ length: 2000 }, () => backoffDelay(6, options, random));
  assert.ok(Math.min(...delays) < 1000 && Math.max(...delays) > 19_000);
  const mean = delays.reduce((a, b) => a + b, 0) / delays.length;
  assert.ok(Math.abs(mean - 10_000) < 800, `mean ${mean}`);
});
