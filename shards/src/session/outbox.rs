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

/// The two lanes and their byte counts; boxed, and there only while the connection has
/// had something to write since the sweeper last found it idle.
#[derive(Default)]
struct Lanes {
    priority: VecDeque<Bytes>,
    normal: VecDeque<LocalDelivery>,
    /// Bytes queued in both lanes.
    queued_bytes: usize,
    /// Bytes queued in the priority lane alone.
    priority_bytes: usize,
}

/// A connection's outbound queue; see the module docs. An idle connection's is one
/// empty pointer instead of 80 bytes in its session.
#[derive(Default)]
pub struct Outbox {
    lanes: Option<Box<Lanes>>,
}

impl Outbox {
    fn lanes(&mut self) -> &mut Lanes {
        self.lanes.get_or_insert_with(Box::default)
    }

    pub fn push_priority(&mut self, frame: Bytes) {
        let lanes = self.lanes();
        lanes.queued_bytes += frame.len();
        lanes.priority_bytes += frame.len();
        lanes.priority.push_back(frame);
    }

    /// Queues an event whose encoded size is `len`.
    pub fn push_normal(&mut self, delivery: LocalDelivery, len: usize) {
        let lanes = self.lanes();
        lanes.queued_bytes += len;
        lanes.normal.push_back(delivery);
    }

    pub fn pop_priority(&mut self) -> Option<Bytes> {
        let lanes = self.lanes.as_mut()?;
        let frame = lanes.priority.pop_front()?;
        lanes.queued_bytes -= frame.len();
        lanes.priority_bytes -= frame.len();
        Some(frame)
    }

    /// Takes the next normal event; `len` is its size as counted when queued.
    pub fn pop_normal(
        &mut self,
        len_of: impl Fn(&LocalDelivery) -> usize,
    ) -> Option<LocalDelivery> {
        let lanes = self.lanes.as_mut()?;
        let delivery = lanes.normal.pop_front()?;
        lanes.queued_bytes -= len_of(&delivery);
        Some(delivery)
    }

    /// The queued events, oldest first.
    pub fn normal_iter(&self) -> impl Iterator<Item = &LocalDelivery> {
        self.lanes.iter().flat_map(|lanes| lanes.normal.iter())
    }

    /// Drops queued ephemeral events (typing), oldest first, until the queue holds at
    /// most `target` bytes. Returns how many were shed.
    pub fn shed_ephemeral(
        &mut self,
        target: usize,
        len_of: impl Fn(&LocalDelivery) -> usize,
    ) -> usize {
        let Some(lanes) = self.lanes.as_mut() else {
            return 0;
        };
        let before = lanes.normal.len();
        let mut queued = lanes.queued_bytes;
        lanes.normal.retain(|delivery| {
            if queued > target && delivery.is_ephemeral() {
                queued -= len_of(delivery);
                false
            } else {
                true
            }
        });
        lanes.queued_bytes = queued;
        before - lanes.normal.len()
    }

    /// Drops every queued reply (the connection is not reading them).
    pub fn clear_priority(&mut self) {
        if let Some(lanes) = self.lanes.as_mut() {
            lanes.queued_bytes -= lanes.priority_bytes;
            lanes.priority_bytes = 0;
            lanes.priority = VecDeque::new();
        }
    }

    /// Drops every normal event (the connection is closing).
    pub fn clear_normal(&mut self, len_of: impl Fn(&LocalDelivery) -> usize) {
        if let Some(lanes) = self.lanes.as_mut() {
            for delivery in lanes.normal.drain(..) {
                lanes.queued_bytes -= len_of(&delivery);
            }
        }
    }

    pub fn has_priority(&self) -> bool {
        self.lanes.as_ref().is_some_and(|l| !l.priority.is_empty())
    }
    pub fn normal_len(&self) -> usize {
        self.lanes.as_ref().map_or(0, |l| l.normal.len())
    }
    pub fn is_empty(&self) -> bool {
        !self.has_priority() && self.normal_len() == 0
    }
    pub fn queued_bytes(&self) -> usize {
        self.lanes.as_ref().map_or(0, |l| l.queued_bytes)
    }
    pub fn priority_bytes(&self) -> usize {
        self.lanes.as_ref().map_or(0, |l| l.priority_bytes)
    }

    /// Frees the buffers of empty lanes, and the lanes themselves once both are empty.
    /// Most connections are idle most of the time, and an idle one should not keep the
    /// capacity its last burst needed; called by the shard's sweeper, not after every
    /// write, so that a busy connection keeps its buffers instead of reallocating them
    /// for each batch.
    pub fn release_idle_buffers(&mut self) {
        if self.is_empty() {
            self.lanes = None;
        } else if let Some(lanes) = self.lanes.as_mut() {
            release_if_empty(&mut lanes.priority);
            release_if_empty(&mut lanes.normal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn priority_capacity(outbox: &Outbox) -> usize {
        outbox.lanes.as_ref().map_or(0, |l| l.priority.capacity())
    }

    #[test]
    fn idle_buffers_are_released_only_when_their_lane_is_empty() {
        let mut outbox = Outbox::default();
        outbox.push_priority(Bytes::from_static(b"one"));
        outbox.push_priority(Bytes::from_static(b"two"));
        outbox.pop_priority();
        outbox.release_idle_buffers();
        assert!(
            priority_capacity(&outbox) > 0,
            "a lane still holding a frame"
        );
        outbox.pop_priority();
        assert!(priority_capacity(&outbox) > 0, "writing keeps the buffer");
        outbox.release_idle_buffers();
        assert!(outbox.lanes.is_none(), "both lanes empty: nothing is kept");
        assert_eq!(outbox.queued_bytes(), 0);
        outbox.push_priority(Bytes::from_static(b"three"));
        assert_eq!(outbox.queued_bytes(), 5, "lanes come back when needed");
    }
}
