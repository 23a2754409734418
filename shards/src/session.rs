//! What a connection does with each client message (PROTOCOL.md §4): identify,
//! refresh, ping, subscribe, unsubscribe, typing. Replies go to the priority lane.

use std::collections::BTreeMap;
use std::time::Instant;

use coregate_protocol::{
    ClientEnvelope, ClientMessage, CloseCode, ErrorCode, Namespace, Publication, ServerMessage,
    Topic,
};

use crate::admission::UserSlot;
use crate::auth::Identity;
use crate::authorizer::{self, Verdict};
use crate::conn::{self, ConnDriver, Flow};

impl ConnDriver {
    pub(crate) fn handle_message(&mut self, envelope: ClientEnvelope) -> Flow {
        let r#ref = envelope.r#ref;
        let ready = self.conn.is_ready();
        match envelope.message {
            ClientMessage::Ping => {
                self.reply(&ServerMessage::Pong, r#ref);
                Flow::Continue
            }
            ClientMessage::Identify { .. } if ready => Flow::Close(CloseCode::AlreadyAuthenticated),
            ClientMessage::Identify { token } => match self.shard.verifier.verify(&token) {
                Ok(identity) => match self.shard.admission.claim_user(&identity.user_id) {
                    Ok(user_slot) => self.become_ready(identity, user_slot),
                    Err(_) => Flow::Close(CloseCode::TooManyConnections),
                },
                Err(e) => {
                    tracing::debug!(session = %self.conn.session_id, reason = %e, "identify refused");
                    Flow::Close(CloseCode::AuthenticationFailed)
                }
            },
            _ if !ready => Flow::Close(CloseCode::NotAuthenticated),
            ClientMessage::Refresh { token } => {
                self.refresh(&token, r#ref);
                Flow::Continue
            }
            ClientMessage::Subscribe { topics, since } => {
                self.subscribe(&topics, since.as_ref(), r#ref);
                Flow::Continue
            }
            ClientMessage::Unsubscribe { topics } => {
                self.unsubscribe(&topics, r#ref);
                Flow::Continue
            }
            ClientMessage::TypingStart { topic } => {
                self.typing(&topic, "typing_start", r#ref);
                Flow::Continue
            }
            ClientMessage::TypingStop { topic } => {
                self.typing(&topic, "typing_stop", r#ref);
                Flow::Continue
            }
            other => {
                self.reply_error(
                    ErrorCode::BadRequest,
                    &format!("`{}` is not available on this gateway yet", other.op()),
                    r#ref,
                );
                Flow::Continue
            }
        }
    }

    /// Authenticated: subscribe the automatic topics and send `ready`.
    pub(crate) fn become_ready(&mut self, identity: Identity, user_slot: UserSlot) -> Flow {
        conn::hold_user_slot(&self.conn, user_slot);
        let Ok(user_topic) = Topic::user(&identity.user_id) else {
            return Flow::Close(CloseCode::AuthenticationFailed);
        };
        let user_id = identity.user_id.clone();
        conn::set_identity(&self.conn, identity);
        let automatic = [user_topic, Topic::global()];
        for topic in &automatic {
            self.shard.subscribe(&self.conn, topic);
        }
        self.shard.flush_interest();
        self.reply(
            &ServerMessage::Ready {
                user_id,
                session_id: self.conn.session_id.to_string(),
                topics: automatic.iter().map(|t| t.as_str().to_owned()).collect(),
            },
            None,
        );
        Flow::Continue
    }

    fn refresh(&mut self, token: &str, r#ref: Option<u64>) {
        let refused = |reason: &str| format!("refresh refused: {reason}");
        match self.shard.verifier.verify(token) {
            Ok(identity) => {
                let same_user = self.conn.user_id_is(&identity.user_id);
                if !same_user {
                    self.reply_error(
                        ErrorCode::InvalidToken,
                        &refused("the token is for another user"),
                        r#ref,
                    );
                    return;
                }
                let exp = identity.expires_at;
                conn::set_identity(&self.conn, identity);
                self.reply(&ServerMessage::Refreshed { exp }, r#ref);
            }
            Err(e) => self.reply_error(ErrorCode::InvalidToken, &refused(&e.to_string()), r#ref),
        }
    }

    /// Whether this connection's user may subscribe to `topic` (PROTOCOL.md §3).
    fn may_subscribe(&self, topic: &Topic) -> bool {
        conn::with_identity(&self.conn, |identity| {
            let Some(identity) = identity else {
                return false;
            };
            match topic.namespace() {
                Namespace::Global => true,
                Namespace::User => topic.id() == identity.user_id,
                // Joined through voice_join only.
                Namespace::Voice => false,
                Namespace::Channel | Namespace::Server | Namespace::Presence => {
                    identity.topics.allows(topic)
                }
            }
        })
    }

    fn subscribe(
        &mut self,
        requested: &[String],
        since: Option<&BTreeMap<String, u64>>,
        r#ref: Option<u64>,
    ) {
        let max = self.shard.config.max_subscriptions;
        let mut granted = Vec::new();
        let mut forbidden = Vec::new();
        let mut invalid = Vec::new();
        let mut over_limit = Vec::new();
        let mut unavailable = Vec::new();
        let mut allowed = Vec::new();
        for raw in dedup(requested) {
            let Ok(topic) = Topic::parse(raw) else {
                invalid.push(raw.to_owned());
                continue;
            };
            if !self.may_subscribe(&topic) {
                forbidden.push(raw.to_owned());
                continue;
            }
            allowed.push((raw, topic));
        }
        for ((raw, topic), verdict) in self.check_membership(allowed) {
            match verdict {
                Verdict::Allowed => {}
                Verdict::Denied => {
                    forbidden.push(raw.to_owned());
                    continue;
                }
                Verdict::Unavailable => {
                    unavailable.push(raw.to_owned());
                    continue;
                }
            }
            let already = self.conn.subscriptions().contains(&topic);
            if !already && self.conn.subscriptions().len() >= max {
                over_limit.push(raw.to_owned());
                continue;
            }
            if !already {
                self.shard.subscribe(&self.conn, &topic);
            }
            granted.push(raw.to_owned());
        }
        self.shard.flush_interest();
        let nothing_refused = forbidden.is_empty()
            && invalid.is_empty()
            && over_limit.is_empty()
            && unavailable.is_empty();
        if !granted.is_empty() || nothing_refused {
            // No history is kept yet, so nothing missed can be recovered.
            let recovered = since.map(|since| {
                granted
                    .iter()
                    .filter(|t| since.contains_key(*t))
                    .map(|t| (t.clone(), false))
                    .collect()
            });
            self.reply(
                &ServerMessage::Subscribed {
                    topics: granted,
                    recovered,
                },
                r#ref,
            );
        }
        let refusals = [
            (
                ErrorCode::Forbidden,
                forbidden,
                "not allowed to subscribe to these topics",
            ),
            (
                ErrorCode::InvalidTopic,
                invalid,
                "these are not valid topics",
            ),
            (ErrorCode::Limit, over_limit, "subscription limit reached"),
            (
                ErrorCode::NotReady,
                unavailable,
                "membership could not be checked now; try again",
            ),
        ];
        for (code, topics, message) in refusals {
            if !topics.is_empty() {
                let message = if code == ErrorCode::Limit {
                    format!("{message} (at most {max} per connection)")
                } else {
                    message.to_owned()
                };
                self.reply(
                    &ServerMessage::Error {
                        code,
                        message,
                        topics: Some(topics),
                        retry_after_ms: None,
                    },
                    r#ref,
                );
            }
        }
    }

    /// The configured authorizer's verdict on each topic the namespace and claims rules
    /// allowed (PROTOCOL.md §3). Topics already subscribed, and namespaces it does not
    /// gate, are not asked about.
    fn check_membership<'r>(
        &self,
        allowed: Vec<(&'r str, Topic)>,
    ) -> impl Iterator<Item = ((&'r str, Topic), Verdict)> {
        let asked: Vec<Topic> = allowed
            .iter()
            .map(|(_, topic)| topic)
            .filter(|topic| {
                authorizer::is_gated(topic) && !self.conn.subscriptions().contains(topic)
            })
            .cloned()
            .collect();
        let verdicts = if asked.is_empty() {
            Vec::new()
        } else {
            let user_id = conn::with_identity(&self.conn, |identity| {
                identity.map(|i| i.user_id.clone()).unwrap_or_default()
            });
            authorizer::check(&user_id, &asked, Instant::now())
        };
        let mut verdicts = asked.into_iter().zip(verdicts);
        let mut next_asked = verdicts.next();
        allowed.into_iter().map(move |(raw, topic)| {
            let verdict = match &next_asked {
                Some((asked, verdict)) if *asked == topic => {
                    let verdict = *verdict;
                    next_asked = verdicts.next();
                    verdict
                }
                _ => Verdict::Allowed,
            };
            ((raw, topic), verdict)
        })
    }

    fn unsubscribe(&mut self, requested: &[String], r#ref: Option<u64>) {
        let mut removed = Vec::new();
        for raw in dedup(requested) {
            if let Ok(topic) = Topic::parse(raw) {
                self.shard.unsubscribe(&self.conn, &topic);
            }
            removed.push(raw.to_owned());
        }
        self.shard.flush_interest();
        self.reply(&ServerMessage::Unsubscribed { topics: removed }, r#ref);
    }

    /// `typing_start` / `typing_stop`: published to the topic's other subscribers,
    /// on every node; the typist must be subscribed to the topic.
    fn typing(&mut self, raw_topic: &str, op: &str, r#ref: Option<u64>) {
        let topic = match Topic::parse(raw_topic) {
            Ok(topic) if self.conn.subscriptions().contains(&topic) => topic,
            _ => {
                self.reply_error(
                    ErrorCode::Forbidden,
                    "typing needs a subscription to the topic",
                    r#ref,
                );
                return;
            }
        };
        let (user_id, name) = conn::with_identity(&self.conn, |identity| {
            identity
                .map(|i| (i.user_id.clone(), i.name.clone()))
                .unwrap_or_default()
        });
        let mut d = serde_json::json!({ "user_id": user_id });
        if let Some(name) = name {
            d["name"] = serde_json::Value::String(name);
        }
        self.shard
            .publish(Publication::new(topic, op, d, Some(user_id)));
    }
}

/// The requested topics without repeats, in request order.
fn dedup(requested: &[String]) -> impl Iterator<Item = &str> {
    requested
        .iter()
        .enumerate()
        .filter(move |(i, t)| !requested[..*i].contains(t))
        .map(|(_, t)| t.as_str())
}
