//! What a session does with each client message (PROTOCOL.md §4): identify, refresh,
//! ping, unsubscribe and typing here; subscribe in `subscribe.rs`. Replies go to the
//! priority lane; what the shard must do goes out as [`SessionEvent`]s.

use std::time::Duration;

use coregate_protocol::{
    ClientEnvelope, ClientMessage, ErrorCode, PresenceStatus, ServerMessage, Topic,
    MAX_PRESENCE_QUERY_USERS,
};

use super::{dedup, CloseReason, Now, Session, SessionCtx, SessionEvent};
use crate::admission::AdmittedUser;
use crate::auth::{Identity, IdentityExtras};
use crate::bus::{PresenceSignal, TypingAction, TypingSignal};
use crate::voice::VoiceAction;

/// The longest a connection's identity holds without a `refresh`: the deadline of a
/// token whose `exp` is further away, or of a connection the backend's connect call
/// authenticated without a token (which has no `exp`).
pub const MAX_SESSION_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

impl Session {
    /// Handles one decoded message; `Some` when the connection must close.
    pub(super) fn handle_message(
        &mut self,
        envelope: ClientEnvelope,
        now: Now,
        ctx: &mut SessionCtx,
    ) -> Option<CloseReason> {
        let r#ref = envelope.r#ref;
        let ready = self.is_ready();
        match envelope.message {
            ClientMessage::Ping => self.reply(&ServerMessage::Pong, r#ref, ctx),
            ClientMessage::Identify { .. } if ready => {
                return Some(CloseReason::AlreadyAuthenticated)
            }
            ClientMessage::Identify { token } => {
                let identity = match ctx.verifier.verify(&token) {
                    Ok(identity) => identity,
                    Err(e) => {
                        tracing::debug!(session = %self.session_id, reason = %e, "identify refused");
                        return Some(CloseReason::AuthenticationFailed);
                    }
                };
                let Ok(user) = ctx.admission.claim_user(identity) else {
                    return Some(CloseReason::TooManyConnections);
                };
                return self.become_ready(user, r#ref, None, now, ctx);
            }
            _ if !ready => return Some(CloseReason::NotAuthenticated),
            ClientMessage::Refresh { token } => self.refresh(&token, r#ref, now, ctx),
            ClientMessage::Subscribe { topics, since } => {
                self.subscribe(&topics, since, r#ref, now.instant, ctx)
            }
            ClientMessage::Unsubscribe { topics } => self.unsubscribe(&topics, r#ref, ctx),
            ClientMessage::TypingStart { topic } => {
                self.typing(&topic, TypingAction::Start, r#ref, ctx)
            }
            ClientMessage::TypingStop { topic } => {
                self.typing(&topic, TypingAction::Stop, r#ref, ctx)
            }
            ClientMessage::PresenceSet { status } => self.presence_set(status, r#ref, ctx),
            ClientMessage::PresenceQuery { user_ids } => self.presence_query(user_ids, r#ref, ctx),
            ClientMessage::Rpc { method, d } => self.rpc(method, d, r#ref, ctx),
            ClientMessage::History {
                topic,
                limit,
                since,
            } => self.history(&topic, limit, since, r#ref, ctx),
            ClientMessage::VoiceJoin { channel } => {
                self.voice(channel, VoiceAction::Join, r#ref, ctx)
            }
            ClientMessage::VoiceLeave { channel } => {
                self.voice(channel, VoiceAction::Leave, r#ref, ctx)
            }
            ClientMessage::VoiceAnswer { channel, sdp } => {
                self.voice(channel, VoiceAction::Answer { sdp }, r#ref, ctx)
            }
            ClientMessage::VoiceIceCandidate { channel, candidate } => {
                self.voice(channel, VoiceAction::IceCandidate { candidate }, r#ref, ctx)
            }
            ClientMessage::VoiceMute { channel } => {
                self.voice(channel, VoiceAction::Mute, r#ref, ctx)
            }
            ClientMessage::VoiceUnmute { channel } => {
                self.voice(channel, VoiceAction::Unmute, r#ref, ctx)
            }
        }
        None
    }

    /// Authenticated: subscribe the automatic topics and send `ready` (echoing the
    /// `identify`'s `ref`, carrying the backend's connect `data`).
    pub(super) fn become_ready(
        &mut self,
        user: AdmittedUser,
        r#ref: Option<u64>,
        data: Option<serde_json::Value>,
        now: Now,
        ctx: &mut SessionCtx,
    ) -> Option<CloseReason> {
        let identity = user.identity();
        let Ok(user_topic) = Topic::user(&identity.user_id) else {
            return Some(CloseReason::AuthenticationFailed);
        };
        let user_id = identity.user_id.to_string();
        let presence_topics = identity.presence_topics();
        self.deadline = expiry(identity, now);
        self.user = Some(user);
        self.lift_pre_ready_limits(ctx.config);
        let automatic = [user_topic, Topic::global()];
        // Exactly these two, which most connections keep alone: a vector's first
        // growth would make room for four.
        self.subscriptions.reserve_exact(automatic.len());
        for topic in &automatic {
            self.hold(topic.clone(), ctx);
        }
        // One more connection of the user; the hub's removal sends the matching
        // `Disconnect` ([`Session::presence_leave`]).
        ctx.events
            .push(SessionEvent::Presence(PresenceSignal::Connect {
                user_id: user_id.clone(),
                topics: presence_topics,
            }));
        self.reply(
            &ServerMessage::Ready {
                user_id,
                session_id: self.session_id.to_string(),
                topics: automatic.iter().map(|t| t.as_str().to_owned()).collect(),
                data,
            },
            r#ref,
            ctx,
        );
        None
    }

    fn refresh(&mut self, token: &str, r#ref: Option<u64>, now: Now, ctx: &mut SessionCtx) {
        let refused = |reason: &str| format!("refresh refused: {reason}");
        match ctx.verifier.verify(token) {
            Ok(mut identity) => {
                let exp = identity.expires_at;
                let deadline = expiry(&identity, now);
                // The connect call's `meta` belongs to the connection, not to a token.
                if let Some(meta) = self.identity().and_then(Identity::meta) {
                    let presence = identity.presence_claim().to_vec();
                    identity.extras = IdentityExtras::boxed(presence, Some(meta.clone()));
                }
                // Ready (refresh is refused before): the user is there.
                match self
                    .user
                    .as_mut()
                    .map(|user| user.replace_identity(identity))
                {
                    Some(Ok(())) => {
                        self.deadline = deadline;
                        self.reply(&ServerMessage::Refreshed { exp }, r#ref, ctx);
                    }
                    _ => self.reply_error(
                        ErrorCode::InvalidToken,
                        &refused("the token is for another user"),
                        r#ref,
                        ctx,
                    ),
                }
            }
            Err(e) => self.reply_error(
                ErrorCode::InvalidToken,
                &refused(&e.to_string()),
                r#ref,
                ctx,
            ),
        }
    }

    /// Adds `topic` to the connection's subscriptions and tells the shard.
    pub(super) fn hold(&mut self, topic: Topic, ctx: &mut SessionCtx) {
        self.subscriptions.push(topic.clone());
        ctx.events.push(SessionEvent::Subscribe(topic));
    }

    fn unsubscribe(&mut self, requested: &[String], r#ref: Option<u64>, ctx: &mut SessionCtx) {
        let mut removed = Vec::new();
        for raw in dedup(requested) {
            if let Ok(topic) = Topic::parse(raw) {
                if let Some(waits) = self.occasional.as_mut().filter(|o| o.membership_checks > 0) {
                    waits.unsubscribed_while_checking.push(topic.clone());
                }
                if let Some(at) = self.subscriptions.iter().position(|t| *t == topic) {
                    self.subscriptions.swap_remove(at);
                    // No longer a subscriber: its indicator there, if any, stops.
                    self.typing_signal(topic.clone(), TypingAction::Stop, ctx);
                    self.forget_replay(&topic);
                    ctx.events.push(SessionEvent::Unsubscribe(topic));
                }
            }
            removed.push(raw.to_owned());
        }
        self.reply(&ServerMessage::Unsubscribed { topics: removed }, r#ref, ctx);
    }

    /// `typing_start` / `typing_stop`: the typist must be subscribed to the topic. The
    /// connection remembers where it has an indicator open (so that its close can stop
    /// them) and hands the transition to the node, whose typing table dedups, rate-limits,
    /// expires and announces (`typing_start`/`typing_stop` to the topic's other
    /// subscribers on every node, never to the typist's own connections).
    fn typing(
        &mut self,
        raw_topic: &str,
        action: TypingAction,
        r#ref: Option<u64>,
        ctx: &mut SessionCtx,
    ) {
        let topic = match Topic::parse(raw_topic) {
            Ok(topic) if self.subscriptions.contains(&topic) => topic,
            _ => {
                self.reply_error(
                    ErrorCode::Forbidden,
                    "typing needs a subscription to the topic",
                    r#ref,
                    ctx,
                );
                return;
            }
        };
        self.typing_signal(topic, action, ctx);
    }

    /// Records the transition on this connection and tells the node. A stop for a topic
    /// where this connection had nothing open is still sent: another connection of the
    /// same user (on any node) may have started it, and the stop is user-level.
    fn typing_signal(&mut self, topic: Topic, action: TypingAction, ctx: &mut SessionCtx) {
        let open = self.typing_topics().iter().position(|t| *t == topic);
        match (action, open) {
            (TypingAction::Start, None) => self.occasional().typing.push(topic.clone()),
            (TypingAction::Stop, Some(at)) => {
                self.occasional().typing.swap_remove(at);
                self.release_occasional_if_unused();
            }
            // An unsubscribe stops only what this connection had open.
            (TypingAction::Stop, None) if !self.subscriptions.contains(&topic) => return,
            _ => {}
        }
        let Some(identity) = self.identity() else {
            return;
        };
        ctx.events.push(SessionEvent::Typing(TypingSignal {
            topic,
            user_id: identity.user_id.to_string(),
            name: identity.name.as_deref().map(str::to_owned),
            action,
        }));
    }

    /// `presence_set`: the node's presence table decides what to announce (only a
    /// change of what others see: `invisible` reads as `offline`). No reply.
    fn presence_set(&mut self, status: PresenceStatus, r#ref: Option<u64>, ctx: &mut SessionCtx) {
        if !status.is_settable_by_client() {
            self.reply_error(
                ErrorCode::BadRequest,
                "`offline` cannot be set: it follows the last connection's end",
                r#ref,
                ctx,
            );
            return;
        }
        let Some(identity) = self.identity() else {
            return;
        };
        ctx.events.push(SessionEvent::Presence(PresenceSignal::Set {
            user_id: identity.user_id.to_string(),
            status,
        }));
    }

    /// `rpc`: handed to the backend through the shard, at most `rpc_max_in_flight` at a
    /// time per connection (more are refused `limit`, so a client cannot make the
    /// backend hold more of its calls). The answer comes back as
    /// [`Session::answer_rpc`]. Like every message, it was charged to the event rate
    /// before it got here: a flood is refused before it reaches the backend.
    fn rpc(
        &mut self,
        method: String,
        d: serde_json::Value,
        r#ref: Option<u64>,
        ctx: &mut SessionCtx,
    ) {
        let max = ctx.config.rpc_max_in_flight;
        if self.rpc_in_flight() as usize >= max {
            self.reply_error(
                ErrorCode::Limit,
                &format!("at most {max} rpc calls in flight per connection"),
                r#ref,
                ctx,
            );
            return;
        }
        self.occasional().rpc_in_flight += 1;
        ctx.events.push(SessionEvent::Rpc { r#ref, method, d });
    }

    /// `presence_query`: at most [`MAX_PRESENCE_QUERY_USERS`] users (more is refused
    /// `limit`); answered `presence_state` by the node's presence table.
    fn presence_query(&mut self, user_ids: Vec<String>, r#ref: Option<u64>, ctx: &mut SessionCtx) {
        if user_ids.len() > MAX_PRESENCE_QUERY_USERS {
            self.reply_error(
                ErrorCode::Limit,
                &format!("at most {MAX_PRESENCE_QUERY_USERS} users per presence_query"),
                r#ref,
                ctx,
            );
            return;
        }
        ctx.events
            .push(SessionEvent::PresenceQuery { r#ref, user_ids });
    }
}

/// When a connection running as `identity` must be closed unless refreshed: its token's
/// `exp` (wall-clock seconds) as a deadline on the monotonic clock.
fn expiry(identity: &Identity, now: Now) -> std::time::Instant {
    // An `exp` centuries away (or none: a backend's connect call) would overflow the
    // monotonic clock: no connection outlives `MAX_SESSION_LIFETIME` unrefreshed.
    let left = Duration::from_secs(identity.expires_at.saturating_sub(now.unix_secs))
        .min(MAX_SESSION_LIFETIME);
    now.instant + left
}
