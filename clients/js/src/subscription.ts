/**
 * A subscription to one topic, kept across reconnects: the gateway subscribes it again after
 * every new connection, with `since` when it recovers, and it reports whether it recovered
 * (`subscribed`) and a `gap` when it did not.
 */
import { Emitter } from './emitter.js';
import type { GatewayError } from './errors.js';
import type { Publication, ServerMessageOf, StreamPosition } from './protocol.js';
import { StreamCursor, type GapReason } from './stream-cursor.js';

export type SubscriptionState =
  /** Not subscribed, and not going to be: `unsubscribe()`, or the server refused the topic. */
  | 'unsubscribed'
  /** Waiting for the server's answer, or for a connection to ask on. */
  | 'subscribing'
  /** The server confirmed it on the current connection. */
  | 'subscribed';

export interface SubscribeOptions {
  /**
   * Keep the topic's position and resubscribe with `since` after a reconnect, to get exactly
   * what was missed (topics with history, §6); a `gap` event when that fails. Default false.
   */
  recover?: boolean;
  /**
   * Start from this position (the last publication the app already has, e.g. from the
   * backend's own history): the first subscribe recovers from it too. Implies `recover`.
   */
  since?: StreamPosition;
}

/** The `subscribed` event. */
export interface SubscribedInfo {
  topic: string;
  /** Whether a `since` was sent and the server replayed everything after it. */
  recovered: boolean;
  /** Whether this subscribe followed an earlier one of this subscription (a reconnect). */
  resubscribed: boolean;
  /** The stream's position after the server's answer (topics with history). */
  position?: StreamPosition;
}

/** The `gap` event: publications may have been missed; reload from the backend once. */
export interface GapInfo {
  topic: string;
  reason: GapReason;
  /** The position the subscription continues from. */
  position?: StreamPosition;
}

export type SubscriptionEvents = {
  state: [state: SubscriptionState, previous: SubscriptionState];
  subscribed: [info: SubscribedInfo];
  publication: [publication: Publication];
  gap: [info: GapInfo];
  /** The server refused the topic (`forbidden`, `invalid_topic`, `limit`, …). */
  error: [error: GatewayError];
  typing_start: [message: ServerMessageOf<'typing_start'>];
  typing_stop: [message: ServerMessageOf<'typing_stop'>];
  presence_update: [message: ServerMessageOf<'presence_update'>];
};

/**
 * Replays cut short by a lost connection, in a row, after which the subscription stops asking
 * to recover and reports a gap instead: a connection that keeps dropping in the middle of the
 * same large replay would otherwise ask for it forever, and the app would never catch up.
 * Today's gateway makes no replay larger than the connection's outbound budget (it answers
 * `recovered: false` with the position instead); earlier ones closed 4010 in the middle of
 * it, every time. A defence, then, for flaky links and older gateways.
 */
const MAX_FAILED_REPLAYS = 2;

/** What a subscription asks of its gateway. */
export interface SubscriptionOwner {
  /** Forgets `subscription`; `serverHasIt`: it was subscribed, or asked for, on the connection. */
  removeSubscription(subscription: Subscription, serverHasIt: boolean): void;
}

export class Subscription extends Emitter<SubscriptionEvents> {
  readonly topic: string;
  readonly recover: boolean;
  private currentState: SubscriptionState = 'subscribing';
  private readonly cursor = new StreamCursor();
  private readonly startSince: StreamPosition | undefined;
  /** @internal The `ref` of the `subscribe` in flight for it, if any. */
  inFlightRef: number | undefined;
  /** The `since` the `subscribe` in flight carried, if any. */
  private sentSince: StreamPosition | undefined;
  private everSubscribed = false;
  /** While a recovery's replay is coming: the stream's offset when it was read. */
  private replayUntil: number | undefined;
  /** Connections lost in the middle of a replay, in a row. */
  private failedReplays = 0;

  /** @internal Made by `gw.subscribe`. */
  constructor(topic: string, options: SubscribeOptions, private readonly owner: SubscriptionOwner) {
    super();
    this.topic = topic;
    this.startSince = options.since;
    this.recover = options.recover === true || options.since !== undefined;
  }

