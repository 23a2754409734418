/**
 * The gateway client: one logical connection to coregate that survives the physical ones.
 *
 * It is a state machine of four states, `connecting` → `connected` → `disconnected` →
 * `connecting` … and `closed`, each transition reported with the close code and reason that
 * caused it. Around it: the reconnection plan of every close code (close-codes.ts), the
 * heartbeat and its watchdog, the token and its renewal, the subscriptions and their recovery,
 * and the requests waiting for replies. Time, randomness, the socket and the browser's signals
 * are injected, so that all of it is tested with a fake clock.
 */
import { backoffDelay } from './backoff.js';
import { Timer } from './clock.js';
import { LocalClose, planReconnect, type CloseInfo, type PlanOptions } from './close-codes.js';
import { resolveCodec, type Codec } from './codec.js';
import { Emitter } from './emitter.js';
import { GatewayError, VoiceError } from './errors.js';
import { Heartbeat } from './heartbeat.js';
import type { GatewayLink, RequestOptions } from './link.js';
import { resolveOptions, type GatewayOptions, type ResolvedOptions } from './options.js';
import { Presence } from './presence.js';
import {
  isServerOp,
  type ClientMessage,
  type ClientOp,
  type ClientOps,
  type KnownServerMessage,
  type Publication,
  type ServerMessage,
  type ServerMessageOf,
  type ServerOp,
  type ServerOps,
  type StreamPosition,
} from './protocol.js';
import { PendingRequests } from './requests.js';
import type { Signal } from './signals.js';
import { Subscription, type SubscribeOptions, type SubscriptionOwner } from './subscription.js';
import { renewalDelay, TokenSource } from './token.js';
import { Transport } from './transport.js';
import { TypingThrottle } from './typing.js';
import { Voice } from './voice.js';

export type ConnectionState =
  /** Getting a token, opening the socket, waiting for `ready`. */
  | 'connecting'
  /** `ready` arrived: requests flow, subscriptions are (re)made. */
  | 'connected'
  /** Lost; a reconnect is scheduled (the info says why it was lost). */
  | 'disconnected'
  /** Stopped for good: `close()`, or a close code after which retrying cannot help. */
  | 'closed';

/** The close code and reason behind a transition (none on `connected`). */
export type StateInfo = CloseInfo;

/** The transitions the machine allows; anything else is a bug, and throws. */
const TRANSITIONS: Record<ConnectionState, readonly ConnectionState[]> = {
  connecting: ['connected', 'disconnected', 'closed'],
  connected: ['disconnected', 'closed'],
  disconnected: ['connecting', 'closed'],
  closed: ['connecting'],
};

export type GatewayEvents = {
  state: [state: ConnectionState, info: StateInfo];
  /** Every server message, as received (before copies of recovered publications are dropped). */
  event: [message: ServerMessage];
  /** A backend publication on any topic (subscribed ones, and the automatic `user:<sub>`, `global`). */
  publication: [publication: Publication];
} & { [Op in ServerOp]: [message: ServerMessageOf<Op>] };

export interface HistoryOptions extends RequestOptions {
  /** How many publications (default 50, at most the topic's history size). */
  limit?: number;
  /** Page forward: the first `limit` after this position. */
  since?: StreamPosition;
}

export type HistoryResult = ServerOps['history'];

/** Topics per `subscribe` message, so that one stays far below the 64 KiB message limit. */
const SUBSCRIBE_BATCH = 100;
/** A token expiring within this is renewed before a connection is opened with it. */
const CONNECT_RENEW_MARGIN_MS = 10_000;
/** A failed renewal is tried again after this (the connection holds until `exp`). */
const REFRESH_RETRY_MS = 5_000;
/** Renewals are at least this far apart, even if `getToken` keeps giving a token about to expire. */
const MIN_REFRESH_GAP_MS = 1_000;

