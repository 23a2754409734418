//! One client connection: its shared state (`LocalConn`, reachable from the shard's
//! tables) and the task that drives its socket (`ConnDriver`).
//!
//! The driver is a single task per connection. Each wake-up it writes what is queued
//! (priority lane first, then the normal lane joined into one frame), then reads what
//! arrived. Timers are not per connection: the shard's sweeper checks every deadline
//! and asks a connection to close through `request_close`.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use coregate_protocol::{
    decode_client_frame, CloseCode, Encoding, FrameBuilder, ServerEnvelope, ServerMessage, Topic,
};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::WebSocketContext;
use tungstenite::Message;
use uuid::Uuid;

use crate::admission::UserSlot;
use crate::auth::Identity;
use crate::outbox::{LocalDelivery, Outbox};
use crate::rate_limit::TokenBucket;
use crate::shard::LocalShard;
use crate::stats::ShardStats;
use crate::topic_table::ConnKey;
use crate::ws::{self, BufferedIo};

/// How long a closing connection may take to flush its close frame before it is dropped.
const CLOSE_FLUSH_LIMIT: Duration = Duration::from_secs(2);
/// How long to wait for the client's side of the close after ours is written.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// A connection's state that the shard's router and sweeper can reach.
pub struct LocalConn {
    pub key: ConnKey,
    pub encoding: Encoding,
    pub session_id: Uuid,
    pub connected_at: Instant,
    last_seen: Cell<Instant>,
    identity: RefCell<Option<Identity>>,
    /// The user's connection place, given back when the connection is dropped.
    user_slot: Cell<Option<UserSlot>>,
    subscriptions: RefCell<Vec<Topic>>,
    outbox: RefCell<Outbox>,
    /// A close asked for by the shard (timeouts, slow consumer), not yet acted on.
    close_request: Cell<Option<CloseCode>>,
    /// Set once the close has started; no more events are queued.
    closing_since: Cell<Option<Instant>>,
    /// Set by the sweeper when closing took too long: drop the socket now.
    abort: Cell<bool>,
    /// Since when the queued output has been over the byte budget.
    over_budget_since: Cell<Option<Instant>>,
}

impl LocalConn {
    pub fn new(key: ConnKey, encoding: Encoding, now: Instant) -> LocalConn {
        LocalConn {
            key,
            encoding,
            session_id: Uuid::new_v4(),
            connected_at: now,
            last_seen: Cell::new(now),
            identity: RefCell::new(None),
            user_slot: Cell::new(None),
            subscriptions: RefCell::new(Vec::new()),
            outbox: RefCell::new(Outbox::default()),
            close_request: Cell::new(None),
            closing_since: Cell::new(None),
            abort: Cell::new(false),
            over_budget_since: Cell::new(None),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.identity.borrow().is_some()
    }
    pub fn is_closing(&self) -> bool {
        self.closing_since.get().is_some() || self.close_request.get().is_some()
    }
    pub fn closing_since(&self) -> Option<Instant> {
        self.closing_since.get()
    }
    pub fn last_seen(&self) -> Instant {
        self.last_seen.get()
    }
    pub fn over_budget_since(&self) -> Option<Instant> {
        self.over_budget_since.get()
    }
    /// The token's expiry (unix seconds), once authenticated.
    pub fn expires_at(&self) -> Option<u64> {
        self.identity.borrow().as_ref().map(|i| i.expires_at)
    }
    pub fn user_id_is(&self, user_id: &str) -> bool {
        self.identity
            .borrow()
            .as_ref()
            .is_some_and(|i| i.user_id == user_id)
    }
    pub fn subscriptions(&self) -> std::cell::Ref<'_, Vec<Topic>> {
        self.subscriptions.borrow()
    }
    pub fn queued_bytes(&self) -> usize {
        self.outbox.borrow().queued_bytes()
    }

    /// Asks the connection's task to close with `code`; the first request wins.
    pub fn request_close(&self, code: CloseCode) {
        if self.is_closing() {
            return;
        }
        self.close_request.set(Some(code));
        self.outbox.borrow_mut().wake();
    }

    /// Drops the socket without further ado (closing took too long).
    pub fn abort(&self) {
        self.abort.set(true);
        self.outbox.borrow_mut().wake();
    }

