//! One client connection's protocol as a sans-IO state machine (quinn-proto's
//! `Connection` shape): no socket, no timer, no clock, no glommio.
//!
//! - In: the bytes read from the socket ([`Session::handle_input`]), the time passing
//!   ([`Session::handle_timeout`]), events routed to it ([`Session::enqueue`]), answers
//!   to its membership checks ([`Session::finish_subscribe`]).
//! - Out: the bytes to write ([`Session::poll_transmit`]: the priority lane first, then
//!   the normal lane's events joined into frames), when it next needs the clock
//!   ([`Session::poll_timeout`]), whether it is closing, flushed or to be dropped, and
//!   the [`SessionEvent`]s its shard must act on (subscriptions, publications,
//!   membership checks), pushed into the caller's [`SessionCtx::events`].
//!
//! Every rule of PROTOCOL.md that concerns one connection lives here or in the files
//! beside this one: heartbeat and identify timeouts, 4003 gating, token expiry and
//! refresh ([`messages`]), the rate limits ([`allowance`]), shedding and 4010, batching
//! and the frame limit ([`outbox`] and `poll_transmit`), and every close ([`close`]).

pub mod allowance;
pub mod close;
mod codec;
mod messages;
pub mod outbox;
mod queue;
mod recovery;
mod subscribe;
#[cfg(test)]
mod tests;
mod voice;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coregate_protocol::{
    decode_client_frame, ClientMessage, Encoding, ErrorCode, Publication, ServerEnvelope,
    ServerMessage, Topic,
};
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::Message;
use uuid::Uuid;

use crate::admission::{Admission, AdmittedUser};
use crate::auth::{Identity, TokenVerifier};
use crate::authorizer::MembershipGate;
use crate::backend::{RpcAnswer, RpcFailure};
use crate::bus::PresenceAnswer;
use crate::config::ShardConfig;
use crate::stats::ShardStats;
use crate::ws::{self, BufferedIo};

use crate::rate_limit::Rate;
use allowance::{Allowance, Charge};
pub use close::CloseReason;
use codec::Codec;
use outbox::Outbox;
pub use queue::{Enqueued, Transmit};
pub use subscribe::PendingSubscribe;

/// How long a closing connection may take to flush its close frame before it is dropped.
pub const CLOSE_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// Pings a connection may send per second, apart from its other events. Deliberately
/// not a setting: a client pings once per heartbeat interval (30 s by default), and a
/// latency probe a few times a second; only a flood meets this.
pub const PING_RATE_PER_SEC: u32 = 10;
/// Pings a connection may send at once before [`PING_RATE_PER_SEC`] applies.
pub const PING_BURST: u32 = 50;

/// Before `ready` a connection is nobody yet: it gets a much smaller allowance of
/// everything, so that unauthenticated sockets cannot make the shard hold much.
/// Largest message before `ready` (an `identify` with a large token fits).
pub const PRE_READY_MAX_MESSAGE_SIZE: usize = 16 * 1024;
/// Bytes of replies a connection may have queued before `ready`.
pub const PRE_READY_CONTROL_BUDGET: usize = 8 * 1024;
/// Pings a connection may send at once before `ready`, and per second after them.
pub const PRE_READY_PING_BURST: u32 = 5;
/// Bytes a connection may send in all before `ready`: an `identify` with the largest
/// token ([`PRE_READY_MAX_MESSAGE_SIZE`]) and a few pings fit twice over. Past it the
/// connection is closed 4008, whatever the bytes were (frames no allowance charges,
/// such as empty continuation frames, included): a socket that has not said who it is
/// gets a few reads of the shard's time, not an unbounded stream of them.
pub const PRE_READY_INPUT_BYTES: usize = 32 * 1024;
/// After `ready`, how many times the message size limit one message may take on the
/// wire, its frames' headers and the control frames among them included; more closes
/// the connection 1009. A message is charged to an allowance once it is complete, so
/// this bounds what a client can send uncharged (a stream of empty continuation
/// frames, which never complete one) to twice `max_message_size` per charge.
pub const MAX_WIRE_BYTES_PER_MESSAGE_FACTOR: usize = 2;

