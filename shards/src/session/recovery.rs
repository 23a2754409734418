//! History on one connection (PROTOCOL.md §4–§6): the positions a `subscribe` reports,
//! the recovery of what a client missed (`since`), and the `history` op.
//!
//! A topic with history is subscribed at once (its live publications flow to the
//! connection from then on), and its stream is read by the node after that, so the
//! read and the live flow overlap and together miss nothing. Until the read's answer
//! comes, the topic's live publications are held back here, in arrival order. With the
//! answer the connection gets `subscribed` (positions, `recovered`), then the replayed
//! publications, then the held-back live ones that come after the read's position; and
//! until the first live publication past that position arrives, later copies of what
//! the read already held are dropped. Offsets within one epoch decide what is a copy.

use coregate_protocol::{
    ErrorCode, HistoryPublication, ServerMessage, StreamPosition, Topic, DEFAULT_HISTORY_LIMIT,
};
use std::collections::BTreeMap;
use std::time::Instant;

use super::outbox::LocalDelivery;
use super::{CloseReason, Session, SessionCtx, SessionEvent};
use crate::history::{HistoryAnswer, ReadFor, TopicHistory};

/// `history` queries one connection may have waiting for the node; more are refused
/// `limit`. A client opening a few channels at once fits.
pub const MAX_HISTORY_QUERIES_IN_FLIGHT: usize = 4;

/// A `subscribe` whose topics with history wait for their streams' answer.
#[derive(Debug)]
pub(super) struct PendingRecovery {
    ticket: u64,
    r#ref: Option<u64>,
    /// Every granted topic, in request order: the reply's `topics`.
    granted: Vec<String>,
    /// The granted topics asked for with `since` that have no history: `recovered:
    /// false`, no position.
    since_without_history: Vec<String>,
    /// The topics read, and the `since` of those asked for with one.
    reads: Vec<(Topic, Option<StreamPosition>)>,
    /// Live publications of the topics read that arrived before the answer.
    held_back: Vec<LocalDelivery>,
    held_back_bytes: usize,
}

/// After a recovery: the position its read stood at, for dropping the live copies of
/// what it replayed. At most one per subscribed topic: a newer read replaces it, and an
/// unsubscribe ([`Session::forget_replay`]) or the first live publication past it ends
/// it, so what a connection keeps of them is bounded by its subscriptions.
#[derive(Debug)]
pub(super) struct ReplayFloor {
    topic: Topic,
    position: StreamPosition,
}

/// A `history` query waiting for the node.
#[derive(Debug)]
pub(super) struct PendingQuery {
    ticket: u64,
    r#ref: Option<u64>,
}

/// Where a live publication stands against the position a read stood at.
#[derive(Debug, PartialEq, Eq)]
enum Placement {
    /// The read held it (an offset at or before the position, same epoch): a copy.
    Held,
    /// A later offset of the same epoch, or another epoch (the stream started again).
    After,
    /// No position at all: a plain `PUBLISH`, which the stream does not hold. Never a
    /// copy, and it says nothing about the stream's progress.
    Unpositioned,
}

fn placement(delivery: &LocalDelivery, position: &StreamPosition) -> Placement {
    let publication = delivery.publication();
    match (publication.offset(), publication.epoch()) {
        (Some(offset), Some(epoch)) if **epoch != *position.epoch || offset > position.offset => {
            Placement::After
        }
        (Some(_), Some(_)) => Placement::Held,
        _ => Placement::Unpositioned,
    }
}

impl Session {
    /// The connection's next ticket for a read of the node's streams.
    fn next_ticket(&mut self) -> u64 {
        let occasional = self.occasional();
        occasional.next_ticket += 1;
        occasional.next_ticket
    }

