//! A shard's connections, sans-IO: the slab of [`Session`]s under generational keys, the
//! topic table, the outstanding membership checks, the connections holding deferred
//! events, and the commands waiting for the ingestor's queue. It routes deliveries
//! ([`LocalHub::route`]), sweeps deadlines ([`LocalHub::handle_timeouts`]) and applies
//! what sessions ask for ([`SessionEvent`]s). No glommio, no socket, no clock: the
//! driver passes `now`, and the test harness drives a virtual clock.
//!
//! The one thing it knows of tasks is a [`Waker`] per connection: the driver's task
//! registers it, and the hub wakes it when something was queued for that connection
//! from outside its own task (a routed event, a close, a membership answer).

#[cfg(test)]
mod history_tests;
#[cfg(test)]
mod tests;
pub mod topic_table;
#[cfg(test)]
mod voice_tests;

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use coregate_protocol::Encoding;
use slab::Slab;

use crate::admission::Admission;
use crate::auth::TokenVerifier;
use crate::authorizer::{MembershipAnswer, MembershipGate, SharedAuthorizer};
use crate::backend::{RpcAnswer, RpcCall, RpcFailure, SharedBackend};
use crate::bus::{IngestorCommand, IngestorSender, InterestChange, PresenceSignal, SharedDelivery};
use crate::config::ShardConfig;
use crate::session::outbox::LocalDelivery;
use crate::session::{
    CloseReason, Enqueued, Now, PendingSubscribe, Scratch, Session, SessionCtx, SessionEvent,
    SessionRates, Start, Transmit,
};
use crate::stats::ShardStats;
use crate::voice::{SharedVoice, VoiceAction, VoiceRequest};
use topic_table::LocalTopicTable;

/// A connection's key: its slab index and the generation of the connection that holds
/// it, so that a key kept past its connection's end (a membership check, a deferred
/// wake, a drain list) never reaches the next connection on the same index.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    index: u32,
    generation: u32,
}

impl ConnKey {
    /// The key as one number, for naming a connection to another node (which hands
    /// it back as it was, through [`ConnKey::from_raw`]).
    pub fn to_raw(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    pub fn from_raw(raw: u64) -> ConnKey {
        ConnKey {
            index: raw as u32,
            generation: (raw >> 32) as u32,
        }
    }

    /// The connection's place in the shard's slab: dense, reused after it ends.
    pub(crate) fn index(self) -> usize {
        self.index as usize
    }

    /// Which of the connections that held [`ConnKey::index`] this is.
    pub(crate) fn generation(self) -> u32 {
        self.generation
    }

    /// A key for unit tests that need one without a hub.
    #[cfg(test)]
    pub(crate) fn for_tests(index: u32) -> ConnKey {
        ConnKey {
            index,
            generation: 0,
        }
    }
}

/// A membership check sent to the ingestor; the driver awaits `answer` (at most
/// `timeout`) and hands it to [`LocalHub::finish_check`].
#[derive(Debug)]
pub struct MembershipWait {
    pub check_id: u64,
    pub answer: flume::Receiver<MembershipAnswer>,
    pub timeout: Duration,
}

struct Slot {
    generation: u32,
    /// The driver took the connection's task away ([`LocalHub::park`]): waking it is
    /// asking the driver for a new one, by key. A flag rather than a waker made for
    /// each parked connection (an allocation per park, ~30 bytes a connection).
    parked: bool,
    session: Box<Session>,
    waker: Option<Waker>,
}

impl Slot {
    /// Wakes the connection's task, or asks for a parked connection to be resumed.
    fn wake(&mut self, index: usize, unpark_requests: &Option<flume::Sender<u64>>) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        } else if std::mem::take(&mut self.parked) {
            let key = ConnKey {
                index: index as u32,
                generation: self.generation,
            };
            if let Some(requests) = unpark_requests {
                let _ = requests.send(key.to_raw());
            }
        }
    }
}

/// The parts of the hub every session call borrows, apart from the slab.
struct Parts {
    config: Arc<ShardConfig>,
    rates: SessionRates,
    stats: Arc<ShardStats>,
    verifier: Arc<dyn TokenVerifier>,
    admission: Arc<Admission>,
    membership: Option<MembershipGate>,
    scratch: Scratch,
    events: Vec<SessionEvent>,
}