/// The time as a session sees it: a monotonic instant for every deadline, and the wall
/// clock's unix seconds, needed only where a token's `exp` (wall-clock time) becomes a
/// deadline. The driver reads both clocks; tests drive a virtual one.
#[derive(Copy, Clone, Debug)]
pub struct Now {
    pub instant: Instant,
    pub unix_secs: u64,
}

impl Now {
    /// The real clocks; for the driver only.
    pub fn system() -> Now {
        let unix_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Now {
            instant: Instant::now(),
            unix_secs,
        }
    }
}

/// How a connection begins, as its upgrade decided.
#[derive(Debug)]
pub enum Start {
    /// No token came with the upgrade: the client is to `identify` in-band.
    Identify,
    /// Authenticated at the upgrade (a verified token, or the backend's connect call):
    /// `ready` at once, with the connect call's `data` if any.
    Ready {
        user: AdmittedUser,
        data: Option<serde_json::Value>,
    },
    /// The backend's connect call refused the connection, or could not be made:
    /// `hello`, then this close.
    Close(CloseReason),
}

/// What a session asks its shard to do; the shard's hub applies these right after the
/// call that produced them.
#[derive(Debug)]
pub enum SessionEvent {
    /// The connection now holds this topic: add it to the topic table.
    Subscribe(Topic),
    /// The connection let go of this topic.
    Unsubscribe(Topic),
    /// A publication born on this connection, for every node.
    Publish(Publication),
    /// A typing transition of this connection, for the node's typing table.
    Typing(crate::bus::TypingSignal),
    /// A presence transition of this connection (ready, `presence_set`), for the node's
    /// presence table. The close's `Disconnect` is the hub's to send
    /// ([`Session::presence_leave`]).
    Presence(crate::bus::PresenceSignal),
    /// A `presence_query`: the hub sends it to the node with the connection's key, and
    /// the answer comes back through [`Session::answer_presence_query`].
    PresenceQuery {
        r#ref: Option<u64>,
        user_ids: Vec<String>,
    },
    /// A subscribe waits for the membership store's verdicts on some topics.
    CheckMembership(PendingSubscribe),
    /// Reads of topics' streams for the node; the answer comes back through
    /// [`Session::answer_history`] with the same ticket.
    ReadHistory {
        ticket: u64,
        reads: Vec<(Topic, crate::history::ReadFor)>,
    },
    /// An `rpc` for the backend; its answer comes back through [`Session::answer_rpc`].
    Rpc {
        r#ref: Option<u64>,
        method: String,
        d: serde_json::Value,
    },
    /// A voice op for the node's SFU; what the SFU says back comes through
    /// [`Session::answer_voice`].
    Voice {
        channel: String,
        action: crate::voice::VoiceAction,
        r#ref: Option<u64>,
    },
}

/// Scratch buffers shared by every session of a shard: a connection holds none of its
/// own while idle.
#[derive(Default)]
pub struct Scratch {
    decode: Vec<u8>,
    encode: Vec<u8>,
    control: Vec<u8>,
}

/// The per-connection rates, made once per shard from its configuration (each
/// connection keeps only its tokens).
#[derive(Clone, Debug)]
pub struct SessionRates {
    events: Rate,
    pings: Rate,
    pings_before_ready: Rate,
}

impl SessionRates {
    pub fn new(config: &ShardConfig) -> SessionRates {
        let second = Duration::from_secs(1);
        SessionRates {
            events: Rate::new(
                config.rate_limit_events,
                config.rate_limit_window,
                config.rate_limit_burst,
            ),
            pings: Rate::new(PING_RATE_PER_SEC, second, PING_BURST),
            pings_before_ready: Rate::new(1, second, PRE_READY_PING_BURST),
        }
    }
}

