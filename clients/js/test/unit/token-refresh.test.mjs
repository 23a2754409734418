// The token renewed before it expires, sent with `refresh` on the live connection.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { harness, fakeToken } from '../support/harness.mjs';
import { settle } from '../support/fake-clock.mjs';

test('renewed a minute before exp and sent with refresh, without reconnecting', async () => {
  let calls = 0;
  let clock; // the harness's, once made (the first token is minted while it is being made)
  const h = harness({ getToken: async () => fakeToken(clock, 300, `t${++calls}`) });
  clock = h.clock;
  await settle();
  h.sockets[0].handshake();
  await h.clock.advance(239_000);
  assert.equal(calls, 1);
  await h.clock.advance(1000); // exp - 60 s
  assert.equal(calls, 2);
  const [refresh] = h.sockets[0].sentOps('refresh');
  assert.ok(refresh, 'refresh sent');
  assert.equal(JSON.parse(Buffer.from(refresh.d.token.split('.')[1], 'base64url')).sub, 't2');
  h.sockets[0].deliver({ op: 'refreshed', d: { exp: 0 }, ref: refresh.ref });
  assert.equal(h.sockets.length, 1, 'no reconnect');
  await h.clock.advance(240_000);
  assert.equal(calls, 3, 'the next renewal is scheduled from the new token');
  assert.equal(h.sockets[0].sentOps('refresh').length, 2);
});

test('a refused refresh (invalid_token) is tried again after a while', async () => {
  let calls = 0;
  let clock; // the harness's, once made (the first token is minted while it is being made)
  const h = harness({ getToken: async () => fakeToken(clock, 300, `t${++calls}`) });
  clock = h.clock;
  await settle();
  h.sockets[0].handshake();
  await h.clock.advance(240_000);
  const [refresh] = h.sockets[0].sentOps('refresh');
  h.sockets[0].deliver({ op: 'error', d: { code: 'invalid_token', message: 'bad' }, ref: refresh.ref });
  await h.clock.advance(5000);
  assert.equal(calls, 3);
  assert.equal(h.sockets[0].sentOps('refresh').length, 2);
});

test('a reconnect with an expiring token fetches a fresh one first; concurrent needs share one call', async () => {
  let calls = 0;
  let release;
  const h = harness({
    getToken: () => {
      calls += 1;
      return new Promise((resolve) => (release = resolve));
    },
  });
  await settle();
  release(fakeToken(h.clock, 40));
  await settle();
  h.sockets[0].handshake();
  // At exp - 8 s (a fifth of its life) the renewal starts; the connection drops meanwhile, and
  // its token, 7.75 s from expiry, is too close to it to connect with.
  await h.clock.advance(32_000);
  assert.equal(calls, 2);
  h.sockets[0].serverClose(1006);
  await h.clock.advance(250);
  assert.equal(calls, 2, 'the reconnect waits for the same call');
  assert.equal(h.sockets.length, 1);
  release(fakeToken(h.clock, 3600, 'fresh'));
  await settle();
  assert.equal(h.sockets.length, 2);
  assert.equal(JSON.parse(Buffer.from(h.sockets[1].token.split('.')[1], 'base64url')).sub, 'fresh');
});