impl Parts {
    fn ctx(&mut self) -> SessionCtx<'_> {
        SessionCtx {
            config: &self.config,
            rates: &self.rates,
            stats: &self.stats,
            verifier: &*self.verifier,
            admission: &self.admission,
            membership: self.membership.as_mut(),
            scratch: &mut self.scratch,
            events: &mut self.events,
        }
    }
}

/// What a shard's hub sends to the node's side: the ingestor (always), the membership
/// checker (`--authorizer redis`), the backend client (`--proxy-rpc-url`) and the SFU
/// (voice on).
#[derive(Debug, Clone)]
pub struct NodeLinks {
    pub ingestor: IngestorSender,
    pub authorizer: Option<SharedAuthorizer>,
    pub backend: Option<SharedBackend>,
    pub voice: Option<SharedVoice>,
}

/// One shard's connections and routing; see the module docs.
pub struct LocalHub {
    shard_id: usize,
    slots: Slab<Slot>,
    next_generation: u32,
    topics: LocalTopicTable,
    parts: Parts,
    /// `None` once the shard has ended ([`LocalHub::shut_down`]).
    ingestor: Option<IngestorSender>,
    /// The node's backend client, for `rpc`; `None` without `--proxy-rpc-url`.
    backend: Option<SharedBackend>,
    /// The node's SFU; `None` with voice off.
    voice: Option<SharedVoice>,
    /// Commands the ingestor's queue could not take yet, retried at every flush.
    commands: VecDeque<IngestorCommand>,
    /// Subscribes waiting for the membership store, by check id.
    checks: HashMap<u64, (ConnKey, PendingSubscribe)>,
    next_check_id: u64,
    /// Checks sent since the driver last took them.
    waits: Vec<MembershipWait>,
    /// Connections holding events deferred by `batch_delay`, woken at the next tick.
    deferred: Vec<ConnKey>,
    /// Where a parked connection's wake goes: the driver's parking lot, which resumes
    /// it ([`LocalHub::park`]).
    unpark_requests: Option<flume::Sender<u64>>,
}

impl LocalHub {
    pub fn new(
        shard_id: usize,
        config: Arc<ShardConfig>,
        stats: Arc<ShardStats>,
        verifier: Arc<dyn TokenVerifier>,
        admission: Arc<Admission>,
        links: NodeLinks,
    ) -> LocalHub {
        let NodeLinks {
            ingestor,
            authorizer,
            backend,
            voice,
        } = links;
        LocalHub {
            shard_id,
            slots: Slab::new(),
            next_generation: 0,
            topics: LocalTopicTable::default(),
            parts: Parts {
                rates: SessionRates::new(&config),
                config,
                stats,
                verifier,
                admission,
                membership: authorizer.map(MembershipGate::new),
                scratch: Scratch::default(),
                events: Vec::new(),
            },
            ingestor: Some(ingestor),
            backend,
            voice,
            commands: VecDeque::new(),
            checks: HashMap::new(),
            next_check_id: 0,
            waits: Vec::new(),
            deferred: Vec::new(),
            unpark_requests: None,
        }
    }

    /// Where the keys of parked connections go when something is queued for them.
    pub fn set_unpark_requests(&mut self, requests: flume::Sender<u64>) {
        self.unpark_requests = Some(requests);
    }

    pub fn config(&self) -> &ShardConfig {
        &self.parts.config
    }

    /// Registers a new connection and greets it (`hello`, then as `start` says).
    pub fn connect(&mut self, encoding: Encoding, start: Start, now: Now) -> ConnKey {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let entry = self.slots.vacant_entry();
        let key = ConnKey {
            index: entry.key() as u32,
            generation,
        };
        let mut session = Box::new(Session::new(
            encoding,
            &self.parts.config,
            &self.parts.rates,
            now.instant,
        ));
        session.start(start, now, &mut self.parts.ctx());
        entry.insert(Slot {
            generation,
            parked: false,
            session,
            waker: None,
        });
        ShardStats::add(&self.parts.stats.connections, 1);
        self.apply_events(key, now.instant);
        key
    }

    /// The session of `key`, if that connection is still registered.
    pub fn session(&self, key: ConnKey) -> Option<&Session> {
        self.slots
            .get(key.index as usize)
            .filter(|slot| slot.generation == key.generation)
            .map(|slot| &*slot.session)
    }