/// What a connection holds only now and then, boxed, and there only while some of it
/// is in use: most connections, most of the time, have none of it, and the session
/// stays within a smaller allocation size class for it (BENCHMARKS.md, issue 11).
#[derive(Debug, Default)]
struct Occasional {
    /// Subscribes waiting for membership verdicts.
    membership_checks: u32,
    /// Topics unsubscribed while membership checks were outstanding: the client's
    /// later word wins over a late verdict.
    unsubscribed_while_checking: Vec<Topic>,
    /// Topics this connection has an open typing indicator in (a `typing_start` not
    /// yet followed by its `typing_stop`): stopped when it unsubscribes or closes.
    typing: Vec<Topic>,
    /// `rpc` calls sent to the backend and not answered yet.
    rpc_in_flight: u32,
    /// Subscribes waiting for their history topics' streams.
    recoveries: Vec<recovery::PendingRecovery>,
    /// Recovered topics whose live copies of the replay are still to be dropped.
    floors: Vec<recovery::ReplayFloor>,
    /// `history` queries waiting for the node.
    history_queries: Vec<recovery::PendingQuery>,
    /// The last ticket given to a read of the node's streams (unique among those
    /// waiting, which is all it must be).
    next_ticket: u64,
    /// The voice channel this connection is in (one at a time).
    voice: Option<String>,
    /// The SFU's offers not answered yet: the answers owed them are not charged to the
    /// event rate (the SFU asked for them; a room's churn must not rate-limit its
    /// members), other `voice_answer`s are.
    voice_answers_owed: u32,
    /// Since when the connection has been closing (for ever after: the end of a
    /// connection is no one's idle state).
    closing_since: Option<Instant>,
    /// Since when the queued output has been over the byte budget.
    over_budget_since: Option<Instant>,
}

impl Occasional {
    fn is_empty(&self) -> bool {
        self.membership_checks == 0
            && self.typing.is_empty()
            && self.rpc_in_flight == 0
            && self.recoveries.is_empty()
            && self.floors.is_empty()
            && self.history_queries.is_empty()
            && self.voice.is_none()
            && self.closing_since.is_none()
            && self.over_budget_since.is_none()
    }
}

/// What a session may use of its shard while it handles something.
pub struct SessionCtx<'a> {
    pub config: &'a ShardConfig,
    pub rates: &'a SessionRates,
    pub stats: &'a ShardStats,
    pub verifier: &'a dyn TokenVerifier,
    pub admission: &'a Arc<Admission>,
    /// The `redis` authorizer's gate and verdict cache; `None` with `claims`.
    pub membership: Option<&'a mut MembershipGate>,
    pub scratch: &'a mut Scratch,
    pub events: &'a mut Vec<SessionEvent>,
}

/// One connection's protocol state; see the module docs.
pub struct Session {
    encoding: Encoding,
    session_id: Uuid,
    /// Before `ready`, when the client must have identified; after, when its token
    /// expires (on the monotonic clock). One field: a connection has one or the other.
    deadline: Instant,
    last_seen: Instant,
    /// Who the connection runs as, with its place among the user's connections (given
    /// back when the session is dropped); `None` before `ready`.
    user: Option<AdmittedUser>,
    subscriptions: Vec<Topic>,
    outbox: Outbox,
    /// The WebSocket parser, held only while a frame or message is open.
    ws: Codec,
    /// Closing took longer than [`CLOSE_FLUSH_LIMIT`]: drop the socket.
    aborted: bool,
    /// The peer sent its close frame: nothing more will come.
    peer_closed: bool,
    /// tungstenite refused the input (a frame too large, invalid UTF-8, a framing
    /// error): its parser is left mid-frame and must not be fed again, so whatever the
    /// peer sends from then on is discarded.
    parser_failed: bool,
    /// Input bytes taken by the parser: before `ready` all of them (bounded by
    /// [`PRE_READY_INPUT_BYTES`]), after it those since the last complete message
    /// (bounded by [`MAX_WIRE_BYTES_PER_MESSAGE_FACTOR`]); see [`Session::count_input`].
    input_bytes: u32,
    events_allowance: Allowance,
    pings_allowance: Allowance,
    occasional: Option<Box<Occasional>>,
}

impl Session {
    /// A new connection; nothing is queued until [`Session::start`].
    pub fn new(
        encoding: Encoding,
        config: &ShardConfig,
        rates: &SessionRates,
        now: Instant,
    ) -> Session {
        Session {
            encoding,
            session_id: Uuid::new_v4(),
            deadline: now + config.identify_timeout,
            last_seen: now,
            user: None,
            subscriptions: Vec::new(),
            outbox: Outbox::default(),
            ws: Codec::default(),
            aborted: false,
            peer_closed: false,
            parser_failed: false,
            input_bytes: 0,
            events_allowance: Allowance::new(&rates.events, now),
            pings_allowance: Allowance::new(&rates.pings_before_ready, now),
            occasional: None,
        }
    }