/** One physical connection (an attempt, until `ready`). */
interface Connection {
  id: number;
  transport: Transport;
  token: string | undefined;
  ready: boolean;
  /** The `retry_after_ms` of a `reconnect` message: the server is about to close. */
  reconnectAfterMs?: number;
  /** The `retry_after_ms` of the last `rate_limited` error (used if a 4008 follows). */
  rateLimitedAfterMs?: number;
  /** Refs of the requests sent on it and not answered yet. */
  inFlight: Set<number>;
  /** Refs of its `subscribe` requests, with the topics not answered yet. */
  subscribeRefs: Map<number, Set<string>>;
}

export class Gateway extends Emitter<GatewayEvents> implements GatewayLink, SubscriptionOwner {
  /** Presence: `set`, `query`, `watch`. */
  readonly presence: Presence;
  /** Voice channels: `join`, `leave`, `mute`, `answer`, …, and the room's sessions (the WebRTC part is the app's). */
  readonly voice: Voice;

  private readonly options: ResolvedOptions;
  private readonly backoff: PlanOptions;
  private readonly codec: Codec;
  private readonly url: string;
  private readonly tokens: TokenSource;
  private readonly requests: PendingRequests;
  private readonly heartbeat: Heartbeat;
  private readonly typingThrottle: TypingThrottle;
  private readonly subscriptionsByTopic = new Map<string, Subscription>();
  /** Requests made while not connected, sent once `ready` comes. */
  private readonly outbox: Array<{ ref: number; message: ClientMessage }> = [];
  private readonly pendingUnsubscribes = new Set<string>();
  private readonly reconnectTimer: Timer;
  private readonly connectTimer: Timer;
  private readonly refreshTimer: Timer;
  private readonly subscribeRetryTimer: Timer;

  private currentState: ConnectionState = 'connecting';
  private connection: Connection | undefined;
  /** Bumped by every attempt and by `close()`, so that late callbacks of older ones are ignored. */
  private attemptId = 0;
  /** Attempts since the last `ready`: the backoff's exponent. */
  private attempt = 0;
  private subscribeRetryAttempt = 0;
  private renewTokenFirst = false;
  /** The reconnect scheduled waits out a server's `retry_after_ms` (not skipped when the page shows). */
  private reconnectAdvised = false;
  private lastClose: StateInfo = {};
  private nextRef = 1;
  private flushQueued = false;
  private offline = false;
  private stopSignals: (() => void) | undefined;
  private session: { userId: string; sessionId: string; data: unknown } | undefined;

  /** Connects at once; the gateway starts in `connecting`. */
  constructor(url: string, options: GatewayOptions = {}) {
    super();
    const parsed = new URL(url);
    if (parsed.protocol !== 'ws:' && parsed.protocol !== 'wss:') {
      throw new Error(`not a WebSocket URL: ${url}`);
    }
    this.url = url;
    this.options = resolveOptions(options);
    this.codec = resolveCodec(this.options.encoding);
    this.backoff = {
      minDelayMs: this.options.minReconnectDelayMs,
      maxDelayMs: this.options.maxReconnectDelayMs,
      retryAfterJitter: this.options.retryAfterJitter,
    };
    const clock = this.options.clock;
    this.tokens = new TokenSource(this.options.token, this.options.getToken);
    this.requests = new PendingRequests(clock);
    this.heartbeat = new Heartbeat(
      clock,
      this.options.pongTimeoutMs,
      () => this.send('ping', undefined),
      () => this.lost(this.attemptId, LocalClose.serverSilent),
    );
    this.typingThrottle = new TypingThrottle(this.options.typingThrottleMs);
    this.reconnectTimer = new Timer(clock);
    this.connectTimer = new Timer(clock);
    this.refreshTimer = new Timer(clock);
    this.subscribeRetryTimer = new Timer(clock);
    this.presence = new Presence(this);
    this.voice = new Voice(this);
    this.listenToSignals();
    this.open();
  }

  get state(): ConnectionState {
    return this.currentState;
  }

  /** The user this connection is (`ready.d.user_id`), once connected. */
  get userId(): string | undefined {
    return this.session?.userId;
  }

  get sessionId(): string | undefined {
    return this.session?.sessionId;
  }