    /// Bytes read from `key`'s socket.
    pub fn handle_input(&mut self, key: ConnKey, input: &[u8], now: Now) {
        let Some(slot) = slot_mut(&mut self.slots, key) else {
            return;
        };
        slot.session.handle_input(input, now, &mut self.parts.ctx());
        self.apply_events(key, now.instant);
    }

    /// The next bytes to write to `key`'s socket.
    pub fn poll_transmit(&mut self, key: ConnKey, now: Instant) -> Option<Transmit> {
        let slot = slot_mut(&mut self.slots, key)?;
        slot.session.poll_transmit(now, &self.parts.ctx())
    }

    /// Remembers the task to wake when something is queued for `key`.
    pub fn register_waker(&mut self, key: ConnKey, waker: &Waker) {
        if let Some(slot) = slot_mut(&mut self.slots, key) {
            slot.parked = false;
            match &slot.waker {
                Some(current) if current.will_wake(waker) => {}
                _ => slot.waker = Some(waker.clone()),
            }
        }
    }

    /// `key` has no task any more: when something is queued for it, its key goes to
    /// the unpark requests ([`LocalHub::set_unpark_requests`]) instead of a waker.
    pub fn park(&mut self, key: ConnKey) {
        if let Some(slot) = slot_mut(&mut self.slots, key) {
            slot.waker = None;
            slot.parked = true;
        }
    }

    /// Closes `key` for `reason` (drain); a connection already closing is left alone.
    pub fn close(&mut self, key: ConnKey, reason: CloseReason, now: Instant) {
        if let Some(slot) = slot_mut(&mut self.slots, key) {
            slot.session.close(reason, now, &mut self.parts.ctx());
            slot.wake(key.index(), &self.unpark_requests);
        }
    }

    /// Every connection's key, for the drain.
    pub fn keys(&self) -> Vec<ConnKey> {
        self.slots
            .iter()
            .map(|(index, slot)| ConnKey {
                index: index as u32,
                generation: slot.generation,
            })
            .collect()
    }

    pub fn connection_count(&self) -> usize {
        self.slots.len()
    }

    /// The shard has ended: its handles on the node's other threads (the ingestor's
    /// queue, the membership checker, the backend client, the SFU) are let go of now, so
    /// that each sees its last sender go and ends, whatever the executor does with the
    /// tasks it leaves.
    pub fn shut_down(&mut self) {
        self.flush_commands();
        self.ingestor = None;
        self.parts.membership = None;
        self.backend = None;
        self.voice = None;
        self.checks.clear();
        self.waits.clear();
    }

    /// The connection ended: its typing indicators are stopped, its topics let go of
    /// and its places given back.
    pub fn remove(&mut self, key: ConnKey) {
        if slot_mut(&mut self.slots, key).is_none() {
            return;
        }
        let slot = self.slots.remove(key.index as usize);
        for stop in slot.session.typing_stops() {
            self.commands.push_back(IngestorCommand::Typing(stop));
        }
        if let Some(leave) = slot.session.presence_leave() {
            self.commands.push_back(IngestorCommand::Presence(leave));
        }
        if let Some(channel) = slot.session.voice_channel() {
            let channel = channel.to_owned();
            let gone = self.voice_request(key, &slot.session, channel, VoiceAction::Gone, None);
            if let (Some(voice), Some(gone)) = (&self.voice, gone) {
                // A full queue loses it: the SFU's own ICE timeout removes the participant.
                let _ = voice.send(gone);
            }
        }
        let encoding = slot.session.encoding();
        for topic in slot.session.subscriptions() {
            let change = self.topics.unsubscribe(topic, key, encoding);
            self.queue_interest(topic, encoding, change);
        }
        self.flush_commands();
        ShardStats::sub(&self.parts.stats.connections, 1);
    }

