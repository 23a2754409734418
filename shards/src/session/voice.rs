//! Voice signaling on one connection (PROTOCOL.md §4–§5): which room the connection is
//! in (one at a time), who may join which (like a subscribe to `voice:<channel>`, by the
//! token's `topics`), and what the SFU says back. Media never passes here: the ops go to
//! the node's SFU as [`SessionEvent::Voice`], and its signals come back through
//! [`Session::answer_voice`] to the priority lane.

use std::time::Instant;

use coregate_protocol::{ErrorCode, ServerMessage, Topic};

use super::{Session, SessionCtx, SessionEvent};
use crate::voice::VoiceAction;

/// `voice_error` codes the session itself answers (PROTOCOL.md §5); the SFU adds
/// `room_full` and `bad_sdp`.
const NOT_IN_ROOM: &str = "not_in_room";
/// The most unanswered offers a connection is owed free answers for: the SFU has one
/// outstanding per session at a time, and a few may cross a rejoin.
const MAX_OWED_ANSWERS: u32 = 4;

impl Session {
    /// The voice channel this connection is in, if any.
    pub fn voice_channel(&self) -> Option<&str> {
        self.occasional.as_ref()?.voice.as_deref()
    }

    /// A `voice_*` op for `channel`. `voice_join` is authorized like a subscribe to
    /// `voice:<channel>` would be by the token's `topics` (whatever the authorizer: the
    /// membership stores decide topics, not rooms), leaves the room the connection was
    /// in, if another, and subscribes `voice:<channel>` for the backend's events to the
    /// room. Every other op needs the connection to be in that room.
    pub(super) fn voice(
        &mut self,
        channel: String,
        action: VoiceAction,
        r#ref: Option<u64>,
        ctx: &mut SessionCtx,
    ) {
        let joined = self.voice_channel() == Some(channel.as_str());
        if action != VoiceAction::Join {
            if !joined {
                let message = format!("not in the voice channel `{channel}`");
                return self.reply_voice_error(NOT_IN_ROOM, &message, &channel, r#ref, ctx);
            }
            if action == VoiceAction::Leave {
                self.forget_voice(ctx);
            }
            ctx.events.push(SessionEvent::Voice {
                channel,
                action,
                r#ref,
            });
            return;
        }
        let Ok(topic) = Topic::parse(&format!("voice:{channel}")) else {
            let message = "not a valid voice channel id";
            let code = ErrorCode::BadRequest.as_str();
            return self.reply_voice_error(code, message, &channel, r#ref, ctx);
        };
        let allowed = self
            .identity()
            .is_some_and(|identity| identity.topics.allows(&topic));
        if !allowed {
            let message = format!("not allowed in the voice channel `{channel}`");
            let code = ErrorCode::Forbidden.as_str();
            return self.reply_voice_error(code, &message, &channel, r#ref, ctx);
        }
        if !joined {
            if let Some(current) = self.voice_channel().map(str::to_owned) {
                self.forget_voice(ctx);
                ctx.events.push(SessionEvent::Voice {
                    channel: current,
                    action: VoiceAction::Leave,
                    r#ref: None,
                });
            }
            if self.subscriptions.len() >= ctx.config.max_subscriptions {
                let message = "subscription limit reached: the room's topic does not fit";
                let code = ErrorCode::Limit.as_str();
                return self.reply_voice_error(code, message, &channel, r#ref, ctx);
            }
            self.hold(topic, ctx);
            self.occasional().voice = Some(channel.clone());
        }
        ctx.events.push(SessionEvent::Voice {
            channel,
            action,
            r#ref,
        });
    }

    /// What the SFU says to this connection, with the `ref` of the op it answers if it
    /// answers one. `left`: the SFU no longer has it in that room (it left, timed out,
    /// or its join was refused).
    pub fn answer_voice(
        &mut self,
        message: ServerMessage,
        r#ref: Option<u64>,
        left: Option<String>,
        now: Instant,
        ctx: &mut SessionCtx,
    ) {
        if self.is_closing() {
            return;
        }
        if left.is_some() && left.as_deref() == self.voice_channel() {
            self.forget_voice(ctx);
        }
        if matches!(message, ServerMessage::VoiceOffer { .. }) {
            if let Some(occasional) = self.occasional.as_mut() {
                occasional.voice_answers_owed =
                    (occasional.voice_answers_owed + 1).min(MAX_OWED_ANSWERS);
            }
        }
        self.reply(&message, r#ref, ctx);
        // Signals are not answers to one request each: one the client does not read
        // counts against its control budget like any reply.
        self.enforce_control_budget(now, ctx);
    }

    /// Whether an answer is owed to an offer of the SFU's (and if so, it is now paid).
    pub(super) fn take_owed_voice_answer(&mut self) -> bool {
        match self.occasional.as_mut() {
            Some(occasional) if occasional.voice_answers_owed > 0 => {
                occasional.voice_answers_owed -= 1;
                true
            }
            _ => false,
        }
    }

    /// Out of the room: its topic is let go of, and no answer is owed any more.
    fn forget_voice(&mut self, ctx: &mut SessionCtx) {
        let Some(channel) = self.occasional.as_mut().and_then(|o| o.voice.take()) else {
            return;
        };
        if let Some(occasional) = self.occasional.as_mut() {
            occasional.voice_answers_owed = 0;
        }
        self.release_occasional_if_unused();
        let Ok(topic) = Topic::parse(&format!("voice:{channel}")) else {
            return;
        };
        if let Some(at) = self.subscriptions.iter().position(|t| *t == topic) {
            self.subscriptions.swap_remove(at);
            ctx.events.push(SessionEvent::Unsubscribe(topic));
        }
    }

    fn reply_voice_error(
        &mut self,
        code: &str,
        message: &str,
        channel: &str,
        r#ref: Option<u64>,
        ctx: &mut SessionCtx,
    ) {
        let error = ServerMessage::VoiceError {
            code: code.to_owned(),
            message: message.to_owned(),
            channel: Some(channel.to_owned()),
        };
        self.reply(&error, r#ref, ctx);
    }
}