  /** What the backend's connect call put in `ready.d.data`. */
  get readyData(): unknown {
    return this.session?.data;
  }

  // ---- subscriptions --------------------------------------------------------------------

  /**
   * Subscribes `topic`, now and after every reconnect (the subscribes of one moment go in one
   * message). One subscription per topic: subscribing a topic again returns the same one.
   */
  subscribe(topic: string, options: SubscribeOptions = {}): Subscription {
    const existing = this.subscriptionsByTopic.get(topic);
    if (existing) return existing;
    const subscription = new Subscription(topic, options, this);
    this.subscriptionsByTopic.set(topic, subscription);
    this.queueFlush();
    return subscription;
  }

  getSubscription(topic: string): Subscription | undefined {
    return this.subscriptionsByTopic.get(topic);
  }

  subscriptions(): Subscription[] {
    return [...this.subscriptionsByTopic.values()];
  }

  /** @internal Called by `Subscription.unsubscribe()` and on a refusal. */
  removeSubscription(subscription: Subscription, serverHasIt: boolean): void {
    if (this.subscriptionsByTopic.get(subscription.topic) === subscription) {
      this.subscriptionsByTopic.delete(subscription.topic);
    }
    if (serverHasIt && this.connection?.ready) {
      this.pendingUnsubscribes.add(subscription.topic);
      this.queueFlush();
    }
  }

  // ---- requests -------------------------------------------------------------------------

  /** Calls the backend's `method` (PROTOCOL.md §8); resolves with `rpc_result.d`. */
  async rpc<T = unknown>(method: string, d?: unknown, options: RequestOptions = {}): Promise<T> {
    const reply = await this.request('rpc', d === undefined ? { method } : { method, d }, options);
    return (reply as ServerMessageOf<'rpc_result'>).d.d as T;
  }

  /** The latest publications of `topic` (oldest first), or those after `since`. */
  async history(topic: string, options: HistoryOptions = {}): Promise<HistoryResult> {
    const d: ClientOps['history'] = { topic };
    if (options.limit !== undefined) d.limit = options.limit;
    if (options.since !== undefined) d.since = options.since;
    const reply = await this.request('history', d, options);
    return (reply as ServerMessageOf<'history'>).d;
  }

  /**
   * Sends any client op with a `ref` and resolves with the reply that echoes it (or rejects
   * with its `error`). Made while not connected, it is sent once connected, within its timeout.
   */
  request<Op extends ClientOp>(op: Op, d: ClientOps[Op], options: RequestOptions = {}): Promise<ServerMessage> {
    return this.startRequest(op, d, options).reply;
  }

  /** @internal `request`, with its ref. */
  startRequest<Op extends ClientOp>(
    op: Op,
    d: ClientOps[Op],
    options: RequestOptions = {},
  ): { ref: number; reply: Promise<ServerMessage> } {
    const ref = this.nextRef++;
    if (this.currentState === 'closed') {
      return { ref, reply: Promise.reject(new GatewayError('closed', 'the gateway is closed')) };
    }
    const message: ClientMessage = { op, d, ref };
    const reply = this.requests.wait(ref, options.timeoutMs ?? this.options.requestTimeoutMs, () => {
      const queued = this.outbox.findIndex((entry) => entry.ref === ref);
      if (queued >= 0) this.outbox.splice(queued, 1);
    });
    const connection = this.connection;
    if (connection?.ready && connection.transport.send(message)) connection.inFlight.add(ref);
    else this.outbox.push({ ref, message });
    return { ref, reply };
  }

  /** @internal Settles a request by hand (replies matched by something else than `ref`). */
  settle(ref: number, outcome: ServerMessage | GatewayError): void {
    this.connection?.inFlight.delete(ref);
    if (outcome instanceof GatewayError) this.requests.reject(ref, outcome);
    else this.requests.resolve(ref, outcome);
  }

  /** Sends a message without waiting for anything; false (nothing sent) when not connected. */
  send<Op extends ClientOp>(op: Op, d: ClientOps[Op]): boolean {
    const connection = this.connection;
    if (!connection?.ready) return false;
    return connection.transport.send(d === undefined ? { op } : { op, d });
  }