    /// The node answered `key`'s `presence_query` (a connection gone meanwhile, or a
    /// newer one on the same index, gets nothing).
    pub fn answer_presence_query(
        &mut self,
        key: ConnKey,
        r#ref: Option<u64>,
        users: crate::bus::PresenceAnswer,
        now: Instant,
    ) {
        self.answer_session(key, now, |session, ctx| {
            session.answer_presence_query(r#ref, users, ctx)
        });
    }

    /// Hands `key`'s session what the node's side answered it (a connection gone
    /// meanwhile, or a newer one on the same index, gets nothing), wakes its task to
    /// write it, and applies what the session asks for in turn.
    fn answer_session(
        &mut self,
        key: ConnKey,
        now: Instant,
        answer: impl FnOnce(&mut Session, &mut SessionCtx),
    ) {
        let Some(slot) = slot_mut(&mut self.slots, key) else {
            return;
        };
        answer(&mut slot.session, &mut self.parts.ctx());
        slot.wake(key.index(), &self.unpark_requests);
        self.apply_events(key, now);
    }

    /// Queues a delivery for every local subscriber of its topic.
    pub fn route(&mut self, delivery: Arc<SharedDelivery>, now: Instant) {
        let delivery: LocalDelivery = Rc::new(delivery);
        let defer = !self.parts.config.batch_delay.is_zero();
        let mut ctx = self.parts.ctx();
        let mut routed = false;
        for key in self.topics.subscribers(delivery.topic()) {
            let Some(slot) = slot_mut(&mut self.slots, key) else {
                continue;
            };
            routed = true;
            if let Some(user) = delivery.publication().exclude_user() {
                if slot.session.user_id() == Some(user) {
                    continue;
                }
            }
            match slot.session.enqueue(&delivery, now, &mut ctx) {
                Enqueued::First if defer => self.deferred.push(key),
                Enqueued::First | Enqueued::Closed => {
                    slot.wake(key.index(), &self.unpark_requests);
                }
                Enqueued::Queued | Enqueued::Dropped => {}
            }
        }
        if !routed {
            ShardStats::add(&ctx.stats.unrouted_events, 1);
        }
    }

    /// With `batch_delay`: wakes the connections that hold deferred events, so that what
    /// arrived since the last tick goes out joined.
    pub fn wake_deferred(&mut self) {
        for key in std::mem::take(&mut self.deferred) {
            if let Some(slot) = slot_mut(&mut self.slots, key) {
                slot.wake(key.index(), &self.unpark_requests);
            }
        }
    }

    /// Acts on every connection's deadlines at `now` (see [`Session::handle_timeout`]),
    /// gives idle connections' buffers back, and retries commands the ingestor's queue
    /// could not take.
    pub fn handle_timeouts(&mut self, now: Instant) {
        let mut ctx = self.parts.ctx();
        for (index, slot) in self.slots.iter_mut() {
            let session = &mut slot.session;
            let (closing, aborted) = (session.is_closing(), session.is_aborted());
            if !closing {
                session.release_idle_buffers();
            }
            session.handle_timeout(now, &mut ctx);
            if session.is_closing() != closing || session.is_aborted() != aborted {
                slot.wake(index, &self.unpark_requests);
            }
        }
        self.flush_commands();
    }

    /// The earliest deadline of any connection: when [`Self::handle_timeouts`] next has
    /// something to do (the driver sweeps on a fixed interval instead; tests use this).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let config = &self.parts.config;
        self.slots
            .iter()
            .filter_map(|(_, slot)| slot.session.poll_timeout(config))
            .min()
    }

    /// The membership checks sent since the last call, for the driver to await.
    pub fn take_membership_waits(&mut self) -> Vec<MembershipWait> {
        std::mem::take(&mut self.waits)
    }

    /// The membership store answered check `check_id` (or it failed or timed out): the
    /// verdicts are cached, and the subscribe is finished if its connection is still
    /// there (a newer connection on the same index is not it).
    pub fn finish_check(&mut self, check_id: u64, answer: MembershipAnswer, now: Instant) {
        let Some((key, mut request)) = self.checks.remove(&check_id) else {
            return;
        };
        if let Some(gate) = self.parts.membership.as_mut() {
            // Recorded even for a connection gone meanwhile: the next subscribe uses it.
            request.answer(gate, answer, now);
        }
        let Some(slot) = slot_mut(&mut self.slots, key) else {
            return;
        };
        slot.session
            .complete_subscribe(request, now, &mut self.parts.ctx());
        slot.wake(key.index(), &self.unpark_requests);
        self.apply_events(key, now);
    }

    /// Applies what `key`'s session asked for, then hands the ingestor its commands.
    fn apply_events(&mut self, key: ConnKey, now: Instant) {
        while !self.parts.events.is_empty() {
            let mut events = std::mem::take(&mut self.parts.events);
            for event in events.drain(..) {
                self.apply_event(key, event, now);
            }
            if self.parts.events.is_empty() {
                // Keep the buffer's capacity for the next call.
                self.parts.events = events;
            }
        }
        self.flush_commands();
    }