    /// Greets the client with `hello`, then begins as the upgrade decided: waits for
    /// `identify`, is ready at once, or closes.
    pub fn start(&mut self, start: Start, now: Now, ctx: &mut SessionCtx) {
        self.reply(
            &ServerMessage::Hello {
                session_id: self.session_id.to_string(),
                heartbeat_interval_ms: ctx.config.heartbeat_interval.as_millis() as u64,
            },
            None,
            ctx,
        );
        let close = match start {
            Start::Identify => None,
            Start::Ready { user, data } => self.become_ready(user, None, data, now, ctx),
            Start::Close(reason) => Some(reason),
        };
        if let Some(reason) = close {
            self.close(reason, now.instant, ctx);
        }
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }
    pub fn session_id(&self) -> &Uuid {
        &self.session_id
    }
    pub fn is_ready(&self) -> bool {
        self.user.is_some()
    }
    pub fn is_closing(&self) -> bool {
        self.closing_since().is_some()
    }

    fn closing_since(&self) -> Option<Instant> {
        self.occasional.as_ref().and_then(|o| o.closing_since)
    }

    fn over_budget_since(&self) -> Option<Instant> {
        self.occasional.as_ref().and_then(|o| o.over_budget_since)
    }
    /// Closing took too long: the driver drops the socket.
    pub fn is_aborted(&self) -> bool {
        self.aborted
    }
    /// Closing, and the close frame and everything before it has been handed out.
    pub fn is_flushed(&self) -> bool {
        self.is_closing() && !self.outbox.has_priority()
    }
    /// The peer sent its close frame.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }
    pub fn user_id(&self) -> Option<&str> {
        self.identity().map(|i| &*i.user_id)
    }
    /// Who the connection runs as, once ready.
    pub fn identity(&self) -> Option<&Identity> {
        self.user.as_ref().map(AdmittedUser::identity)
    }
    pub fn subscriptions(&self) -> &[Topic] {
        &self.subscriptions
    }
    /// The topics this connection has an open typing indicator in.
    pub fn typing_topics(&self) -> &[Topic] {
        self.occasional.as_ref().map_or(&[], |o| &o.typing)
    }
    /// The `typing_stop`s that the connection's end owes: one per open indicator. The
    /// hub sends them when it removes the connection, whatever closed it.
    pub fn typing_stops(&self) -> impl Iterator<Item = crate::bus::TypingSignal> + '_ {
        let identity = self.identity();
        self.typing_topics().iter().filter_map(move |topic| {
            let identity = identity?;
            Some(crate::bus::TypingSignal {
                topic: topic.clone(),
                user_id: identity.user_id.to_string(),
                name: identity.name.as_deref().map(str::to_owned),
                action: crate::bus::TypingAction::Stop,
            })
        })
    }
    /// The `Disconnect` that the end of a ready connection owes the presence table
    /// (none for one that never became ready: it was never counted).
    pub fn presence_leave(&self) -> Option<crate::bus::PresenceSignal> {
        let identity = self.identity()?;
        Some(crate::bus::PresenceSignal::Disconnect {
            user_id: identity.user_id.to_string(),
        })
    }
    /// The node's answer to this connection's `presence_query`: `presence_state` with
    /// the query's `ref`, or the error that says why there is none.
    pub fn answer_presence_query(
        &mut self,
        r#ref: Option<u64>,
        answer: PresenceAnswer,
        ctx: &mut SessionCtx,
    ) {
        if self.is_closing() {
            return;
        }
        match answer {
            PresenceAnswer::Users(users) => {
                self.reply_answer(&ServerMessage::PresenceState { users }, r#ref, None, ctx)
            }
            PresenceAnswer::NotReady => self.reply_error(
                ErrorCode::NotReady,
                "presence cannot be read now (Redis is unreachable); try again",
                r#ref,
                ctx,
            ),
            PresenceAnswer::Disabled => self.reply_error(
                ErrorCode::Unavailable,
                "presence is switched off on this gateway",
                r#ref,
                ctx,
            ),
        }
    }
    /// The replay floors this connection keeps (see `recovery::ReplayFloor`).
    #[cfg(test)]
    pub(crate) fn replay_floors(&self) -> usize {
        self.occasional.as_ref().map_or(0, |o| o.floors.len())
    }

    /// `rpc` calls of this connection waiting for the backend.
    pub fn rpc_in_flight(&self) -> u32 {
        self.occasional.as_ref().map_or(0, |o| o.rpc_in_flight)
    }

    /// The backend's answer to this connection's `rpc`: `rpc_result` with the call's
    /// `ref`, or `error` with the backend's (or the gateway's) code. Like every answer
    /// it must fit the room the connection's replies have left ([`Self::reply_answer`]):
    /// one that does not is refused `limit` (the call was made; its answer is lost).
    pub fn answer_rpc(&mut self, r#ref: Option<u64>, answer: RpcAnswer, ctx: &mut SessionCtx) {
        if let Some(occasional) = self.occasional.as_mut() {
            occasional.rpc_in_flight = occasional.rpc_in_flight.saturating_sub(1);
        }
        self.release_occasional_if_unused();
        if self.is_closing() {
            return;
        }
        let message = match answer {
            Ok(d) => ServerMessage::RpcResult { d },
            Err(RpcFailure { code, message }) => ServerMessage::RpcError { code, message },
        };
        self.reply_answer(&message, r#ref, None, ctx);
    }

    pub fn queued_bytes(&self) -> usize {
        self.outbox.queued_bytes()
    }
    /// Whether [`Session::poll_transmit`] has something to hand out.
    pub fn has_output(&self) -> bool {
        self.outbox.has_priority() || (!self.is_closing() && self.outbox.normal_len() > 0)
    }

    /// The occasional state, made when first needed.
    fn occasional(&mut self) -> &mut Occasional {
        self.occasional.get_or_insert_default()
    }

    /// Gives the occasional state's memory back once nothing in it is in use.
    fn release_occasional_if_unused(&mut self) {
        if self.occasional.as_ref().is_some_and(|o| o.is_empty()) {
            self.occasional = None;
        }
    }

    /// Frees the outbox's lanes or their buffers if empty (see `Outbox::release_idle_buffers`).
    pub fn release_idle_buffers(&mut self) {
        self.outbox.release_idle_buffers();
    }

    /// The next instant at which [`Session::handle_timeout`] has something to do.
    pub fn poll_timeout(&self, config: &ShardConfig) -> Option<Instant> {
        if let Some(since) = self.closing_since() {
            return (!self.aborted).then_some(since + CLOSE_FLUSH_LIMIT);
        }
        let heartbeat = self.last_seen + config.heartbeat_interval * 2;
        let slow = self
            .over_budget_since()
            .map(|s| s + config.slow_client_grace);
        [Some(heartbeat), Some(self.deadline), slow]
            .into_iter()
            .flatten()
            .min()
    }

    /// Acts on every deadline that has passed at `now`: closes a connection that did not
    /// identify, went silent, outlived its token or stayed over its budget, and gives up
    /// on one whose close is not getting out.
    pub fn handle_timeout(&mut self, now: Instant, ctx: &mut SessionCtx) {
        if let Some(since) = self.closing_since() {
            if now.saturating_duration_since(since) >= CLOSE_FLUSH_LIMIT {
                self.aborted = true;
            }
            return;
        }
        let config = ctx.config;
        let reason = if now >= self.deadline {
            Some(if self.is_ready() {
                CloseReason::TokenExpired
            } else {
                CloseReason::IdentifyTimeout
            })
        } else if now.saturating_duration_since(self.last_seen) >= config.heartbeat_interval * 2 {
            Some(CloseReason::HeartbeatTimeout)
        } else if self
            .over_budget_since()
            .is_some_and(|since| now.saturating_duration_since(since) >= config.slow_client_grace)
        {
            Some(CloseReason::SlowConsumer)
        } else {
            None
        };
        if let Some(reason) = reason {
            self.close(reason, now, ctx);
        }
    }

    /// Feeds bytes read from the socket to the WebSocket parser and handles every
    /// complete message. Replies and tungstenite's control frames (pong, the close
    /// echo) go to the priority lane.
    pub fn handle_input(&mut self, input: &[u8], now: Now, ctx: &mut SessionCtx) {
        self.last_seen = now.instant;
        if self.parser_failed {
            return;
        }
        let mut control = std::mem::take(&mut ctx.scratch.control);
        control.clear();
        let mut io = BufferedIo {
            input,
            output: &mut control,
        };
        let max_message_size = self.max_message_size(ctx.config);
        self.ws.see_input(input, max_message_size);
        let mut close = None;
        while close.is_none() {
            let unread = io.input.len();
            let read = self.ws.read(&mut io, max_message_size);
            close = self.count_input(unread - io.input.len(), read.is_ok(), ctx.config);
            if close.is_some() {
                break;
            }
            match read {
                Ok(Message::Text(text)) => close = self.handle_data(text.as_bytes(), now, ctx),
                Ok(Message::Binary(data)) => close = self.handle_data(&data, now, ctx),
                Ok(Message::Close(_)) => self.peer_closed = true,
                // Pings are answered by tungstenite already; both are charged like the
                // protocol's pings, so that no frame is free to send.
                Ok(Message::Ping(_) | Message::Pong(_)) => {
                    if self.charge(true, now.instant, ctx) == Charge::Flood {
                        close = Some(CloseReason::Flood);
                    }
                }
                // tungstenite's `read` hands out whole messages only.
                Ok(Message::Frame(_)) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    break
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.peer_closed = true;
                    break;
                }
                Err(tungstenite::Error::Capacity(_)) => {
                    self.parser_failed = true;
                    close = Some(CloseReason::MessageTooBig);
                }
                Err(tungstenite::Error::Utf8(_)) => {
                    self.parser_failed = true;
                    close = Some(CloseReason::InvalidUtf8);
                }
                Err(e) => {
                    tracing::debug!(session = %self.session_id, error = %e, "websocket protocol error");
                    self.parser_failed = true;
                    close = Some(CloseReason::ProtocolViolation);
                }
            }
        }
        self.ws.flush(&mut io);
        if !control.is_empty() {
            self.outbox.push_priority(Bytes::copy_from_slice(&control));
        }
        ctx.scratch.control = control;
        if let Some(reason) = close {
            self.close(reason, now.instant, ctx);
        } else if self.peer_closed && !self.is_closing() {
            // tungstenite has echoed the peer's close frame: nothing more to say.
            self.mark_closing(now.instant);
        }
        if !self.is_closing() && !self.parser_failed {
            self.ws.rest();
        }
        self.enforce_control_budget(now.instant, ctx);
    }

    /// The largest message this connection may send now: small before `ready`.
    fn max_message_size(&self, config: &ShardConfig) -> usize {
        if self.is_ready() {
            config.max_message_size
        } else {
            config.max_message_size.min(PRE_READY_MAX_MESSAGE_SIZE)
        }
    }

    /// Counts `consumed` bytes taken by the parser (`completed`: they ended a message)
    /// against the input bounds, which charge what the allowances cannot see: before
    /// `ready`, [`PRE_READY_INPUT_BYTES`] in all (4008 past it); after, twice the
    /// message size limit per message (1009 past it), so that frames that never make
    /// a message are not free. The count is of what tungstenite read, which runs at
    /// most its 128-byte read chunk ahead of the frame it parses.
    fn count_input(
        &mut self,
        consumed: usize,
        completed: bool,
        config: &ShardConfig,
    ) -> Option<CloseReason> {
        let total = (self.input_bytes as usize).saturating_add(consumed);
        self.input_bytes = u32::try_from(total).unwrap_or(u32::MAX);
        if !self.is_ready() {
            return (total > PRE_READY_INPUT_BYTES).then_some(CloseReason::InputBeforeReady);
        }
        if total > config.max_message_size * MAX_WIRE_BYTES_PER_MESSAGE_FACTOR {
            return Some(CloseReason::PaddedMessage);
        }
        if completed {
            self.input_bytes = 0;
        }
        None
    }

    /// The bound on queued replies: before `ready` a small fixed one, then the
    /// configured `control_budget`.
    fn control_budget(&self, config: &ShardConfig) -> usize {
        if self.is_ready() {
            config.control_budget
        } else {
            PRE_READY_CONTROL_BUDGET.min(config.control_budget)
        }
    }

    /// A connection whose replies outgrew their bound is not reading: they are dropped
    /// and it is closed 4008. Checked after each input is handled, which is bounded in
    /// size and in the replies it can produce.
    pub(super) fn enforce_control_budget(&mut self, now: Instant, ctx: &mut SessionCtx) {
        if self.outbox.priority_bytes() <= self.control_budget(ctx.config) {
            return;
        }
        self.outbox.clear_priority();
        if self.is_closing() {
            // Its close frame went with the rest: nothing is left to say to it.
            self.aborted = true;
        } else {
            self.close(CloseReason::ControlOverflow, now, ctx);
        }
    }

    /// What `ready` lifts: the pre-`ready` limits on message size and on input in all,
    /// whose count starts afresh as the per-message one (pings follow the readiness in
    /// [`Session::charge`]).
    fn lift_pre_ready_limits(&mut self, config: &ShardConfig) {
        self.input_bytes = 0;
        self.ws.set_max_message_size(config.max_message_size);
    }

    /// Charges one message, a ping or another, to its allowance.
    fn charge(&mut self, is_ping: bool, now: Instant, ctx: &SessionCtx) -> Charge {
        let flood_after = ctx.config.flood_close_after;
        if !is_ping {
            return self
                .events_allowance
                .charge(&ctx.rates.events, flood_after, now);
        }
        let rate = if self.is_ready() {
            &ctx.rates.pings
        } else {
            &ctx.rates.pings_before_ready
        };
        self.pings_allowance.charge(rate, flood_after, now)
    }

    /// One WebSocket data message: one or more protocol messages, each charged to its
    /// allowance before it is handled.
    fn handle_data(&mut self, data: &[u8], now: Now, ctx: &mut SessionCtx) -> Option<CloseReason> {
        if self.is_closing() {
            return None;
        }
        let mut buf = std::mem::take(&mut ctx.scratch.decode);
        buf.clear();
        buf.extend_from_slice(data);
        let max = ctx.config.max_message_size;
        let mut close = None;
        let mut messages = 0;
        for decoded in decode_client_frame(self.encoding, &mut buf[..], max) {
            messages += 1;
            let (is_ping, r#ref) = match &decoded {
                Ok(envelope) => (
                    matches!(envelope.message, ClientMessage::Ping),
                    envelope.r#ref,
                ),
                Err(bad) => (false, bad.r#ref),
            };
            let owed = matches!(&decoded, Ok(e) if matches!(e.message, ClientMessage::VoiceAnswer { .. }))
                && self.take_owed_voice_answer();
            let charge = if owed {
                Charge::Allowed
            } else {
                self.charge(is_ping, now.instant, ctx)
            };
            match charge {
                Charge::Allowed => {}
                Charge::Refused { retry_after } => {
                    self.reply_rate_limited(retry_after, r#ref, ctx);
                    continue;
                }
                Charge::Flood => {
                    close = Some(CloseReason::Flood);
                    break;
                }
            }
            close = match decoded {
                Ok(envelope) => {
                    ShardStats::add(ctx.stats.message_in_counter(envelope.message.op()), 1);
                    self.handle_message(envelope, now, ctx)
                }
                Err(bad) => {
                    ShardStats::add(&ctx.stats.messages_bad, 1);
                    self.reply_error(
                        bad.error.error_code(),
                        &bad.error.to_string(),
                        bad.r#ref,
                        ctx,
                    );
                    None
                }
            };
            if close.is_some() {
                break;
            }
        }
        ctx.scratch.decode = buf;
        if messages == 0 {
            // An empty frame (or blank lines only) carries no message, and costs one
            // event all the same: otherwise a stream of them would be free.
            close = match self.charge(false, now.instant, ctx) {
                Charge::Allowed => None,
                Charge::Refused { retry_after } => {
                    self.reply_rate_limited(retry_after, None, ctx);
                    None
                }
                Charge::Flood => Some(CloseReason::Flood),
            };
        }
        close
    }

    /// Refuses a message over its allowance: `error {code: rate_limited}`, not handled.
    fn reply_rate_limited(
        &mut self,
        retry_after: Duration,
        r#ref: Option<u64>,
        ctx: &mut SessionCtx,
    ) {
        self.reply(
            &ServerMessage::Error {
                code: ErrorCode::RateLimited,
                message: "too many events; slow down".to_owned(),
                topics: None,
                retry_after_ms: Some((retry_after.as_millis() as u64).max(1)),
            },
            r#ref,
            ctx,
        );
    }

    /// Closes the connection for `reason`: `reconnect` first where the client should
    /// come back, then the close frame; queued events are dropped. The first close wins.
    pub fn close(&mut self, reason: CloseReason, now: Instant, ctx: &mut SessionCtx) {
        if self.is_closing() {
            return;
        }
        if reason.sends_reconnect() {
            self.reply(
                &ServerMessage::Reconnect {
                    reason: reason.code().reason().to_owned(),
                    retry_after_ms: close::RECONNECT_AFTER_MS,
                },
                None,
                ctx,
            );
        }
        let code = reason.code();
        let mut frame = std::mem::take(&mut ctx.scratch.control);
        frame.clear();
        let mut io = BufferedIo {
            input: &[],
            output: &mut frame,
        };
        let close_frame = CloseFrame {
            code: code.code().into(),
            reason: code.reason().into(),
        };
        let max_message_size = self.max_message_size(ctx.config);
        self.ws.close(&mut io, close_frame, max_message_size);
        self.outbox.push_priority(Bytes::copy_from_slice(&frame));
        ctx.scratch.control = frame;
        reason.record(ctx.stats, &self.session_id);
        self.mark_closing(now);
    }

    fn mark_closing(&mut self, now: Instant) {
        self.occasional().closing_since = Some(now);
        let encoding = self.encoding;
        self.outbox
            .clear_normal(|d| d.wire(encoding).message().len());
    }

    /// The size `message` would have as a reply, encoded.
    fn encoded_len(
        &self,
        message: &ServerMessage,
        r#ref: Option<u64>,
        ctx: &mut SessionCtx,
    ) -> usize {
        let buf = &mut ctx.scratch.encode;
        buf.clear();
        let envelope = ServerEnvelope::new(message).with_ref(r#ref);
        coregate_protocol::encode_server(self.encoding, &envelope, buf);
        buf.len()
    }

    /// Encodes a server message and queues it on the priority lane.
    fn reply(&mut self, message: &ServerMessage, r#ref: Option<u64>, ctx: &mut SessionCtx) {
        let buf = &mut ctx.scratch.encode;
        buf.clear();
        coregate_protocol::encode_server(
            self.encoding,
            &ServerEnvelope {
                message,
                r#ref,
                topic: None,
                offset: None,
            },
            buf,
        );
        self.outbox
            .push_priority(ws::data_frame(self.encoding, buf));
        ShardStats::add(&ctx.stats.messages_out_control, 1);
    }

    /// Queues the answer to one of the client's requests (`history`, `rpc`,
    /// `presence_query`), which the node sends at any time, several at once: it must fit
    /// the room the connection's replies have left (its control budget less what is
    /// queued, not yet written), or it is refused `error {code: limit, topics}`. So an
    /// answer never takes a connection past its budget, and a client that reads is never
    /// closed 4008 for what it asked; one that does not read gets small refusals, and
    /// its next input meets the budget.
    fn reply_answer(
        &mut self,
        message: &ServerMessage,
        r#ref: Option<u64>,
        topics: Option<Vec<String>>,
        ctx: &mut SessionCtx,
    ) {
        let len = self.encoded_len(message, r#ref, ctx);
        let framed = ws::data_header_len(self.encoding, len) + len;
        let room = self
            .control_budget(ctx.config)
            .saturating_sub(self.outbox.priority_bytes());
        if framed <= room {
            return self.reply(message, r#ref, ctx);
        }
        let refusal = ServerMessage::Error {
            code: ErrorCode::Limit,
            message: format!(
                "the answer ({framed} bytes) is larger than the {room} bytes left for replies: \
                 read them, or ask for less"
            ),
            topics,
            retry_after_ms: None,
        };
        self.reply(&refusal, r#ref, ctx);
    }

    fn reply_error(
        &mut self,
        code: ErrorCode,
        message: &str,
        r#ref: Option<u64>,
        ctx: &mut SessionCtx,
    ) {
        self.reply(
            &ServerMessage::Error {
                code,
                message: message.to_owned(),
                topics: None,
                retry_after_ms: None,
            },
            r#ref,
            ctx,
        );
    }
}

/// The requested names without repeats, in request order.
fn dedup(requested: &[String]) -> impl Iterator<Item = &str> {
    requested
        .iter()
        .enumerate()
        .filter(move |(i, t)| !requested[..*i].contains(t))
        .map(|(_, t)| t.as_str())
}