  // ---- typing ---------------------------------------------------------------------------

  /**
   * Says the user is typing on `topic` (call it on every input event): at most one
   * `typing_start` per topic per `typingThrottleMs`; the server stops the indicator by itself
   * when they stop coming. False when nothing was sent.
   */
  typing(topic: string): boolean {
    if (!this.connection?.ready) return false;
    if (!this.typingThrottle.start(topic, this.options.clock.now())) return false;
    return this.send('typing_start', { topic });
  }

  /** Stops the indicator at once (the message was sent); only if `typing` started one. */
  stopTyping(topic: string): boolean {
    if (!this.typingThrottle.stop(topic)) return false;
    return this.send('typing_stop', { topic });
  }

  // ---- lifecycle ------------------------------------------------------------------------

  /** Opens again after `close()` (or after a close that is not retried, e.g. with a new token). */
  connect(): void {
    if (this.currentState !== 'closed') return;
    this.attempt = 0;
    this.lastClose = {};
    this.listenToSignals();
    this.open();
  }

  /** Replaces the token (used from the next connection, or the next `refresh`). */
  setToken(token: string): void {
    this.tokens.set(token);
  }

  /** Closes for good (`closed`, 1000): pending requests are rejected `closed`. Subscriptions are kept for `connect()`. */
  close(): void {
    if (this.currentState === 'closed') return;
    this.shutDown(LocalClose.clientClosed);
  }

  /** Starts an attempt: a token if one is needed, then the socket. */
  private open(): void {
    this.reconnectTimer.clear();
    if (this.currentState !== 'connecting') this.transition('connecting', this.lastClose);
    const id = ++this.attemptId;
    this.connectTimer.set(this.options.connectTimeoutMs, () => this.lost(id, LocalClose.connectTimeout));
    const renew =
      this.renewTokenFirst || this.tokens.needsRenewal(this.options.clock.now(), CONNECT_RENEW_MARGIN_MS);
    if (!renew) {
      this.dial(id, this.tokens.current);
      return;
    }
    this.tokens.renew().then(
      (token) => {
        if (id !== this.attemptId) return;
        if (token === null) {
          this.shutDown({ code: LocalClose.tokenUnavailable.code, reason: 'getToken gave no token' });
          return;
        }
        this.renewTokenFirst = false;
        this.dial(id, token);
      },
      (error: unknown) => {
        this.lost(id, { code: LocalClose.tokenUnavailable.code, reason: `getToken failed: ${String(error)}` });
      },
    );
  }

  private dial(id: number, token: string | undefined): void {
    let url = this.url;
    if (token !== undefined && this.options.tokenIn === 'query') {
      const withToken = new URL(this.url);
      withToken.searchParams.set('token', token);
      url = withToken.toString();
    }
    const transport = new Transport(this.options.WebSocket, url, this.codec, {
      onOpen: () => {},
      onMessages: (messages) => this.receive(id, messages),
      onClose: (info) => this.lost(id, info),
      onUndecodable: (error) =>
        this.lost(id, { code: LocalClose.undecodableFrame.code, reason: `undecodable frame: ${String(error)}` }),
    });
    this.connection = { id, transport, token, ready: false, inFlight: new Set(), subscribeRefs: new Map() };
  }

  /**
   * The attempt or connection `id` ended for a reason that may be retried: plan what follows
   * from its close code (close-codes.ts).
   */
  private lost(id: number, info: Required<CloseInfo>): void {
    if (id !== this.attemptId || this.currentState === 'closed') return;
    const connection = this.connection;
    const retryAfterMs =
      connection?.reconnectAfterMs ?? (info.code === 4008 ? connection?.rateLimitedAfterMs : undefined);
    this.endConnection(info);
    const plan = planReconnect(
      { code: info.code, retryAfterMs, attempt: this.attempt, canRenewToken: this.tokens.renewable },
      this.backoff,
      this.options.random,
    );
    if (!plan.retry) {
      this.shutDown(info);
      return;
    }
    this.attempt += 1;
    if (plan.newToken) this.renewTokenFirst = true;
    this.lastClose = info;
    this.transition('disconnected', info);
    if (this.currentState !== 'disconnected') return; // a listener closed it
    this.reconnectAdvised = retryAfterMs !== undefined;
    this.scheduleReconnect(plan.delayMs);
  }

