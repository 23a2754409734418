//! Idle connections without a task: their sockets wait in one epoll set per shard.
//!
//! glommio's model is one task per connection. An idle connection would keep that task
//! (its header and the [`Connection`](super::connection) future, ~464 B) and the
//! stream's io_uring readiness sources (~500 B) for as long as it is open, which is
//! most of a gateway's connections most of the time. So a connection that had no I/O
//! for a whole [`PARK_ROUND`] gives its task up: its socket is taken out of glommio's
//! stream and joins the shard's epoll set (one-shot), and the hub keeps its session,
//! marked parked. It is unparked, with a new stream and task, as soon as its socket is
//! readable (input, or the peer left) or the hub queues something for it (an event, a
//! reply, a close from the sweeper or the drain: the hub then sends its key here
//! instead of waking a task, [`LocalHub::park`](crate::hub::LocalHub::park)). Nothing
//! about the session changes.
//!
//! glommio offers no way to await an arbitrary descriptor's readiness, so a watcher
//! thread per shard blocks in `epoll_wait` and hands the keys of readable sockets to
//! the shard over a channel; it is asleep unless a parked connection becomes readable.
//! The channel is bounded by the parked connections: a registration is one-shot (one
//! report per park) and the hub clears its parked mark when it sends (one more), so at
//! most two keys are queued per parked connection.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;
use std::task::Waker;
use std::thread::JoinHandle;
use std::time::Duration;

use glommio::net::TcpStream;
use rustix::event::{epoll, eventfd, EventfdFlags};

use crate::admission::ConnectionSlot;
use crate::hub::ConnKey;
use crate::stats::ShardStats;

/// A connection with no I/O for one whole round (after the round it was last active
/// in) is parked: between one and two rounds after its last byte. Long enough that a
/// connection fed every few hundred milliseconds keeps its task (unparking costs a new
/// stream and task, and a few system calls); short next to a heartbeat interval, so
/// that a connection unparked by its ping is parked again within 1–2 s.
pub(super) const PARK_ROUND: Duration = Duration::from_secs(1);
/// A connection unparked after this many round ends or more parks again as soon as it
/// has done what woke it (see [`Quietness::unparked_after`]).
const LONG_PARK_ROUNDS: u64 = 3;
/// Readiness reports taken from the kernel per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 256;
/// The watcher's own key for the stop signal; no connection's key has both halves
/// at their maximum (the slab would need 4 billion connections).
const STOP_KEY: u64 = u64::MAX;

/// A parked connection: its socket, out of glommio, and its place in the node.
struct Parked {
    socket: OwnedFd,
    /// Its key's generation (the index is its place in [`ParkingLot::parked`]).
    generation: u32,
    /// The shard's round when it parked.
    round: u64,
    slot: ConnectionSlot,
}

/// A connection taken out of the lot, to be given a task again.
pub(super) struct Unparked {
    pub(super) key: ConnKey,
    pub(super) stream: TcpStream,
    pub(super) slot: ConnectionSlot,
    pub(super) quietness: Quietness,
}

/// The shard's parked connections and the rounds that decide when to park.
pub(super) struct ParkingLot {
    epoll: Arc<OwnedFd>,
    /// An eventfd in the epoll set: written once to stop the watcher.
    stop: OwnedFd,
    watcher: RefCell<Option<JoinHandle<()>>>,
    /// By the hub's slab index, which is dense: 24 bytes a place, where a hash map
    /// took 32 a bucket (the key besides) in a table at most 7/8 full.
    parked: RefCell<Vec<Option<Parked>>>,
    /// Keys to unpark, from the watcher (readable) and from the hub (output queued).
    to_unpark: flume::Sender<u64>,
    unpark_requests: flume::Receiver<u64>,
    /// Counts the rounds since the shard started.
    round: Cell<u64>,
    /// The idle connections to wake when the round ends, so that each can look at
    /// whether it was quiet through it.
    idle_this_round: RefCell<Vec<Waker>>,
}

