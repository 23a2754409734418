//! What is queued for a connection and how it goes out: routed events enter the
//! normal lane within the outbound budget ([`Session::enqueue`]: shedding, then 4010),
//! and [`Session::poll_transmit`] hands the driver the priority lane first, then the
//! normal lane's events joined into frames up to `max_frame_size`.

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use coregate_protocol::{message_separator, Encoding};

use super::outbox::LocalDelivery;
use super::{CloseReason, Session, SessionCtx};
use crate::stats::ShardStats;
use crate::ws;

/// Bytes to write: a delivery's shared frame, or bytes made for this connection alone.
#[derive(Debug)]
pub enum Transmit {
    Shared(LocalDelivery),
    Owned(Bytes),
}

impl Transmit {
    pub fn bytes(&self, encoding: Encoding) -> &[u8] {
        match self {
            Transmit::Shared(delivery) => delivery.wire(encoding).framed(),
            Transmit::Owned(bytes) => bytes,
        }
    }
}

/// What [`Session::enqueue`] did with an event.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued behind other events: the connection already has a wake-up coming.
    Queued,
    /// Queued on an empty lane: the connection's writer must be woken (or, with
    /// `batch_delay`, woken at the next tick).
    First,
    /// Not queued: shed (ephemeral, over budget), or the connection is closing.
    Dropped,
    /// Not queued, and the connection is now closing (twice over budget).
    Closed,
}

impl Session {
    /// Queues a routed event on the normal lane, keeping the queue within the budget:
    /// over it, ephemeral events are shed first; a queue that stays over for the grace
    /// period is closed 4010 ([`Session::handle_timeout`]), and one that reaches twice
    /// the budget is closed at once, so memory stays bounded whatever the client does.
    ///
    /// A publication of a topic being recovered is held back, or dropped as a copy of
    /// what the recovery replayed (`recovery.rs`).
    pub fn enqueue(
        &mut self,
        delivery: &LocalDelivery,
        now: Instant,
        ctx: &mut SessionCtx,
    ) -> Enqueued {
        if self.is_closing() {
            return Enqueued::Dropped;
        }
        if let Some(close) = self.intercept_live(delivery, ctx.config.outbound_budget) {
            return match close {
                Some(reason) => {
                    self.close(reason, now, ctx);
                    Enqueued::Closed
                }
                None => Enqueued::Dropped,
            };
        }
        self.enqueue_now(delivery, now, ctx)
    }

    /// [`Session::enqueue`] past the recoveries.
    pub(super) fn enqueue_now(
        &mut self,
        delivery: &LocalDelivery,
        now: Instant,
        ctx: &mut SessionCtx,
    ) -> Enqueued {
        if self.is_closing() {
            return Enqueued::Dropped;
        }
        let budget = ctx.config.outbound_budget;
        let encoding = self.encoding;
        let len_of = |d: &LocalDelivery| d.wire(encoding).message().len();
        let len = len_of(delivery);
        if self.outbox.queued_bytes() + len > budget {
            if delivery.is_ephemeral() {
                ShardStats::add(&ctx.stats.shed_events, 1);
                return Enqueued::Dropped;
            }
            let shed = self
                .outbox
                .shed_ephemeral(budget.saturating_sub(len), len_of);
            ShardStats::add(&ctx.stats.shed_events, shed as u64);
        }
        let first = self.outbox.normal_len() == 0;
        self.outbox.push_normal(delivery.clone(), len);
        ShardStats::add(&ctx.stats.deliveries, 1);
        let queued = self.outbox.queued_bytes();
        ShardStats::raise(&ctx.stats.outbox_high_water_bytes, queued as u64);
        if queued > budget {
            self.occasional().over_budget_since.get_or_insert(now);
            if queued > budget.saturating_mul(2) {
                self.close(CloseReason::SlowConsumerOverflow, now, ctx);
                return Enqueued::Closed;
            }
        }
        if first {
            Enqueued::First
        } else {
            Enqueued::Queued
        }
    }

    /// The next bytes to write: every queued priority frame joined, else the normal
    /// lane's events joined into one frame up to `max_frame_size` (a lone event goes
    /// out as its shared frame, copied nowhere).
    pub fn poll_transmit(&mut self, now: Instant, ctx: &SessionCtx) -> Option<Transmit> {
        let transmit = self.next_transmit(now, ctx);
        if self.over_budget_since().is_some()
            && self.outbox.queued_bytes() <= ctx.config.outbound_budget
        {
            if let Some(occasional) = self.occasional.as_mut() {
                occasional.over_budget_since = None;
            }
            self.release_occasional_if_unused();
        }
        transmit
    }

    fn next_transmit(&mut self, now: Instant, ctx: &SessionCtx) -> Option<Transmit> {
        let stats = ctx.stats;
        if let Some(first) = self.outbox.pop_priority() {
            ShardStats::add(&stats.frames_out, 1);
            if !self.outbox.has_priority() {
                return Some(Transmit::Owned(first));
            }
            let mut joined = BytesMut::from(&first[..]);
            while let Some(frame) = self.outbox.pop_priority() {
                ShardStats::add(&stats.frames_out, 1);
                joined.extend_from_slice(&frame);
            }
            return Some(Transmit::Owned(joined.freeze()));
        }
        if self.is_closing() {
            return None;
        }
        let encoding = self.encoding;
        let len_of = |d: &LocalDelivery| d.wire(encoding).message().len();
        let first = self.outbox.pop_normal(len_of)?;
        ShardStats::add(&stats.frames_out, 1);
        // The batch's latency is its oldest event's: the others waited less.
        let received_at = first.received_at;
        let (count, payload_len) = self.batch_extent(&first, ctx.config.max_frame_size);
        note_events_written(stats, received_at, count, now);
        if count == 1 {
            return Some(Transmit::Shared(first));
        }
        // Sized once, header first, each event copied once.
        let separator = message_separator(encoding);
        let mut frame =
            BytesMut::with_capacity(ws::data_header_len(encoding, payload_len) + payload_len);
        ws::put_data_header(encoding, payload_len, &mut frame);
        frame.put_slice(first.wire(encoding).message());
        for _ in 1..count {
            let Some(next) = self.outbox.pop_normal(len_of) else {
                break;
            };
            frame.put_slice(separator);
            frame.put_slice(next.wire(encoding).message());
        }
        Some(Transmit::Owned(frame.freeze()))
    }

    /// How many events, `first` and those queued after it, fit in one frame of at most
    /// `max_frame_size` bytes, and that frame's payload length. `first` always fits: the
    /// bound limits batching, not message size.
    fn batch_extent(&self, first: &LocalDelivery, max_frame_size: usize) -> (u64, usize) {
        let encoding = self.encoding;
        let separator = message_separator(encoding).len();
        let mut count = 1;
        let mut len = first.wire(encoding).message().len();
        for next in self.outbox.normal_iter() {
            let grown = len + separator + next.wire(encoding).message().len();
            if grown > max_frame_size {
                break;
            }
            len = grown;
            count += 1;
        }
        (count, len)
    }
}

/// Counts `events` handed to a socket and their publish→write latency.
fn note_events_written(stats: &ShardStats, received_at: Instant, events: u64, now: Instant) {
    ShardStats::add(&stats.messages_out_event, events);
    stats
        .publish_to_write
        .observe(now.saturating_duration_since(received_at), events);
}