  private scheduleReconnect(delayMs: number): void {
    // Offline, a retry would fail at once: wait for `online`, with a slow retry in case it never says.
    const delay = this.offline ? this.options.maxReconnectDelayMs : delayMs;
    this.reconnectTimer.set(delay, () => this.open());
  }

  /** Everything that lived with the connection goes with it; subscriptions wait for the next one. */
  private endConnection(info: Required<CloseInfo>): void {
    const connection = this.connection;
    this.connection = undefined;
    this.connectTimer.clear();
    this.refreshTimer.clear();
    this.subscribeRetryTimer.clear();
    this.heartbeat.stop();
    this.pendingUnsubscribes.clear();
    this.typingThrottle.reset();
    if (connection) {
      connection.transport.close(info.code, info.reason);
      const inFlight = connection.inFlight;
      this.requests.rejectWhere(
        (ref) => inFlight.has(ref),
        () => new GatewayError('disconnected', `the connection closed (${info.code} ${info.reason})`),
      );
    }
    for (const subscription of this.subscriptionsByTopic.values()) subscription.waiting();
  }

  private shutDown(info: Required<CloseInfo>): void {
    this.attemptId += 1;
    // Before the connection ends: what was in flight fails as `closed`, not `disconnected`.
    this.outbox.length = 0;
    this.requests.rejectWhere(
      () => true,
      () => new GatewayError('closed', `the gateway closed (${info.code} ${info.reason})`),
    );
    this.endConnection(info);
    this.reconnectTimer.clear();
    this.lastClose = info;
    this.stopSignals?.();
    this.stopSignals = undefined;
    this.transition('closed', info);
  }

  private transition(state: ConnectionState, info: StateInfo): void {
    const from = this.currentState;
    if (!TRANSITIONS[from].includes(state)) {
      throw new Error(`coregate-client: no transition from ${from} to ${state}`);
    }
    this.currentState = state;
    this.emit('state', state, { ...info });
  }

  private listenToSignals(): void {
    const signals = this.options.signals;
    if (!signals || this.stopSignals) return;
    this.offline = signals.offline();
    this.stopSignals = signals.subscribe((signal) => this.onSignal(signal));
  }

  private onSignal(signal: Signal): void {
    switch (signal) {
      case 'offline':
        this.offline = true;
        if (this.currentState === 'connecting' || this.currentState === 'connected') {
          this.lost(this.attemptId, LocalClose.offline);
        } else if (this.currentState === 'disconnected') {
          this.scheduleReconnect(this.options.maxReconnectDelayMs);
        }
        return;
      case 'online':
        this.offline = false;
        if (this.currentState === 'disconnected') this.open();
        return;
      case 'visible':
        if (this.currentState === 'disconnected' && !this.reconnectAdvised) this.open();
        else if (this.currentState === 'connected') this.heartbeat.probe();
        return;
      case 'hidden':
        return;
    }
  }

  // ---- receiving ------------------------------------------------------------------------

  private receive(id: number, messages: ServerMessage[]): void {
    this.heartbeat.received();
    for (const message of messages) {
      // A listener may have closed the connection in the middle of a batch.
      if (this.connection?.id !== id) return;
      if (message === null || typeof message !== 'object' || typeof message.op !== 'string') continue;
      this.handle(this.connection, message);
    }
  }