/// Whether a connection is quiet enough to park, from what it saw of the rounds; the
/// connection's half of [`ParkingLot`]'s rounds.
#[derive(Debug)]
pub(super) struct Quietness {
    /// A new connection, greeted and not yet waited on: it parks at its first wait.
    /// Connections arrive in bursts (a deploy, a reconnect storm), and one that waits
    /// parked for its first message leaves its task's memory to the next one, instead
    /// of holding it until a round ends, by when a burst's tasks have all been
    /// allocated at once (and the allocator keeps their pages).
    fresh: bool,
    /// Unparked after a long park: it parks at its first wait after it read or wrote
    /// (not at a wait before any: glommio's first read of a new stream waits for the
    /// input that woke it).
    park_after_io: bool,
    /// The connection read or wrote since it last looked at the round.
    active: bool,
    /// The round it last looked at; `u64::MAX` before its first look.
    round_seen: u64,
    /// Round ends it saw in a row with no I/O in between.
    quiet_rounds: u8,
}

impl Quietness {
    /// A connection just upgraded: it parks as soon as it waits.
    pub(super) fn fresh() -> Quietness {
        Quietness {
            fresh: true,
            ..Quietness::resumed()
        }
    }

    /// A connection unparked after `rounds_parked` round ends. One parked that long
    /// (a client that only sends its heartbeat, a subscriber of a rare event) is most
    /// likely idle for as long again: it parks as soon as it has done what woke it.
    /// Waiting a round or two first kept the tasks of the ~7% of idle connections
    /// unparked by their latest ping (~70 bytes a connection, averaged, at 5,000).
    /// One parked briefly is being fed: it parks again once quiet for a round.
    pub(super) fn unparked_after(rounds_parked: u64) -> Quietness {
        if rounds_parked >= LONG_PARK_ROUNDS {
            Quietness {
                park_after_io: true,
                active: false,
                ..Quietness::resumed()
            }
        } else {
            Quietness::resumed()
        }
    }

    /// A connection unparked for a reason (input, or output queued for it): it parks
    /// again once quiet for a round.
    pub(super) fn resumed() -> Quietness {
        Quietness {
            fresh: false,
            park_after_io: false,
            active: true,
            round_seen: u64::MAX,
            quiet_rounds: 0,
        }
    }

    /// The connection read or wrote something.
    pub(super) fn note_io(&mut self) {
        self.active = true;
    }

    /// Called when the connection is about to wait for input with nothing to write,
    /// in round `round` of the shard's: whether it parks, or waits (listed for the
    /// round's end or not). Pure, so that the rule is tested with rounds the test
    /// counts; [`ParkingLot::should_park`] gives it the shard's.
    fn look(&mut self, round: u64) -> Look {
        if std::mem::take(&mut self.fresh) || (self.park_after_io && self.active) {
            return Look::Park;
        }
        if self.round_seen == round {
            return Look::Wait;
        }
        if self.round_seen != u64::MAX {
            // A round ended since the last look: was there I/O in between?
            self.quiet_rounds = if self.active {
                0
            } else {
                self.quiet_rounds.saturating_add(1)
            };
        }
        // The first look of a round counts the I/O before it as that round's: the
        // next round end then sees only what came after.
        self.active = false;
        self.round_seen = round;
        // Quiet since a look in the round before last: a whole round without I/O.
        if self.quiet_rounds >= 2 {
            return Look::Park;
        }
        Look::WaitForRoundEnd
    }
}

/// What a connection about to wait does, from [`Quietness::look`].
#[derive(Debug, PartialEq, Eq)]
enum Look {
    Park,
    /// Wait, and be woken at the round's end to look again.
    WaitForRoundEnd,
    /// Wait; already to be woken at the round's end.
    Wait,
}

