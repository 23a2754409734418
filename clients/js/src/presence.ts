/**
 * Presence (PROTOCOL.md §4–§5): set the user's status (kept and sent again after every
 * reconnect, since a long outage makes the server forget it), query anyone's, and watch some
 * users: a live map of their statuses, seeded by a query after each (re)subscribe because
 * presence topics have no history to recover from.
 */
import { Emitter } from './emitter.js';
import type { GatewayLink, RequestOptions } from './link.js';
import type { PresenceUser, ServerMessageOf, SettableStatus } from './protocol.js';
import type { Subscription } from './subscription.js';

/** The server answers at most this many ids per `presence_query`. */
const QUERY_LIMIT = 100;

export class Presence {
  private status: SettableStatus | undefined;
  /** Presence topics watched, with how many watches hold each and whether a watch made it. */
  private readonly watched = new Map<string, { subscription: Subscription; holders: number; owned: boolean }>();

  /** @internal */
  constructor(private readonly link: GatewayLink) {}

  /** Sets the user's status (for all their connections); sent again after each reconnect. */
  set(status: SettableStatus): void {
    this.status = status;
    this.link.send('presence_set', { status });
  }

  /** @internal A new connection is ready: tell it the status the app chose. */
  resend(): void {
    if (this.status) this.link.send('presence_set', { status: this.status });
  }

  /** The presence of `userIds`, in order (several queries past 100 ids). */
  async query(userIds: readonly string[], options: RequestOptions = {}): Promise<PresenceUser[]> {
    const chunks: string[][] = [];
    for (let i = 0; i < userIds.length; i += QUERY_LIMIT) chunks.push(userIds.slice(i, i + QUERY_LIMIT));
    const answers = await Promise.all(
      chunks.map((user_ids) => this.link.startRequest('presence_query', { user_ids }, options).reply),
    );
    return answers.flatMap((reply) => (reply as ServerMessageOf<'presence_state'>).d.users);
  }

  /** Watches `userIds`' presence: subscribes `presence:<id>` and keeps their current status. */
  watch(userIds: readonly string[]): PresenceWatch {
    return new PresenceWatch(this, userIds);
  }

  /** @internal A watch takes hold of `presence:<userId>`. */
  hold(userId: string): Subscription {
    const topic = `presence:${userId}`;
    let entry = this.watched.get(topic);
    if (!entry || entry.subscription.state === 'unsubscribed') {
      const existing = this.link.getSubscription(topic);
      entry = { subscription: existing ?? this.link.subscribe(topic), holders: 0, owned: !existing };
      this.watched.set(topic, entry);
    }
    entry.holders += 1;
    return entry.subscription;
  }

  /** @internal A watch lets go of `presence:<userId>`; the last one unsubscribes what a watch made. */
  release(userId: string): void {
    const topic = `presence:${userId}`;
    const entry = this.watched.get(topic);
    if (!entry) return;
    entry.holders -= 1;
    if (entry.holders > 0) return;
    this.watched.delete(topic);
    if (entry.owned) entry.subscription.unsubscribe();
  }
}

export type PresenceWatchEvents = {
  /** A watched user's status changed (or became known). */
  change: [user: PresenceUser];
  /** A query to seed or refresh the statuses failed (updates keep coming), or a user's presence topic was refused. */
  error: [error: Error];
};

/** A live view of some users' presence. */
export class PresenceWatch extends Emitter<PresenceWatchEvents> {
  private readonly users = new Map<string, PresenceUser>();
  private readonly stops: Array<() => void> = [];
  private readonly toQuery = new Set<string>();
  private stopped = false;

  /** @internal Made by `gw.presence.watch`. */
  constructor(private readonly presence: Presence, userIds: readonly string[]) {
    super();
    for (const userId of new Set(userIds)) {
      const subscription = presence.hold(userId);
      this.stops.push(
        subscription.on('presence_update', (message) => this.apply(message.d)),
        // After every (re)subscribe: what changed while the connection was down is not replayed.
        subscription.on('subscribed', () => this.refresh(userId)),
        // Refused (e.g. the token's `topics` do not allow `presence:*`): no updates will come.
        subscription.on('error', (error) => this.emit('error', error)),
        () => presence.release(userId),
      );
      if (subscription.state === 'subscribed') this.refresh(userId);
    }
  }

  /** A watched user's presence, once known. */
  get(userId: string): PresenceUser | undefined {
    return this.users.get(userId);
  }

  /** Every watched user's presence known so far. */
  all(): PresenceUser[] {
    return [...this.users.values()];
  }

  /** Stops watching (unsubscribes the topics no other watch holds). */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    for (const stop of this.stops.splice(0)) stop();
    this.removeAllListeners();
  }

  /** Queries `userId` with the others of the same moment, in one request. */
  private refresh(userId: string): void {
    const first = this.toQuery.size === 0;
    this.toQuery.add(userId);
    if (!first) return;
    queueMicrotask(() => {
      const ids = [...this.toQuery];
      this.toQuery.clear();
      if (this.stopped || ids.length === 0) return;
      this.presence.query(ids).then(
        (users) => users.forEach((user) => this.apply(user)),
        (error: Error) => {
          if (!this.stopped) this.emit('error', error);
        },
      );
    });
  }

  /** Keeps the newer of what is known and `user` (updates and query answers may cross). */
  private apply(user: PresenceUser): void {
    if (this.stopped) return;
    const known = this.users.get(user.user_id);
    if (known && (known.since > user.since || (known.since === user.since && known.status === user.status))) {
      return;
    }
    const copy = { user_id: user.user_id, status: user.status, since: user.since };
    this.users.set(user.user_id, copy);
    this.emit('change', copy);
  }
}