    /// Queues an event on the normal lane, keeping the queue within `budget` bytes:
    /// over it, ephemeral events are shed first; a queue that stays over for the
    /// grace period is closed 4010 by the sweeper, and one that reaches twice the
    /// budget is closed at once, so memory stays bounded whatever the client does.
    ///
    /// With `defer`, the connection is not woken (see `batch_delay`); returns whether
    /// the normal lane was empty before, i.e. whether the connection needs a later wake.
    pub fn enqueue(
        &self,
        delivery: &LocalDelivery,
        budget: usize,
        stats: &ShardStats,
        now: Instant,
        defer: bool,
    ) -> bool {
        let encoding = self.encoding;
        let len_of = |d: &LocalDelivery| d.wire(encoding).message().len();
        let len = len_of(delivery);
        let mut outbox = self.outbox.borrow_mut();
        if outbox.queued_bytes() + len > budget {
            if delivery.is_ephemeral() {
                ShardStats::add(&stats.shed_events, 1);
                return false;
            }
            let shed = outbox.shed_ephemeral(budget.saturating_sub(len), len_of);
            ShardStats::add(&stats.shed_events, shed as u64);
        }
        let first = outbox.normal_len() == 0;
        outbox.push_normal(delivery.clone(), len, !defer);
        ShardStats::add(&stats.deliveries, 1);
        ShardStats::raise(&stats.outbox_high_water_bytes, outbox.queued_bytes() as u64);
        if outbox.queued_bytes() > budget {
            if self.over_budget_since.get().is_none() {
                self.over_budget_since.set(Some(now));
            }
            if outbox.queued_bytes() > budget.saturating_mul(2) {
                drop(outbox);
                self.request_close(CloseCode::SlowConsumer);
                return false;
            }
        }
        first
    }

    /// Frees the outbox's buffers if it is empty (see `Outbox::release_idle_buffers`).
    pub(crate) fn release_idle_buffers(&self) {
        self.outbox.borrow_mut().release_idle_buffers();
    }

    /// Wakes the connection's task to write what its outbox holds.
    pub(crate) fn wake_writer(&self) {
        self.outbox.borrow_mut().wake();
    }

    fn note_drained(&self, budget: usize) {
        if self.over_budget_since.get().is_some() && self.outbox.borrow().queued_bytes() <= budget {
            self.over_budget_since.set(None);
        }
    }
}

/// What woke the connection task.
enum Event {
    /// `n` bytes arrived in the shard's read buffer.
    Inbound(usize),
    /// The shard asked for a close.
    CloseRequested(CloseCode),
    /// Closing, and everything queued has been written.
    Flushed,
    /// The peer went away, the socket failed, or the close took too long.
    Gone,
}

/// What the connection does after handling client input.
pub(crate) enum Flow {
    Continue,
    Close(CloseCode),
}

/// Bytes being written: a shared event frame, or bytes owned by this connection.
enum WriteChunk {
    Shared {
        delivery: LocalDelivery,
        written: usize,
    },
    Owned(Bytes),
}

/// Drives one connection's socket; see the module docs.
pub(crate) struct ConnDriver {
    pub(crate) shard: Rc<LocalShard>,
    pub(crate) conn: Rc<LocalConn>,
    stream: TcpStream,
    ws: WebSocketContext,
    writing: Option<WriteChunk>,
    /// The peer sent its close frame (or EOF): no linger needed after ours.
    peer_closed: bool,
    /// Client events allowed (ping is not counted; bad input is).
    rate: TokenBucket,
    /// Events refused in a row; past the configured limit the connection is closed 4008.
    refused_in_a_row: u32,
}

impl ConnDriver {
    pub(crate) fn new(shard: Rc<LocalShard>, conn: Rc<LocalConn>, stream: TcpStream) -> Self {
        let ws = ws::server_context(shard.config.max_message_size);
        let config = &shard.config;
        let rate = TokenBucket::new(
            config.rate_limit_events,
            config.rate_limit_window,
            config.rate_limit_burst,
            Instant::now(),
        );
        ConnDriver {
            shard,
            conn,
            stream,
            ws,
            writing: None,
            peer_closed: false,
            rate,
            refused_in_a_row: 0,
        }
    }

