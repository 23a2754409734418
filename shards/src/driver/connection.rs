//! One connection's task: moves bytes between its socket and its session in the hub.
//!
//! Each wake-up it writes what the session hands out ([`LocalHub::poll_transmit`]) until
//! the socket would block, then reads what arrived and feeds it to the session. The
//! session decides everything else; this task only notices when to stop: the session is
//! flushed after a close (half-close, then a short linger for the client's close), the
//! session gave up on a close that did not get out, the peer went away, or the
//! connection was quiet long enough to park ([`super::parking`]): its task then ends
//! and a new one is started by [`resume`] when it is unparked.

use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use super::handshake::Upgraded;
use super::parking::{self, Quietness};
use super::LocalShard;
use crate::admission::ConnectionSlot;
use crate::authorizer::MembershipError;
use crate::hub::{ConnKey, MembershipWait};
use crate::session::{Now, Transmit};
use crate::stats::ShardStats;

/// How long to wait for the client's side of the close after ours is written.
pub(super) const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// The most bytes read (and dropped) while lingering for the client's close.
const LINGER_MAX_BYTES: usize = 64 * 1024;
/// Reads a connection makes in one wake-up before it steps aside for a turn of the
/// reactor ([`super::yield_to_reactor`]): a client that keeps its socket full (the
/// shard's read buffer is 64 KiB) would otherwise be read for as long as it writes,
/// and no other connection of the shard would be served meanwhile.
const READS_PER_TURN: usize = 4;

/// Why the connection's loop stopped.
enum Step {
    /// Closing, and everything queued has been written.
    Flushed,
    /// The peer went away, the socket failed, or the close took too long.
    Gone,
    /// [`READS_PER_TURN`] reads made: let the others run, then go on.
    Yield,
    /// Idle, and new or quiet for a whole round: give the task up ([`super::parking`]).
    Park,
}

/// A transmit being written, and how much of it is.
struct Writing {
    transmit: Transmit,
    written: usize,
}

struct Connection {
    shard: Rc<LocalShard>,
    stream: TcpStream,
    key: ConnKey,
    writing: Option<Writing>,
    /// The socket's read side has ended (EOF while closing).
    eof: bool,
    quietness: Quietness,
    /// The connection's place in the node's maximum, given back when the connection
    /// ends (kept by the parking lot while it is parked).
    slot: ConnectionSlot,
}

/// Registers an upgraded connection with the hub and returns its task. A plain
/// function on purpose: a task's future lives, at the size of its largest state, as
/// long as the connection, and what is taken apart here (the upgrade's results) then
/// stays out of it; only the [`Connection`] is kept.
pub(super) fn session_task(
    shard: Rc<LocalShard>,
    upgraded: Upgraded,
) -> impl std::future::Future<Output = ()> {
    let Upgraded {
        stream,
        encoding,
        slot,
        start,
    } = upgraded;
    let key = shard
        .hub
        .borrow_mut()
        .connect(encoding, start, Now::system());
    Connection::new(shard, stream, key, slot, Quietness::fresh()).run()
}

/// The task of a connection taken out of the parking lot: it writes what was queued
/// for it and reads what woke it, as any connection task does.
pub(super) fn resume(
    shard: Rc<LocalShard>,
    unparked: parking::Unparked,
) -> impl std::future::Future<Output = ()> {
    let parking::Unparked {
        key,
        stream,
        slot,
        quietness,
    } = unparked;
    Connection::new(shard, stream, key, slot, quietness).run()
}

impl Connection {
    fn new(
        shard: Rc<LocalShard>,
        stream: TcpStream,
        key: ConnKey,
        slot: ConnectionSlot,
        quietness: Quietness,
    ) -> Self {
        Connection {
            shard,
            stream,
            key,
            writing: None,
            eof: false,
            quietness,
            slot,
        }
    }

    /// Runs the connection until it ends, then removes it from the hub; or until it
    /// parks, leaving it in the hub.
    async fn run(mut self) {
        loop {
            match poll_fn(|cx| self.poll(cx)).await {
                Step::Park => match self.park() {
                    None => return,
                    // Not parked (no descriptor to spare): wait as before.
                    Some(this) => self = this,
                },
                // Boxed, as the linger: an idle connection's task keeps no timer.
                Step::Yield => Box::pin(super::yield_to_reactor()).await,
                Step::Flushed => {
                    // Boxed: the linger's timer and buffer are needed only while closing.
                    Box::pin(self.finish_close()).await;
                    break;
                }
                Step::Gone => break,
            }
        }
        self.shard.hub.borrow_mut().remove(self.key);
    }