impl ParkingLot {
    /// The shard's epoll set and its watcher thread.
    pub(super) fn new(shard_id: usize) -> io::Result<ParkingLot> {
        let epoll = Arc::new(epoll::create(epoll::CreateFlags::CLOEXEC)?);
        let stop = eventfd(0, EventfdFlags::CLOEXEC)?;
        epoll::add(
            &*epoll,
            &stop,
            epoll::EventData::new_u64(STOP_KEY),
            epoll::EventFlags::IN,
        )?;
        let (to_unpark, unpark_requests) = flume::unbounded();
        let watcher = {
            let (epoll, to_unpark) = (epoll.clone(), to_unpark.clone());
            std::thread::Builder::new()
                .name(format!("shard-{shard_id}-parked"))
                .spawn(move || report_readable(&epoll, &to_unpark))?
        };
        Ok(ParkingLot {
            epoll,
            stop,
            watcher: RefCell::new(Some(watcher)),
            parked: RefCell::new(Vec::new()),
            to_unpark,
            unpark_requests,
            round: Cell::new(0),
            idle_this_round: RefCell::new(Vec::new()),
        })
    }

    /// Puts `key`'s socket in the epoll set, the first half of parking it: returns a
    /// duplicate of its descriptor for [`ParkingLot::keep`]. glommio's stream cannot
    /// give its own up, so the caller drops the stream, which closes the original and
    /// cancels its pending poll. Fails when no descriptor is to spare for the moment:
    /// the connection then goes on with its task.
    pub(super) fn watch(&self, key: ConnKey, stream: &TcpStream) -> io::Result<OwnedFd> {
        // SAFETY: the stream owns the descriptor and outlives this borrow.
        let borrowed = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        let socket = borrowed.try_clone_to_owned()?;
        // One-shot: one report per park. Input that came before this call is
        // reported at once, so none is missed between the last read and now.
        let interest =
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT;
        epoll::add(
            &*self.epoll,
            &socket,
            epoll::EventData::new_u64(key.to_raw()),
            interest,
        )?;
        Ok(socket)
    }

    /// Where the hub sends the keys of parked connections to resume.
    pub(super) fn unpark_requests(&self) -> flume::Sender<u64> {
        self.to_unpark.clone()
    }

    /// Keeps a parked connection's socket (from [`ParkingLot::watch`]) and place in
    /// the node; the caller tells the hub ([`LocalHub::park`](crate::hub::LocalHub::park)).
    pub(super) fn keep(
        &self,
        key: ConnKey,
        socket: OwnedFd,
        slot: ConnectionSlot,
        stats: &ShardStats,
    ) {
        let mut parked = self.parked.borrow_mut();
        if parked.len() <= key.index() {
            parked.resize_with(key.index() + 1, || None);
        }
        parked[key.index()] = Some(Parked {
            socket,
            generation: key.generation(),
            round: self.round.get(),
            slot,
        });
        ShardStats::add(&stats.parked_connections, 1);
    }

    /// Takes `key` out of the lot, with a new glommio stream for its socket and how
    /// quiet it counts as; `None` when it is not parked (already unparked by an earlier
    /// request).
    fn unpark(&self, key: ConnKey, stats: &ShardStats) -> Option<Unparked> {
        let Parked {
            socket,
            slot,
            round,
            ..
        } = {
            let mut parked = self.parked.borrow_mut();
            let place = parked.get_mut(key.index())?;
            if place.as_ref()?.generation != key.generation() {
                return None;
            }
            place.take()?
        };
        ShardStats::sub(&stats.parked_connections, 1);
        // Out of the set before glommio polls it; a report already queued for it
        // finds it unparked and is ignored.
        let _ = epoll::delete(&*self.epoll, &socket);
        // SAFETY: `into_raw_fd` hands over the only owner of a connected TCP socket.
        let stream = unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) };
        Some(Unparked {
            key,
            stream,
            slot,
            quietness: Quietness::unparked_after(self.round.get().saturating_sub(round)),
        })
    }

    /// The next connection to unpark, with its stream; waits for one. `None` only if
    /// the channel closed, which it does not while the lot holds a sender.
    pub(super) async fn next_unparked(&self, stats: &ShardStats) -> Option<Unparked> {
        while let Ok(raw) = self.unpark_requests.recv_async().await {
            if let Some(unparked) = self.unpark(ConnKey::from_raw(raw), stats) {
                return Some(unparked);
            }
        }
        None
    }

    /// Whether a connection about to wait for input, with nothing to write, parks now
    /// ([`Quietness::look`] in this round). If it does not, it is woken at the round's
    /// end (once per round) to look again.
    pub(super) fn should_park(&self, quietness: &mut Quietness, waker: &Waker) -> bool {
        match quietness.look(self.round.get()) {
            Look::Park => true,
            Look::WaitForRoundEnd => {
                self.idle_this_round.borrow_mut().push(waker.clone());
                false
            }
            Look::Wait => false,
        }
    }

    /// Ends a round: every connection that waited through it looks at whether to park.
    pub(super) fn end_round(&self) {
        self.round.set(self.round.get() + 1);
        let idle = std::mem::take(&mut *self.idle_this_round.borrow_mut());
        for waker in idle {
            waker.wake();
        }
    }

    /// Stops the watcher and closes the sockets still parked: the shard has ended.
    pub(super) fn shut_down(&self) {
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
        if let Some(watcher) = self.watcher.borrow_mut().take() {
            let _ = watcher.join();
        }
        self.parked.borrow_mut().clear();
    }
}