    /// Runs the connection until it closes.
    pub(crate) async fn run(&mut self) {
        loop {
            match poll_fn(|cx| self.poll_event(cx)).await {
                Event::Inbound(n) => {
                    if let Flow::Close(code) = self.handle_inbound(n) {
                        self.start_close(code);
                    }
                }
                Event::CloseRequested(code) => self.start_close(code),
                Event::Flushed => {
                    // Boxed: the linger's timer and buffer are needed only while closing.
                    Box::pin(self.finish_close()).await;
                    return;
                }
                Event::Gone => return,
            }
        }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if self.conn.abort.get() {
            return Poll::Ready(Event::Gone);
        }
        if let Some(code) = self.conn.close_request.take() {
            return Poll::Ready(Event::CloseRequested(code));
        }
        if let Poll::Ready(gone) = self.poll_write_queued(cx) {
            return Poll::Ready(gone);
        }
        let closing = self.conn.closing_since.get().is_some();
        if closing && self.writing.is_none() && !self.conn.outbox.borrow().has_priority() {
            return Poll::Ready(Event::Flushed);
        }
        if !self.peer_closed {
            let shard = self.shard.clone();
            let mut buf = shard.read_buf.borrow_mut();
            match Pin::new(&mut self.stream).poll_read(cx, &mut buf[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    if closing {
                        self.peer_closed = true;
                    } else {
                        return Poll::Ready(Event::Gone);
                    }
                }
                Poll::Ready(Ok(n)) => return Poll::Ready(Event::Inbound(n)),
                Poll::Pending => {}
            }
        }
        self.conn.outbox.borrow_mut().register(cx.waker());
        Poll::Pending
    }

