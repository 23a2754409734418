// Tokens signed like the application backend would (HS256), with the secret the test
// gateways are started with.
import { createHmac } from 'node:crypto';

export const SECRET = 'test-secret-0123456789abcdef';

const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');

/** Signs `claims` with `secret` (HS256). */
export function sign(claims, secret = SECRET) {
  const unsigned = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`;
}

/** A token for `sub`, allowed `topics`, valid for `ttlSeconds` (an hour by default). */
export function token(sub, { topics = ['channel:*', 'presence:*'], ttlSeconds = 3600, ...claims } = {}) {
  return sign({ sub, name: sub.toUpperCase(), topics, exp: Math.floor(Date.now() / 1000) + ttlSeconds, ...claims });
}