    /// Hands the socket to the parking lot and tells the hub the connection is parked;
    /// the connection back when it could not be parked.
    fn park(self) -> Option<Connection> {
        let Ok(socket) = self.shard.parking.watch(self.key, &self.stream) else {
            return Some(Connection {
                // Asked again once quiet for a round.
                quietness: Quietness::resumed(),
                ..self
            });
        };
        let Connection {
            shard, key, slot, ..
        } = self;
        shard.parking.keep(key, socket, slot, &shard.stats);
        shard.hub.borrow_mut().park(key);
        None
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        let mut reads = 0;
        loop {
            if let Poll::Ready(end) = self.poll_write(cx) {
                return Poll::Ready(end);
            }
            let (aborted, closing, peer_closed) = match self.shard.hub.borrow().session(self.key) {
                Some(s) => (s.is_aborted(), s.is_closing(), s.peer_closed()),
                None => return Poll::Ready(Step::Gone),
            };
            if aborted {
                return Poll::Ready(Step::Gone);
            }
            // The session handed out nothing more: closing, that means flushed.
            if closing && self.writing.is_none() {
                return Poll::Ready(Step::Flushed);
            }
            if reads == READS_PER_TURN {
                return Poll::Ready(Step::Yield);
            }
            if self.eof || peer_closed {
                // Nothing more to read; wait for the socket to take what is queued.
                self.shard
                    .hub
                    .borrow_mut()
                    .register_waker(self.key, cx.waker());
                return Poll::Pending;
            }
            let shard = &self.shard;
            let mut buf = shard.read_buf.borrow_mut();
            match Pin::new(&mut self.stream).poll_read(cx, &mut buf[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    if !closing {
                        return Poll::Ready(Step::Gone);
                    }
                    self.eof = true;
                }
                Poll::Ready(Ok(n)) => {
                    reads += 1;
                    self.quietness.note_io();
                    let waits = {
                        let mut hub = shard.hub.borrow_mut();
                        hub.handle_input(self.key, &buf[..n], Now::system());
                        hub.take_membership_waits()
                    };
                    drop(buf);
                    // Spawned with no borrow held: glommio may run a new task at once.
                    for wait in waits {
                        glommio::spawn_local(await_membership(shard.clone(), wait)).detach();
                    }
                }
                Poll::Pending => {
                    drop(buf);
                    // Waiting for input with nothing to write: idle.
                    if self.writing.is_none()
                        && self
                            .shard
                            .parking
                            .should_park(&mut self.quietness, cx.waker())
                    {
                        return Poll::Ready(Step::Park);
                    }
                    self.shard
                        .hub
                        .borrow_mut()
                        .register_waker(self.key, cx.waker());
                    return Poll::Pending;
                }
            }
        }
    }

    /// Writes what the session hands out until the socket would block. `Ready` only
    /// when the socket failed.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        let shard = &self.shard;
        loop {
            if self.writing.is_none() {
                let transmit = shard
                    .hub
                    .borrow_mut()
                    .poll_transmit(self.key, Instant::now());
                self.writing = transmit.map(|transmit| Writing {
                    transmit,
                    written: 0,
                });
            }
            let Some(writing) = &mut self.writing else {
                return Poll::Pending;
            };
            let Some(encoding) = shard.hub.borrow().session(self.key).map(|s| s.encoding()) else {
                return Poll::Ready(Step::Gone);
            };
            let bytes = &writing.transmit.bytes(encoding)[writing.written..];
            match Pin::new(&mut self.stream).poll_write(cx, bytes) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Step::Gone),
                Poll::Ready(Ok(n)) => {
                    self.quietness.note_io();
                    ShardStats::add(&shard.stats.bytes_out, n as u64);
                    writing.written += n;
                    if n == bytes.len() {
                        self.writing = None;
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Our close frame is written: half-close, and give the client a moment to answer
    /// so that the kernel does not reset the connection under its last bytes.
    async fn finish_close(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write).await;
        let peer_closed = self
            .shard
            .hub
            .borrow()
            .session(self.key)
            .is_some_and(|s| s.peer_closed());
        if peer_closed || self.eof {
            return;
        }
        let linger = async {
            let mut sink = vec![0u8; 4096];
            let mut discarded = 0;
            // A client that keeps sending after our close is not closing: stop reading
            // it after a while rather than spend the shard's time on its flood.
            while discarded < LINGER_MAX_BYTES {
                match futures_lite::AsyncReadExt::read(&mut self.stream, &mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => discarded += n,
                }
            }
        };
        futures_lite::future::or(linger, glommio::timer::sleep(CLOSE_LINGER)).await;
    }
}

/// Waits for a membership check's answer, at most its timeout, and gives it to the hub.
async fn await_membership(shard: Rc<LocalShard>, wait: MembershipWait) {
    let MembershipWait {
        check_id,
        answer,
        timeout,
    } = wait;
    let answer = futures_lite::future::or(
        async {
            answer
                .recv_async()
                .await
                .unwrap_or(Err(MembershipError::Unavailable))
        },
        async {
            glommio::timer::sleep(timeout).await;
            Err(MembershipError::TimedOut(timeout))
        },
    )
    .await;
    shard
        .hub
        .borrow_mut()
        .finish_check(check_id, answer, Instant::now());
}