    /// `subscribe`'s reply for the `granted` topics: at once when none has history;
    /// otherwise once the node has read their streams ([`Session::answer_history`]).
    pub(super) fn reply_subscribed(
        &mut self,
        granted: Vec<String>,
        mut since: Option<BTreeMap<String, StreamPosition>>,
        r#ref: Option<u64>,
        ctx: &mut SessionCtx,
    ) {
        let mut reads = Vec::new();
        let mut since_without_history = Vec::new();
        for raw in &granted {
            let asked = since.as_mut().and_then(|since| since.remove(raw));
            let topic = Topic::parse(raw).ok();
            match topic.filter(|t| ctx.config.history.retention(t).is_some()) {
                Some(topic) => reads.push((topic, asked)),
                None if asked.is_some() => since_without_history.push(raw.clone()),
                None => {}
            }
        }
        if reads.is_empty() {
            let recovered = since.map(|_| {
                since_without_history
                    .into_iter()
                    .map(|t| (t, false))
                    .collect()
            });
            let reply = ServerMessage::Subscribed {
                topics: granted,
                positions: None,
                recovered,
            };
            self.reply(&reply, r#ref, ctx);
            return;
        }
        let ticket = self.next_ticket();
        let requests = reads
            .iter()
            .map(|(topic, since)| {
                let read = ReadFor::Subscribe {
                    since: since.clone(),
                };
                (topic.clone(), read)
            })
            .collect();
        self.occasional().recoveries.push(PendingRecovery {
            ticket,
            r#ref,
            granted,
            since_without_history,
            reads,
            held_back: Vec::new(),
            held_back_bytes: 0,
        });
        ctx.events.push(SessionEvent::ReadHistory {
            ticket,
            reads: requests,
        });
    }

    /// `history {topic, limit?, since?}`: authorized like `subscribe` (under a
    /// membership authorizer, a gated topic only once subscribed), then read by the node.
    pub(super) fn history(
        &mut self,
        raw: &str,
        limit: Option<u64>,
        since: Option<StreamPosition>,
        r#ref: Option<u64>,
        ctx: &mut SessionCtx,
    ) {
        let Ok(topic) = Topic::parse(raw) else {
            return self.reply_topic_error(
                ErrorCode::InvalidTopic,
                "not a valid topic",
                raw,
                r#ref,
                ctx,
            );
        };
        if !self.may_read(&topic, ctx.membership.is_some()) {
            return self.reply_topic_error(
                ErrorCode::Forbidden,
                "not allowed to read this topic's history (subscribe to it first)",
                raw,
                r#ref,
                ctx,
            );
        }
        let Some(retention) = ctx.config.history.retention(&topic) else {
            return self.reply_topic_error(
                ErrorCode::NotFound,
                "no history is kept for this topic",
                raw,
                r#ref,
                ctx,
            );
        };
        let size = retention.size as u64;
        let limit = match limit {
            None => DEFAULT_HISTORY_LIMIT.min(size),
            Some(limit) if limit <= size => limit,
            Some(_) => {
                let message = format!("this topic's history holds at most {size} publications");
                return self.reply_topic_error(ErrorCode::Limit, &message, raw, r#ref, ctx);
            }
        };
        let waiting = self
            .occasional
            .as_ref()
            .map_or(0, |o| o.history_queries.len());
        if waiting >= MAX_HISTORY_QUERIES_IN_FLIGHT {
            let message =
                format!("at most {MAX_HISTORY_QUERIES_IN_FLIGHT} history queries at once");
            return self.reply_topic_error(ErrorCode::Limit, &message, raw, r#ref, ctx);
        }
        let ticket = self.next_ticket();
        self.occasional()
            .history_queries
            .push(PendingQuery { ticket, r#ref });
        let read = ReadFor::History {
            since,
            limit: limit as usize,
        };
        ctx.events.push(SessionEvent::ReadHistory {
            ticket,
            reads: vec![(topic, read)],
        });
    }

    /// Whether this connection may read `topic`'s history: what `subscribe` would
    /// grant without asking a membership store.
    fn may_read(&self, topic: &Topic, membership: bool) -> bool {
        matches!(
            self.subscribe_rule(topic, membership),
            super::subscribe::Rule::Allowed
        )
    }

    fn reply_topic_error(
        &mut self,
        code: ErrorCode,
        message: &str,
        topic: &str,
        r#ref: Option<u64>,
        ctx: &mut SessionCtx,
    ) {
        let error = ServerMessage::Error {
            code,
            message: message.to_owned(),
            topics: Some(vec![topic.to_owned()]),
            retry_after_ms: None,
        };
        self.reply(&error, r#ref, ctx);
    }

    /// A live publication meets the recoveries first: held back while its topic is
    /// being read, dropped if a finished recovery already replayed it. `Some` when it
    /// must not be queued now (with the close to make, if holding it overflowed).
    pub(super) fn intercept_live(
        &mut self,
        delivery: &LocalDelivery,
        budget: usize,
    ) -> Option<Option<CloseReason>> {
        let occasional = self.occasional.as_mut()?;
        let topic = delivery.topic();
        if let Some(pending) = occasional
            .recoveries
            .iter_mut()
            .find(|r| r.reads.iter().any(|(t, _)| t == topic))
        {
            let len = delivery.wire(self.encoding).message().len();
            pending.held_back_bytes += len;
            pending.held_back.push(delivery.clone());
            // Held back counts like queued, over every pending read together: a
            // connection's output stays bounded.
            let held_back: usize = occasional
                .recoveries
                .iter()
                .map(|r| r.held_back_bytes)
                .sum();
            let overflow = held_back + self.outbox.queued_bytes() > budget * 2;
            return Some(overflow.then_some(CloseReason::SlowConsumerOverflow));
        }
        let at = occasional.floors.iter().position(|f| f.topic == *topic)?;
        match placement(delivery, &occasional.floors[at].position) {
            Placement::Held => Some(None),
            Placement::Unpositioned => None,
            Placement::After => {
                // Live has caught up with the replay: no copies from here on.
                occasional.floors.swap_remove(at);
                self.release_occasional_if_unused();
                None
            }
        }
    }

    /// The connection let go of `topic`: what a read of it left behind goes. A read of
    /// it still pending is left to finish (its reply is owed), and delivers nothing of
    /// a topic no longer held.
    pub(super) fn forget_replay(&mut self, topic: &Topic) {
        if let Some(occasional) = self.occasional.as_mut() {
            occasional.floors.retain(|f| f.topic != *topic);
        }
        self.release_occasional_if_unused();
    }

    /// The node's answer to this connection's read `ticket`: a recovery's `subscribed`
    /// and replay, or a `history` reply.
    pub fn answer_history(
        &mut self,
        ticket: u64,
        answer: HistoryAnswer,
        now: Instant,
        ctx: &mut SessionCtx,
    ) {
        let Some(occasional) = self.occasional.as_mut() else {
            return;
        };
        if let Some(at) = occasional
            .recoveries
            .iter()
            .position(|r| r.ticket == ticket)
        {
            let pending = occasional.recoveries.remove(at);
            if !self.is_closing() {
                self.finish_recovery(pending, answer, now, ctx);
            }
        } else if let Some(at) = occasional
            .history_queries
            .iter()
            .position(|q| q.ticket == ticket)
        {
            let query = occasional.history_queries.remove(at);
            if !self.is_closing() {
                self.reply_history(query.r#ref, answer, ctx);
            }
        }
        self.release_occasional_if_unused();
        self.enforce_control_budget(now, ctx);
    }

    fn finish_recovery(
        &mut self,
        pending: PendingRecovery,
        answer: HistoryAnswer,
        now: Instant,
        ctx: &mut SessionCtx,
    ) {
        let mut read: Vec<TopicHistory> = answer.unwrap_or_default();
        self.keep_replays_within_budget(&mut read, &pending, ctx);
        let mut positions = BTreeMap::new();
        let mut recovered: BTreeMap<String, bool> = pending
            .since_without_history
            .iter()
            .map(|t| (t.clone(), false))
            .collect();
        for (topic, since) in &pending.reads {
            let result = read.iter().find(|r| r.topic == *topic);
            if let Some(result) = result {
                positions.insert(topic.as_str().to_owned(), result.position.clone());
            }
            if since.is_some() {
                let whole = result.is_some_and(|r| r.complete);
                recovered.insert(topic.as_str().to_owned(), whole);
            }
        }
        let asked_since = !recovered.is_empty();
        let reply = ServerMessage::Subscribed {
            topics: pending.granted,
            positions: (!positions.is_empty()).then_some(positions),
            recovered: asked_since.then_some(recovered),
        };
        self.reply(&reply, pending.r#ref, ctx);
        let mut floors = Vec::new();
        for result in read {
            if !self.subscriptions.contains(&result.topic) {
                continue; // unsubscribed while it was read
            }
            let wanted = pending
                .reads
                .iter()
                .any(|(t, since)| *t == result.topic && since.is_some());
            if wanted && result.complete {
                for publication in &result.publications {
                    // The same rule as live routing: never back to the excluded user.
                    if self.user_id().is_some_and(|u| publication.excludes(u)) {
                        continue;
                    }
                    let delivery: LocalDelivery = std::rc::Rc::new(publication.clone());
                    self.enqueue_now(&delivery, now, ctx);
                }
            }
            floors.push(ReplayFloor {
                topic: result.topic,
                position: result.position,
            });
        }
        for delivery in pending.held_back {
            if !self.subscriptions.contains(delivery.topic()) {
                continue; // unsubscribed while it was read: `unsubscribed` was the last word
            }
            let floor = floors.iter().find(|f| f.topic == *delivery.topic());
            if floor.is_none_or(|f| placement(&delivery, &f.position) != Placement::Held) {
                self.enqueue_now(&delivery, now, ctx);
            }
        }
        if !floors.is_empty() {
            let kept = &mut self.occasional().floors;
            // One floor per topic: the newest read's replaces an older one.
            kept.retain(|old| floors.iter().all(|new| new.topic != old.topic));
            kept.extend(floors);
        }
    }

    /// A replay goes out whole or not at all, and only while what the connection has
    /// queued stays within twice its outbound budget (the point where a slow consumer is
    /// closed at once; over the budget itself the client has `--slow-client-grace` to
    /// read it down, as for any burst): a larger replay would close the connection 4010
    /// in the middle of it, and the client, resubscribing with the same `since`, would be
    /// closed again, for ever. So the topics whose replay no longer fits (in request
    /// order) are answered `recovered: false` with the current position: the client
    /// reloads from its backend once and continues from there. What a 4010 dropped (more
    /// than the budget) is still recovered, up to twice the budget.
    fn keep_replays_within_budget(
        &self,
        read: &mut [TopicHistory],
        pending: &PendingRecovery,
        ctx: &SessionCtx,
    ) {
        let encoding = self.encoding;
        let mut room = ctx
            .config
            .outbound_budget
            .saturating_mul(2)
            .saturating_sub(self.outbox.queued_bytes());
        for result in read.iter_mut() {
            let replayed = pending
                .reads
                .iter()
                .any(|(t, since)| *t == result.topic && since.is_some());
            if !replayed || !result.complete {
                continue;
            }
            let size: usize = result
                .publications
                .iter()
                .map(|d| d.wire(encoding).message().len())
                .sum();
            if size > room {
                result.complete = false;
                result.publications.clear();
            } else {
                room -= size;
            }
        }
    }

    fn reply_history(&mut self, r#ref: Option<u64>, answer: HistoryAnswer, ctx: &mut SessionCtx) {
        let Some(result) = answer.ok().and_then(|mut read| read.pop()) else {
            return self.reply_error(
                ErrorCode::NotReady,
                "history cannot be read now (Redis is unreachable); try again",
                r#ref,
                ctx,
            );
        };
        let publications = result
            .publications
            .iter()
            .filter_map(|delivery| {
                let publication = delivery.publication();
                Some(HistoryPublication {
                    op: publication.op().to_owned(),
                    d: publication
                        .d_json()
                        .and_then(|d| serde_json::from_slice(&d).ok()),
                    offset: publication.offset()?,
                })
            })
            .collect();
        let reply = ServerMessage::History {
            topic: result.topic.as_str().to_owned(),
            publications,
            offset: result.position.offset,
            epoch: result.position.epoch,
        };
        let topic = result.topic.as_str().to_owned();
        self.reply_answer(&reply, r#ref, Some(vec![topic]), ctx);
    }
}
