/**
 * The connection's token: the one given, or the latest from `getToken`, which is called once
 * at a time (concurrent needs share one call) and early enough that a connection never
 * reaches its token's `exp` (the server closes 4006 then).
 */

/** Where tokens come from: a fixed one, a function, or neither (the backend's connect call decides). */
export type GetToken = () => Promise<string | null | undefined> | string | null | undefined;

/** The `exp` claim of a JWT, in ms since the epoch; undefined when it has none or is no JWT. */
export function tokenExpiry(token: string): number | undefined {
  const payload = token.split('.')[1];
  if (!payload) return undefined;
  try {
    const base64 = payload.replace(/-/g, '+').replace(/_/g, '/');
    const json = atob(base64 + '='.repeat((4 - (base64.length % 4)) % 4));
    const exp = (JSON.parse(json) as { exp?: unknown }).exp;
    return typeof exp === 'number' && Number.isFinite(exp) ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * When to renew a token expiring at `expiresAt`, seen at `now`: `leadMs` before its expiry, or
 * a fifth of its remaining life before it when that is shorter (a 30-second token is renewed
 * at 24 s, not immediately).
 */
export function renewalDelay(expiresAt: number, now: number, leadMs: number): number {
  const remaining = expiresAt - now;
  return Math.max(0, remaining - Math.min(leadMs, remaining / 5));
}

export class TokenSource {
  private token: string | undefined;
  private inFlight: Promise<string | null> | undefined;

  constructor(token: string | undefined, private readonly getToken: GetToken | undefined) {
    this.token = token;
  }

  /** The token to connect or refresh with now. */
  get current(): string | undefined {
    return this.token;
  }

  /** Whether new tokens can be had. */
  get renewable(): boolean {
    return this.getToken !== undefined;
  }

  /** When the current token expires (ms), if it says. */
  get expiresAt(): number | undefined {
    return this.token === undefined ? undefined : tokenExpiry(this.token);
  }

  /** Whether a token must be fetched before connecting: none yet, or expiring within `marginMs`. */
  needsRenewal(now: number, marginMs: number): boolean {
    if (!this.renewable) return false;
    if (this.token === undefined) return true;
    const expiresAt = this.expiresAt;
    return expiresAt !== undefined && expiresAt - now <= marginMs;
  }

  /**
   * A new token from `getToken`; concurrent callers share one call. Resolves null when
   * `getToken` gives none (the user is signed out); rejects when it throws.
   */
  renew(): Promise<string | null> {
    if (!this.getToken) return Promise.resolve(this.token ?? null);
    if (!this.inFlight) {
      const getToken = this.getToken;
      this.inFlight = (async () => {
        try {
          const token = await getToken();
          if (token) this.token = token;
          return token || null;
        } finally {
          this.inFlight = undefined;
        }
      })();
    }
    return this.inFlight;
  }

  /** Replaces the token (the app got one on its own). */
  set(token: string): void {
    this.token = token;
  }
}