    fn apply_event(&mut self, key: ConnKey, event: SessionEvent, now: Instant) {
        let Some(encoding) = self.session(key).map(Session::encoding) else {
            return;
        };
        match event {
            SessionEvent::Subscribe(topic) => {
                let change = self.topics.subscribe(&topic, key, encoding);
                self.queue_interest(&topic, encoding, change);
            }
            SessionEvent::Unsubscribe(topic) => {
                let change = self.topics.unsubscribe(&topic, key, encoding);
                self.queue_interest(&topic, encoding, change);
            }
            SessionEvent::Publish(publication) => {
                self.commands
                    .push_back(IngestorCommand::Publish(publication));
            }
            SessionEvent::Typing(signal) => {
                self.commands.push_back(IngestorCommand::Typing(signal));
            }
            SessionEvent::Presence(signal) => {
                self.commands.push_back(IngestorCommand::Presence(signal));
            }
            SessionEvent::PresenceQuery { r#ref, user_ids } => {
                let Some(viewer) = self.session(key).and_then(Session::user_id) else {
                    return;
                };
                let query = PresenceSignal::Query {
                    shard_id: self.shard_id,
                    conn: key,
                    r#ref,
                    viewer: viewer.to_owned(),
                    user_ids,
                };
                self.commands.push_back(IngestorCommand::Presence(query));
            }
            SessionEvent::CheckMembership(request) => self.send_check(key, request, now),
            SessionEvent::Rpc { r#ref, method, d } => self.send_rpc(key, r#ref, method, d, now),
            SessionEvent::Voice {
                channel,
                action,
                r#ref,
            } => self.send_voice(key, channel, action, r#ref, now),
            SessionEvent::ReadHistory { ticket, reads } => {
                let request = crate::history::HistoryRequest {
                    shard_id: self.shard_id,
                    conn: key,
                    ticket,
                    reads,
                };
                self.commands.push_back(IngestorCommand::History(request));
            }
        }
    }

    /// The node answered `key`'s read `ticket` (a connection gone meanwhile gets
    /// nothing).
    pub fn answer_history(
        &mut self,
        key: ConnKey,
        ticket: u64,
        answer: crate::history::HistoryAnswer,
        now: Instant,
    ) {
        self.answer_session(key, now, |session, ctx| {
            session.answer_history(ticket, answer, now, ctx)
        });
    }

    /// Hands an `rpc` to the node's backend client; one that cannot be sent (no backend
    /// configured, its queue full) is answered `unavailable` at once.
    fn send_rpc(
        &mut self,
        key: ConnKey,
        r#ref: Option<u64>,
        method: String,
        d: serde_json::Value,
        now: Instant,
    ) {
        let Some(session) = self.session(key) else {
            return;
        };
        let refused = match &self.backend {
            Some(backend) if backend.has_rpc() => {
                let call = RpcCall {
                    shard_id: self.shard_id,
                    conn: key,
                    r#ref,
                    user_id: session.user_id().unwrap_or_default().to_owned(),
                    session_id: session.session_id().to_string(),
                    method,
                    d,
                    meta: session.identity().and_then(|i| i.meta()).cloned(),
                };
                match backend.send(call) {
                    Ok(()) => return,
                    Err(_) => {
                        ShardStats::add(&self.parts.stats.backend_calls_refused, 1);
                        "the backend is overloaded; try again"
                    }
                }
            }
            _ => "rpc is not configured on this gateway",
        };
        self.answer_rpc(key, r#ref, Err(RpcFailure::unavailable(refused)), now);
    }

    /// The request a voice op of `key`'s session becomes.
    fn voice_request(
        &self,
        key: ConnKey,
        session: &Session,
        channel: String,
        action: VoiceAction,
        r#ref: Option<u64>,
    ) -> Option<VoiceRequest> {
        let identity = session.identity()?;
        Some(VoiceRequest {
            shard_id: self.shard_id,
            conn: key,
            user_id: identity.user_id.to_string(),
            name: identity.name.as_deref().map(str::to_owned),
            channel,
            action,
            r#ref,
        })
    }

    /// Hands a voice op to the node's SFU; one that cannot be sent (voice off, the
    /// SFU's queue full) is answered `voice_error {code: unavailable}` at once, and a
    /// join that could not be sent leaves the connection out of the room.
    fn send_voice(
        &mut self,
        key: ConnKey,
        channel: String,
        action: VoiceAction,
        r#ref: Option<u64>,
        now: Instant,
    ) {
        let Some(session) = self.session(key) else {
            return;
        };
        let joining = action == VoiceAction::Join;
        let Some(request) = self.voice_request(key, session, channel.clone(), action, r#ref) else {
            return;
        };
        let refusal = match &self.voice {
            None => "voice is switched off on this gateway",
            Some(voice) => match voice.send(request) {
                Ok(()) => return,
                Err(_) => {
                    ShardStats::add(&self.parts.stats.voice_requests_refused, 1);
                    "the voice server is overloaded; try again"
                }
            },
        };
        let message = coregate_protocol::ServerMessage::VoiceError {
            code: coregate_protocol::ErrorCode::Unavailable
                .as_str()
                .to_owned(),
            message: refusal.to_owned(),
            channel: Some(channel.clone()),
        };
        let left = joining.then_some(channel);
        self.answer_voice(key, message, r#ref, left, now);
    }

    /// The SFU's signal to `key` (a connection gone meanwhile gets nothing).
    pub fn answer_voice(
        &mut self,
        key: ConnKey,
        message: coregate_protocol::ServerMessage,
        r#ref: Option<u64>,
        left: Option<String>,
        now: Instant,
    ) {
        self.answer_session(key, now, |session, ctx| {
            session.answer_voice(message, r#ref, left, now, ctx)
        });
    }

    /// The backend answered `key`'s `rpc` (a connection gone meanwhile, or a newer one
    /// on the same index, gets nothing).
    pub fn answer_rpc(
        &mut self,
        key: ConnKey,
        r#ref: Option<u64>,
        answer: RpcAnswer,
        now: Instant,
    ) {
        self.answer_session(key, now, |session, ctx| {
            session.answer_rpc(r#ref, answer, ctx)
        });
    }

    /// Sends a subscribe's membership question; a question that cannot be sent (the
    /// ingestor's queue full or gone) is answered at once with that failure.
    fn send_check(&mut self, key: ConnKey, mut request: PendingSubscribe, now: Instant) {
        let Some(gate) = self.parts.membership.as_mut() else {
            return;
        };
        let Some((user_id, topics)) = request.question() else {
            return;
        };
        match gate.send_check(user_id, topics.to_vec()) {
            Ok(answer) => {
                let check_id = self.next_check_id;
                self.next_check_id += 1;
                self.waits.push(MembershipWait {
                    check_id,
                    answer,
                    timeout: gate.timeout(),
                });
                self.checks.insert(check_id, (key, request));
            }
            Err(error) => {
                request.answer(gate, Err(error), now);
                if let Some(slot) = slot_mut(&mut self.slots, key) {
                    slot.session
                        .complete_subscribe(request, now, &mut self.parts.ctx());
                }
            }
        }
    }

    /// Tells the ingestor when a (topic, encoding) gained its first or lost its last
    /// local subscriber.
    fn queue_interest(
        &mut self,
        topic: &coregate_protocol::Topic,
        encoding: Encoding,
        change: Option<InterestChange>,
    ) {
        if let Some(change) = change {
            self.commands.push_back(IngestorCommand::Interest {
                shard_id: self.shard_id,
                topic: topic.clone(),
                encoding,
                change,
            });
        }
    }

    /// Hands queued commands to the ingestor without blocking; what its queue cannot
    /// take now stays queued, in order, for the next flush (the sweeper's at the latest).
    pub fn flush_commands(&mut self) {
        let Some(ingestor) = &self.ingestor else {
            self.commands.clear();
            return;
        };
        while let Some(command) = self.commands.pop_front() {
            match ingestor.try_send(command) {
                Ok(()) => {}
                Err(flume::TrySendError::Full(command)) => {
                    self.commands.push_front(command);
                    ShardStats::add(&self.parts.stats.interest_backlog, 1);
                    break;
                }
                Err(flume::TrySendError::Disconnected(_)) => {
                    self.commands.clear();
                    break;
                }
            }
        }
    }
}

/// The slot of `key`, if that very connection still holds it.
fn slot_mut(slots: &mut Slab<Slot>, key: ConnKey) -> Option<&mut Slot> {
    slots
        .get_mut(key.index as usize)
        .filter(|slot| slot.generation == key.generation)
}