    /// Writes queued output until the socket would block. `Ready` only when the
    /// socket failed.
    fn poll_write_queued(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        let stats = self.shard.stats.clone();
        loop {
            if self.writing.is_none() {
                self.writing = self.next_chunk();
            }
            let encoding = self.conn.encoding;
            let Some(chunk) = &mut self.writing else {
                return Poll::Pending;
            };
            let bytes: &[u8] = match chunk {
                WriteChunk::Shared { delivery, written } => {
                    &delivery.wire(encoding).framed()[*written..]
                }
                WriteChunk::Owned(bytes) => bytes,
            };
            match Pin::new(&mut self.stream).poll_write(cx, bytes) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Event::Gone),
                Poll::Ready(Ok(n)) => {
                    ShardStats::add(&stats.bytes_out, n as u64);
                    let done = n == bytes.len();
                    match chunk {
                        WriteChunk::Shared { written, .. } => *written += n,
                        WriteChunk::Owned(bytes) => bytes.advance(n),
                    }
                    if done {
                        self.writing = None;
                        self.conn.note_drained(self.shard.config.outbound_budget);
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The next bytes to write: every queued priority frame, else the normal lane's
    /// events joined into one frame (a lone event goes out as its shared frame).
    fn next_chunk(&mut self) -> Option<WriteChunk> {
        let stats = &self.shard.stats;
        let encoding = self.conn.encoding;
        let len_of = |d: &LocalDelivery| d.wire(encoding).message().len();
        let mut outbox = self.conn.outbox.borrow_mut();
        if let Some(first) = outbox.pop_priority() {
            ShardStats::add(&stats.frames_out, 1);
            if !outbox.has_priority() {
                return Some(WriteChunk::Owned(first));
            }
            let mut joined = BytesMut::from(&first[..]);
            while let Some(frame) = outbox.pop_priority() {
                ShardStats::add(&stats.frames_out, 1);
                joined.extend_from_slice(&frame);
            }
            return Some(WriteChunk::Owned(joined.freeze()));
        }
        if self.conn.closing_since.get().is_some() {
            return None;
        }
        let first = outbox.pop_normal(len_of)?;
        ShardStats::add(&stats.frames_out, 1);
        let now = Instant::now();
        if outbox.peek_normal().is_none() {
            note_events_written(stats, &first, 1, now);
            return Some(WriteChunk::Shared {
                delivery: first,
                written: 0,
            });
        }
        let buffer = std::mem::take(&mut *self.shard.batch_buf.borrow_mut());
        let mut batch =
            FrameBuilder::from_buffer(encoding, self.shard.config.max_frame_size, buffer);
        // The first message always fits: a lone message is accepted whatever its size.
        let _ = batch.push(first.wire(encoding).message());
        let mut events = 1;
        while let Some(next) = outbox.peek_normal() {
            if batch.push(next.wire(encoding).message()).is_err() {
                break;
            }
            events += 1;
            outbox.pop_normal(len_of);
        }
        // The batch's latency is its oldest event's: the others waited less.
        note_events_written(stats, &first, events, now);
        let payload = batch.as_bytes();
        let mut frame =
            BytesMut::with_capacity(ws::data_header_len(encoding, payload.len()) + payload.len());
        ws::put_data_header(encoding, payload.len(), &mut frame);
        frame.extend_from_slice(payload);
        *self.shard.batch_buf.borrow_mut() = batch.into_inner();
        Some(WriteChunk::Owned(frame.freeze()))
    }

    /// Feeds `n` received bytes (in the shard's read buffer) to the WebSocket parser
    /// and handles every complete message.
    fn handle_inbound(&mut self, n: usize) -> Flow {
        self.conn.last_seen.set(Instant::now());
        let shard = self.shard.clone();
        let input = shard.read_buf.borrow();
        let mut control = Vec::new();
        let mut io = BufferedIo {
            input: &input[..n],
            output: &mut control,
        };
        let mut flow = Flow::Continue;
        loop {
            match self.ws.read(&mut io) {
                Ok(Message::Text(text)) => flow = self.handle_data(text.as_bytes()),
                Ok(Message::Binary(data)) => flow = self.handle_data(&data),
                Ok(Message::Close(_)) => self.peer_closed = true,
                Ok(_) => {} // ping (answered by tungstenite), pong, raw frames
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    break
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.peer_closed = true;
                    break;
                }
                Err(tungstenite::Error::Capacity(_)) => {
                    flow = Flow::Close(CloseCode::MessageTooBig);
                }
                Err(e) => {
                    tracing::debug!(session = %self.conn.session_id, error = %e, "websocket protocol error");
                    self.write_close_frame(1002, "protocol error", &mut control);
                    self.mark_closing();
                    break;
                }
            }
            if matches!(flow, Flow::Close(_)) {
                break;
            }
        }
        let _ = self.ws.flush(&mut BufferedIo {
            input: &[],
            output: &mut control,
        });
        if !control.is_empty() {
            self.conn
                .outbox
                .borrow_mut()
                .push_priority(Bytes::from(control));
        }
        if self.peer_closed && self.conn.closing_since.get().is_none() {
            self.mark_closing();
        }
        flow
    }

    /// One WebSocket data message: one or more protocol messages.
    fn handle_data(&mut self, data: &[u8]) -> Flow {
        if self.conn.closing_since.get().is_some() {
            return Flow::Continue;
        }
        let shard = self.shard.clone();
        let mut buf = shard.decode_buf.borrow_mut();
        buf.clear();
        buf.extend_from_slice(data);
        let max = shard.config.max_message_size;
        let now = Instant::now();
        for decoded in decode_client_frame(self.conn.encoding, &mut buf[..], max) {
            let is_ping = matches!(&decoded, Ok(e) if matches!(e.message, coregate_protocol::ClientMessage::Ping));
            if !is_ping {
                if let Some(flow) = self.charge_rate(now, &decoded) {
                    return flow;
                }
                let refused = self.refused_in_a_row > 0;
                if refused {
                    continue;
                }
            }
            let flow = match decoded {
                Ok(envelope) => {
                    ShardStats::add(shard.stats.message_in_counter(envelope.message.op()), 1);
                    self.handle_message(envelope)
                }
                Err(bad) => {
                    ShardStats::add(&shard.stats.messages_bad, 1);
                    self.reply_error(bad.error.error_code(), &bad.error.to_string(), bad.r#ref);
                    Flow::Continue
                }
            };
            if let Flow::Close(code) = flow {
                return Flow::Close(code);
            }
        }
        Flow::Continue
    }

    /// Takes one event from the rate bucket. Over the rate, the event is refused with
    /// `rate_limited` (and skipped by the caller, which sees `refused_in_a_row > 0`);
    /// too many refusals in a row close the connection 4008.
    fn charge_rate<T>(
        &mut self,
        now: Instant,
        decoded: &Result<coregate_protocol::ClientEnvelope, T>,
    ) -> Option<Flow> {
        if self.rate.try_take(now) {
            self.refused_in_a_row = 0;
            return None;
        }
        self.refused_in_a_row += 1;
        if self.refused_in_a_row > self.shard.config.flood_close_after {
            return Some(Flow::Close(CloseCode::RateLimited));
        }
        let retry_after_ms = self.rate.retry_after(now).as_millis() as u64;
        let r#ref = decoded.as_ref().ok().and_then(|e| e.r#ref);
        self.reply(
            &ServerMessage::Error {
                code: coregate_protocol::ErrorCode::RateLimited,
                message: "too many events; slow down".to_owned(),
                topics: None,
                retry_after_ms: Some(retry_after_ms.max(1)),
            },
            r#ref,
        );
        None
    }

    /// Queues a server message on the priority lane.
    pub(crate) fn reply(&self, message: &ServerMessage, r#ref: Option<u64>) {
        queue_reply(&self.shard, &self.conn, message, r#ref);
    }

    pub(crate) fn reply_error(
        &self,
        code: coregate_protocol::ErrorCode,
        message: &str,
        r#ref: Option<u64>,
    ) {
        self.reply(
            &ServerMessage::Error {
                code,
                message: message.to_owned(),
                topics: None,
                retry_after_ms: None,
            },
            r#ref,
        );
    }

    /// Starts the close handshake: `reconnect` first where the client should come
    /// back, then the close frame; queued events are dropped.
    fn start_close(&mut self, code: CloseCode) {
        if self.conn.closing_since.get().is_some() {
            return;
        }
        if matches!(
            code,
            CloseCode::SlowConsumer | CloseCode::ServiceRestart | CloseCode::TryAgainLater
        ) {
            self.reply(
                &ServerMessage::Reconnect {
                    reason: code.reason().to_owned(),
                    retry_after_ms: 1000,
                },
                None,
            );
        }
        let mut control = Vec::new();
        self.write_close_frame(code.code(), code.reason(), &mut control);
        self.conn
            .outbox
            .borrow_mut()
            .push_priority(Bytes::from(control));
        self.mark_closing();
        tracing::debug!(session = %self.conn.session_id, code = code.code(), "closing connection");
    }

    fn write_close_frame(&mut self, code: u16, reason: &str, out: &mut Vec<u8>) {
        let frame = CloseFrame {
            code: code.into(),
            reason: reason.into(),
        };
        let mut io = BufferedIo {
            input: &[],
            output: out,
        };
        let _ = self.ws.close(&mut io, Some(frame));
        let _ = self.ws.flush(&mut io);
        let stats = &self.shard.stats;
        ShardStats::add(&stats.server_closes, 1);
        if let Some(counter) = stats.close_counter(code) {
            ShardStats::add(counter, 1);
        }
    }

    fn mark_closing(&mut self) {
        self.conn.closing_since.set(Some(Instant::now()));
        let encoding = self.conn.encoding;
        self.conn
            .outbox
            .borrow_mut()
            .clear_normal(|d| d.wire(encoding).message().len());
    }

    /// Our close frame is written: half-close, and give the client a moment to
    /// answer so that the kernel does not reset the connection under its last bytes.
    async fn finish_close(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write).await;
        if self.peer_closed {
            return;
        }
        let linger = async {
            let mut sink = vec![0u8; 512];
            while let Ok(n) = futures_lite::AsyncReadExt::read(&mut self.stream, &mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        futures_lite::future::or(linger, glommio::timer::sleep(CLOSE_LINGER)).await;
    }
}

/// Encodes a server message for `conn` and queues it on its priority lane, waking its
/// task. A free function so that a task other than the connection's own (a subscribe
/// that waited for a membership check) can answer; that caller must first make sure
/// the connection is still registered and not closing, or the reply would follow the
/// close frame.
pub(crate) fn queue_reply(
    shard: &LocalShard,
    conn: &LocalConn,
    message: &ServerMessage,
    r#ref: Option<u64>,
) {
    let frame = shard.encode_frame(
        conn.encoding,
        &ServerEnvelope {
            message,
            r#ref,
            topic: None,
            offset: None,
        },
    );
    conn.outbox.borrow_mut().push_priority(frame);
    ShardStats::add(&shard.stats.messages_out_control, 1);
}

/// Counts `events` handed to a socket and their publish→write latency, `first`'s.
fn note_events_written(stats: &ShardStats, first: &LocalDelivery, events: u64, now: Instant) {
    ShardStats::add(&stats.messages_out_event, events);
    stats
        .publish_to_write
        .observe(now.saturating_duration_since(first.received_at), events);
}

/// How long a closing connection may take before the sweeper drops it.
pub fn close_flush_limit() -> Duration {
    CLOSE_FLUSH_LIMIT
}

/// Writes a complete HTTP response (refusals) and closes.
pub(crate) async fn write_and_close(stream: &mut TcpStream, response: &[u8]) {
    let _ = stream.write_all(response).await;
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
}

pub(crate) fn set_identity(conn: &LocalConn, identity: Identity) {
    *conn.identity.borrow_mut() = Some(identity);
}

/// Keeps the user's connection place for as long as the connection lives.
pub(crate) fn hold_user_slot(conn: &LocalConn, slot: UserSlot) {
    conn.user_slot.set(Some(slot));
}

pub(crate) fn with_identity<R>(conn: &LocalConn, f: impl FnOnce(Option<&Identity>) -> R) -> R {
    f(conn.identity.borrow().as_ref())
}

pub(crate) fn subscriptions_mut(conn: &LocalConn) -> std::cell::RefMut<'_, Vec<Topic>> {
    conn.subscriptions.borrow_mut()
}
