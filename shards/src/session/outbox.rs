//! A connection's outbound queue: a priority lane and a normal lane.
//!
//! The priority lane holds complete WebSocket frames (control replies, voice
//! signaling, close) and is always written first and never shed. The normal lane
//! holds shared deliveries; events queued in the same shard tick are joined into one
//! frame when the connection next writes. Queued bytes are counted so that a reader
//! that cannot keep up is noticed (see `Session::enqueue`).

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use crate::bus::SharedDelivery;

/// A delivery as a shard holds it: one atomic reference per shard, then cheap
/// non-atomic clones per subscriber (no cross-core cache-line traffic per subscriber).
pub type LocalDelivery = Rc<Arc<SharedDelivery>>;

/// Gives an emptied lane's buffer back (see [`Outbox::release_idle_buffers`]).
fn release_if_empty<T>(lane: &mut VecDeque<T>) {
    if lane.is_empty() && lane.capacity() > 0 {
        *lane = VecDeque::new();
    }
}

#[derive(Default)]
pub struct Outbox {
    priority: VecDeque<Bytes>,
    normal: VecDeque<LocalDelivery>,
    /// Bytes queued in both lanes.
    queued_bytes: usize,
    /// Bytes queued in the priority lane alone.
    priority_bytes: usize,
}

impl Outbox {
    pub fn push_priority(&mut self, frame: Bytes) {
        self.queued_bytes += frame.len();
        self.priority_bytes += frame.len();
        self.priority.push_back(frame);
    }

    /// Queues an event whose encoded size is `len`.
    pub fn push_normal(&mut self, delivery: LocalDelivery, len: usize) {
        self.queued_bytes += len;
        self.normal.push_back(delivery);
    }

    pub fn pop_priority(&mut self) -> Option<Bytes> {
        let frame = self.priority.pop_front()?;
        self.queued_bytes -= frame.len();
        self.priority_bytes -= frame.len();
        Some(frame)
    }

    /// Takes the next normal event; `len` is its size as counted when queued.
    pub fn pop_normal(
        &mut self,
        len_of: impl Fn(&LocalDelivery) -> usize,
    ) -> Option<LocalDelivery> {
        let delivery = self.normal.pop_front()?;
        self.queued_bytes -= len_of(&delivery);
        Some(delivery)
    }

    /// The queued events, oldest first.
    pub fn normal_iter(&self) -> impl Iterator<Item = &LocalDelivery> {
        self.normal.iter()
    }

    /// Drops queued ephemeral events (typing), oldest first, until the queue holds at
    /// most `target` bytes. Returns how many were shed.
    pub fn shed_ephemeral(
        &mut self,
        target: usize,
        len_of: impl Fn(&LocalDelivery) -> usize,
    ) -> usize {
        let before = self.normal.len();
        let mut queued = self.queued_bytes;
        self.normal.retain(|delivery| {
            if queued > target && delivery.is_ephemeral() {
                queued -= len_of(delivery);
                false
            } else {
                true
            }
        });
        self.queued_bytes = queued;
        before - self.normal.len()
    }

    /// Drops every queued reply (the connection is not reading them).
    pub fn clear_priority(&mut self) {
        self.queued_bytes -= self.priority_bytes;
        self.priority_bytes = 0;
        self.priority = VecDeque::new();
    }

    /// Drops every normal event (the connection is closing).
    pub fn clear_normal(&mut self, len_of: impl Fn(&LocalDelivery) -> usize) {
        for delivery in self.normal.drain(..) {
            self.queued_bytes -= len_of(&delivery);
        }
    }

    pub fn has_priority(&self) -> bool {
        !self.priority.is_empty()
    }
    pub fn normal_len(&self) -> usize {
        self.normal.len()
    }
    pub fn is_empty(&self) -> bool {
        self.priority.is_empty() && self.normal.is_empty()
    }
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }
    pub fn priority_bytes(&self) -> usize {
        self.priority_bytes
    }

    /// Frees the buffers of empty lanes. Most connections are idle most of the time, and
    /// an idle one should not keep the capacity its last burst needed; called by the
    /// shard's sweeper, not after every write, so that a busy connection keeps its
    /// buffers instead of reallocating them for each batch.
    pub fn release_idle_buffers(&mut self) {
        release_if_empty(&mut self.priority);
        release_if_empty(&mut self.normal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_buffers_are_released_only_when_their_lane_is_empty() {
        let mut outbox = Outbox::default();
        outbox.push_priority(Bytes::from_static(b"one"));
        outbox.push_priority(Bytes::from_static(b"two"));
        outbox.pop_priority();
        outbox.release_idle_buffers();
        assert!(
            outbox.priority.capacity() > 0,
            "a lane still holding a frame"
        );
        outbox.pop_priority();
        assert!(outbox.priority.capacity() > 0, "writing keeps the buffer");
        outbox.release_idle_buffers();
        assert_eq!(outbox.priority.capacity(), 0);
        assert_eq!(outbox.queued_bytes(), 0);
    }
}