  get state(): SubscriptionState {
    return this.currentState;
  }

  /** The position of the last publication received (topics with history). */
  get position(): StreamPosition | undefined {
    return this.cursor.position;
  }

  /** Stops it for good; the server is told when connected. */
  unsubscribe(): void {
    if (this.currentState === 'unsubscribed') return;
    const serverHasIt = this.currentState === 'subscribed' || this.inFlightRef !== undefined;
    this.inFlightRef = undefined;
    this.setState('unsubscribed');
    this.owner.removeSubscription(this, serverHasIt);
  }

  /** @internal What the next `subscribe` asks for it: its `since`, when it recovers. */
  request(ref: number): StreamPosition | undefined {
    this.inFlightRef = ref;
    let since = this.recover ? (this.cursor.since() ?? (this.everSubscribed ? undefined : this.startSince)) : undefined;
    if (this.failedReplays >= MAX_FAILED_REPLAYS) {
      this.failedReplays = 0;
      since = undefined; // start afresh: the `subscribed` answer raises the gap
    }
    this.sentSince = since;
    return since;
  }

  /** @internal Whether it waits for a `subscribe` to be sent. */
  get needsRequest(): boolean {
    return this.currentState === 'subscribing' && this.inFlightRef === undefined;
  }

  /** @internal The server granted it: `position` from `positions`, `recovered` from `recovered`. */
  subscribed(position: StreamPosition | undefined, recoveredAnswer: boolean | undefined): void {
    const since = this.sentSince;
    const recovered = since !== undefined && recoveredAnswer === true;
    const resubscribed = this.everSubscribed;
    const expectedRecovery = this.recover && (since !== undefined || resubscribed);
    this.cursor.subscribed(position, recovered ? since : undefined);
    this.sentSince = undefined;
    const from = this.cursor.position;
    this.replayUntil =
      recovered && position && from && position.epoch === from.epoch && position.offset > from.offset
        ? position.offset
        : undefined;
    if (!recovered) this.failedReplays = 0;
    this.inFlightRef = undefined;
    this.everSubscribed = true;
    this.setState('subscribed');
    const info: SubscribedInfo = { topic: this.topic, recovered, resubscribed };
    if (this.cursor.position) info.position = { ...this.cursor.position };
    this.emit('subscribed', info);
    if (expectedRecovery && !recovered) this.gap('not_recovered');
  }

  /** @internal The server refused it for good. */
  refused(error: GatewayError): void {
    this.inFlightRef = undefined;
    this.setState('unsubscribed');
    this.owner.removeSubscription(this, false);
    this.emit('error', error);
  }

  /** @internal Its `subscribe` must be sent again (the connection dropped, or a retry). */
  waiting(): void {
    this.inFlightRef = undefined;
    if (this.replayUntil !== undefined) {
      this.failedReplays += 1;
      this.replayUntil = undefined;
    }
    if (this.currentState !== 'unsubscribed') this.setState('subscribing');
  }

  /** @internal A publication on its topic: delivered unless it is a copy; a gap if some were missed. */
  publication(publication: Publication): boolean {
    const verdict = this.cursor.publication(publication.offset, publication.epoch);
    const reached = this.cursor.position;
    if (this.replayUntil !== undefined && reached && reached.offset >= this.replayUntil) {
      this.replayUntil = undefined;
      this.failedReplays = 0;
    }
    if (verdict.gap) this.gap(verdict.gap);
    if (verdict.deliver) this.emit('publication', publication);
    return verdict.deliver;
  }

  /** @internal A gateway event on its topic (typing, presence). */
  topicEvent(message: ServerMessageOf<'typing_start' | 'typing_stop' | 'presence_update'>): void {
    // The union of three ops is narrowed by the op itself.
    (this.emit as (event: string, message: unknown) => void)(message.op, message);
  }

  private gap(reason: GapReason): void {
    const info: GapInfo = { topic: this.topic, reason };
    if (this.cursor.position) info.position = { ...this.cursor.position };
    this.emit('gap', info);
  }

  private setState(state: SubscriptionState): void {
    const previous = this.currentState;
    if (previous === state) return;
    this.currentState = state;
    this.emit('state', state, previous);
  }
}