  private handle(connection: Connection, message: ServerMessage): void {
    this.emit('event', message);
    if (!isServerOp(message.op)) {
      if (typeof message.topic === 'string') this.publication(message as Publication);
      return;
    }
    const known = message as KnownServerMessage;
    switch (known.op) {
      case 'hello':
        this.hello(connection, known.d);
        break;
      case 'ready':
        this.ready(connection, known.d);
        break;
      case 'reconnect':
        connection.reconnectAfterMs = known.d.retry_after_ms;
        break;
      case 'subscribed':
        this.subscribed(connection, known);
        break;
      case 'error':
        this.error(connection, known);
        break;
      case 'voice_error':
        // Refuses the request whose ref it carries; without one it is the SFU's (voice.ts).
        if (known.ref !== undefined) this.settle(known.ref, new VoiceError(known.d.code, known.d.message));
        break;
      case 'typing_start':
      case 'typing_stop':
      case 'presence_update':
        if (known.topic !== undefined) this.subscriptionsByTopic.get(known.topic)?.topicEvent(known);
        break;
      default:
        if (known.ref !== undefined) this.settle(known.ref, known);
    }
    if (this.connection === connection) {
      (this.emit as (event: string, message: unknown) => void)(known.op, known);
    }
  }

  private hello(connection: Connection, d: ServerOps['hello']): void {
    this.heartbeat.start(d.heartbeat_interval_ms);
    if (this.options.tokenIn === 'identify' && connection.token !== undefined) {
      connection.transport.send({ op: 'identify', d: { token: connection.token }, ref: this.nextRef++ });
    }
  }

  private ready(connection: Connection, d: ServerOps['ready']): void {
    connection.ready = true;
    this.connectTimer.clear();
    this.attempt = 0;
    this.subscribeRetryAttempt = 0;
    this.lastClose = {};
    this.session = { userId: d.user_id, sessionId: d.session_id, data: d.data };
    this.transition('connected', {});
    if (this.connection !== connection) return; // a listener closed it
    this.flushSubscriptions();
    this.presence.resend();
    for (const { ref, message } of this.outbox.splice(0)) {
      if (connection.transport.send(message)) connection.inFlight.add(ref);
    }
    this.scheduleRefresh();
  }

  private publication(publication: Publication): void {
    const subscription = this.subscriptionsByTopic.get(publication.topic);
    if (subscription && !subscription.publication(publication)) return; // a copy of one already delivered
    this.emit('publication', publication);
  }

  private error(connection: Connection, message: ServerMessageOf<'error'>): void {
    const d = message.d;
    if (d.code === 'rate_limited' && d.retry_after_ms !== undefined) {
      connection.rateLimitedAfterMs = d.retry_after_ms;
    }
    if (message.ref === undefined) return;
    if (connection.subscribeRefs.has(message.ref)) {
      this.subscribeRefused(connection, message.ref, d);
      return;
    }
    const extra: { topics?: string[]; retryAfterMs?: number } = {};
    if (d.topics !== undefined) extra.topics = d.topics;
    if (d.retry_after_ms !== undefined) extra.retryAfterMs = d.retry_after_ms;
    this.settle(message.ref, new GatewayError(d.code, d.message, extra));
  }

  // ---- subscribing ----------------------------------------------------------------------

  /** Sends what the subscriptions of this moment need, once the current task is done. */
  private queueFlush(): void {
    if (this.flushQueued) return;
    this.flushQueued = true;
    queueMicrotask(() => {
      this.flushQueued = false;
      this.flushSubscriptions();
    });
  }

  private flushSubscriptions(): void {
    const connection = this.connection;
    if (!connection?.ready) return;
    if (this.pendingUnsubscribes.size > 0) {
      connection.transport.send({ op: 'unsubscribe', d: { topics: [...this.pendingUnsubscribes] } });
      this.pendingUnsubscribes.clear();
    }
    if (this.subscribeRetryTimer.active) return; // waiting out a refusal; the timer flushes again
    const waiting = [...this.subscriptionsByTopic.values()].filter((s) => s.needsRequest);
    for (let i = 0; i < waiting.length; i += SUBSCRIBE_BATCH) {
      const batch = waiting.slice(i, i + SUBSCRIBE_BATCH);
      const ref = this.nextRef++;
      const since: Record<string, StreamPosition> = {};
      for (const subscription of batch) {
        const position = subscription.request(ref);
        if (position) since[subscription.topic] = position;
      }
      const topics = batch.map((s) => s.topic);
      const d: ClientOps['subscribe'] = Object.keys(since).length > 0 ? { topics, since } : { topics };
      connection.subscribeRefs.set(ref, new Set(topics));
      connection.transport.send({ op: 'subscribe', d, ref });
    }
  }

