/**
 * What the helpers (`presence`, `voice`) need from their gateway: sending, requests with a
 * reply, subscriptions and events. A narrow interface, so that each helper is a module of its
 * own rather than more of the gateway.
 */
import type { GatewayError } from './errors.js';
import type { ConnectionState, GatewayEvents } from './gateway.js';
import type { ClientOp, ClientOps, ServerMessage } from './protocol.js';
import type { SubscribeOptions, Subscription } from './subscription.js';

export interface RequestOptions {
  /** How long to wait for the reply; default the gateway's `requestTimeoutMs`. */
  timeoutMs?: number;
}

export interface GatewayLink {
  readonly state: ConnectionState;
  /** The user of the current connection (`ready.d.user_id`). */
  readonly userId: string | undefined;
  /** Sends `op` now if connected; false (and nothing sent) otherwise. */
  send<Op extends ClientOp>(op: Op, d: ClientOps[Op]): boolean;
  /**
   * Sends `op` with a `ref` (now, or once connected); `reply` resolves with the reply that
   * echoes the ref.
   */
  startRequest<Op extends ClientOp>(
    op: Op,
    d: ClientOps[Op],
    options?: RequestOptions,
  ): { ref: number; reply: Promise<ServerMessage> };
  /** Settles a pending request by hand, for replies matched by something else than `ref`. */
  settle(ref: number, outcome: ServerMessage | GatewayError): void;
  subscribe(topic: string, options?: SubscribeOptions): Subscription;
  getSubscription(topic: string): Subscription | undefined;
  on<E extends keyof GatewayEvents>(event: E, listener: (...args: GatewayEvents[E]) => void): () => void;
}
