import assert from 'node:assert/strict';
import { test } from 'node:test';
import { renewalDelay, tokenExpiry, TokenSource } from '../../dist/token.js';
import { settle } from '../support/fake-clock.mjs';

const jwt = (claims) => `x.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.y`;

test("a JWT's exp is read without verifying it; anything else has none", () => {
  assert.equal(tokenExpiry(jwt({ exp: 1_700_000_100 })), 1_700_000_100_000);
  assert.equal(tokenExpiry(jwt({ sub: 'a' })), undefined);
  assert.equal(tokenExpiry('opaque'), undefined);
  assert.equal(tokenExpiry('a.%%%.b'), undefined);
});

test('renewal comes a minute before expiry, or at four fifths of a short life', () => {
  assert.equal(renewalDelay(3_600_000, 0, 60_000), 3_540_000);
  assert.equal(renewalDelay(30_000, 0, 60_000), 24_000);
  assert.equal(renewalDelay(1_000, 5_000, 60_000), 0);
});

test('getToken is called once at a time: concurrent needs share one call', async () => {
  let calls = 0;
  let release;
  const source = new TokenSource(undefined, () => {
    calls += 1;
    return new Promise((resolve) => (release = resolve));
  });
  const first = source.renew();
  const second = source.renew();
  await settle();
  assert.equal(calls, 1);
  release('t1');
  assert.deepEqual(await Promise.all([first, second]), ['t1', 't1']);
  assert.equal(source.current, 't1');
  const later = source.renew();
  await settle();
  assert.equal(calls, 2, 'a later need calls again');
  release('t2');
  assert.equal(await later, 't2');
});

test('needsRenewal: no token yet, or one expiring within the margin; never without getToken', () => {
  const now = 1_700_000_000_000;
  const source = new TokenSource(jwt({ exp: now / 1000 + 5 }), () => 'new');
  assert.equal(source.needsRenewal(now, 10_000), true);
  assert.equal(source.needsRenewal(now, 1_000), false);
  assert.equal(new TokenSource(undefined, () => 'x').needsRenewal(now, 0), true);
  assert.equal(new TokenSource(jwt({ exp: 1 }), undefined).needsRenewal(now, 0), false);
});