  private subscribed(connection: Connection, message: ServerMessageOf<'subscribed'>): void {
    const ref = message.ref;
    const pending = ref === undefined ? undefined : connection.subscribeRefs.get(ref);
    for (const topic of message.d.topics) {
      pending?.delete(topic);
      const subscription = this.subscriptionsByTopic.get(topic);
      if (!subscription || subscription.inFlightRef !== ref) continue; // unsubscribed meanwhile
      subscription.subscribed(message.d.positions?.[topic], message.d.recovered?.[topic]);
    }
    if (ref !== undefined && pending?.size === 0) connection.subscribeRefs.delete(ref);
    this.subscribeRetryAttempt = 0;
  }

  /**
   * A `subscribe` was refused, for some of its topics (`topics`) or all. `not_ready` (the
   * authorizer could not decide) and `rate_limited` are retried after a while; any other code
   * is final for the topics it names.
   */
  private subscribeRefused(connection: Connection, ref: number, d: ServerOps['error']): void {
    const pending = connection.subscribeRefs.get(ref) ?? new Set<string>();
    const topics = d.topics ?? [...pending];
    const retryable = d.code === 'not_ready' || d.code === 'rate_limited';
    let retry = false;
    for (const topic of topics) {
      pending.delete(topic);
      const subscription = this.subscriptionsByTopic.get(topic);
      if (!subscription || subscription.inFlightRef !== ref) continue;
      if (retryable) {
        subscription.waiting();
        retry = true;
      } else {
        const extra: { topics: string[]; retryAfterMs?: number } = { topics: [topic] };
        subscription.refused(new GatewayError(d.code, d.message, extra));
      }
    }
    if (pending.size === 0) connection.subscribeRefs.delete(ref);
    if (retry && !this.subscribeRetryTimer.active) {
      const delay =
        d.retry_after_ms ??
        Math.max(
          this.options.minReconnectDelayMs,
          backoffDelay(this.subscribeRetryAttempt++, this.backoff, this.options.random),
        );
      this.subscribeRetryTimer.set(delay, () => this.flushSubscriptions());
    }
  }

  // ---- the token ------------------------------------------------------------------------

  private scheduleRefresh(): void {
    const expiresAt = this.tokens.expiresAt;
    if (!this.tokens.renewable || expiresAt === undefined) return;
    const delay = renewalDelay(expiresAt, this.options.clock.now(), this.options.refreshBeforeMs);
    this.refreshTimer.set(Math.max(MIN_REFRESH_GAP_MS, delay), () => this.refresh());
  }

  /** Renews the token and hands it to the live connection with `refresh` (no reconnect). */
  private refresh(): void {
    const connection = this.connection;
    if (!connection?.ready) return;
    const retryLater = () => {
      if (this.connection === connection) this.refreshTimer.set(REFRESH_RETRY_MS, () => this.refresh());
    };
    this.tokens.renew().then((token) => {
      if (this.connection !== connection) return;
      if (token === null) {
        this.shutDown({ code: LocalClose.tokenUnavailable.code, reason: 'getToken gave no token' });
        return;
      }
      const ref = this.nextRef++;
      const reply = this.requests.wait(ref, this.options.requestTimeoutMs);
      if (!connection.transport.send({ op: 'refresh', d: { token }, ref })) {
        this.requests.reject(ref, new GatewayError('disconnected', 'not sent'));
      } else {
        connection.inFlight.add(ref);
      }
      reply.then(() => {
        if (this.connection === connection) this.scheduleRefresh();
      }, retryLater);
    }, retryLater);
  }
}