/// The watcher thread: reports readable parked sockets to the shard until stopped.
fn report_readable(epoll: &OwnedFd, to_unpark: &flume::Sender<u64>) {
    let mut events = Vec::with_capacity(EVENTS_PER_WAIT);
    loop {
        events.clear();
        match epoll::wait(epoll, rustix::buffer::spare_capacity(&mut events), None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "the parked connections' epoll_wait failed");
                return;
            }
        }
        for event in &events {
            let key = event.data.u64();
            if key == STOP_KEY || to_unpark.send(key).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Look, Quietness};

    #[test]
    fn a_fresh_connection_parks_at_its_first_wait() {
        let mut quietness = Quietness::fresh();
        assert_eq!(quietness.look(7), Look::Park);
    }

    #[test]
    fn a_connection_unparked_after_a_long_park_parks_at_its_first_wait_after_io() {
        let mut long = Quietness::unparked_after(super::LONG_PARK_ROUNDS);
        // glommio's first read of the new stream waits for the input that woke it.
        assert_eq!(long.look(40), Look::WaitForRoundEnd);
        long.note_io();
        assert_eq!(long.look(40), Look::Park);
        let mut brief = Quietness::unparked_after(super::LONG_PARK_ROUNDS - 1);
        assert_eq!(brief.look(40), Look::WaitForRoundEnd);
        brief.note_io();
        assert_eq!(brief.look(40), Look::Wait);
    }

    #[test]
    fn a_resumed_connection_parks_after_a_whole_round_without_io() {
        let mut quietness = Quietness::resumed();
        // Its I/O in round 0, then waits: listed once for the round's end.
        assert_eq!(quietness.look(0), Look::WaitForRoundEnd);
        assert_eq!(quietness.look(0), Look::Wait);
        // Round 0 ended with no I/O since its look: quiet for part of a round only.
        assert_eq!(quietness.look(1), Look::WaitForRoundEnd);
        // Round 1 passed whole without I/O.
        assert_eq!(quietness.look(2), Look::Park);
    }

    #[test]
    fn io_in_a_round_starts_the_count_again() {
        let mut quietness = Quietness::resumed();
        assert_eq!(quietness.look(0), Look::WaitForRoundEnd);
        assert_eq!(quietness.look(1), Look::WaitForRoundEnd);
        quietness.note_io();
        assert_eq!(quietness.look(1), Look::Wait, "looked at round 1 already");
        // The I/O fell in round 1: round 2 must pass whole before it parks.
        assert_eq!(quietness.look(2), Look::WaitForRoundEnd);
        assert_eq!(quietness.look(3), Look::WaitForRoundEnd);
        assert_eq!(quietness.look(4), Look::Park);
    }

    #[test]
    fn a_connection_busy_through_rounds_it_did_not_look_at_does_not_park() {
        let mut quietness = Quietness::resumed();
        assert_eq!(quietness.look(0), Look::WaitForRoundEnd);
        // Writing (not waiting) through rounds 1 to 4: no looks, only I/O.
        quietness.note_io();
        assert_eq!(quietness.look(5), Look::WaitForRoundEnd);
        assert_eq!(quietness.look(6), Look::WaitForRoundEnd);
        assert_eq!(quietness.look(7), Look::Park);
    }
}
