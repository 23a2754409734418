//! What a connection does with each client message (PROTOCOL.md §4): identify,
//! refresh, ping, subscribe, unsubscribe, typing. Replies go to the priority lane; a
//! subscribe waiting for a membership check is answered later, from a task of its own.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use coregate_protocol::{
    ClientEnvelope, ClientMessage, CloseCode, ErrorCode, Namespace, Publication, ServerMessage,
    Topic,
};
use futures_lite::future;

use crate::admission::UserSlot;
use crate::auth::Identity;
use crate::authorizer::{self, MembershipError, Verdict};
use crate::conn::{self, ConnDriver, Flow, LocalConn};
use crate::shard::LocalShard;

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

    /// What the rules of PROTOCOL.md §3 say about this connection's user subscribing to
    /// `topic`. With the `redis` authorizer (`membership`), the gated namespaces are left
    /// to Redis membership alone, except a topic already subscribed, which stays granted.
    fn subscribe_rule(&self, topic: &Topic, membership: bool) -> Rule {
        let allowed = |allowed: bool| {
            if allowed {
                Rule::Allowed
            } else {
                Rule::Forbidden
            }
        };
        conn::with_identity(&self.conn, |identity| {
            let Some(identity) = identity else {
                return Rule::Forbidden;
            };
            match topic.namespace() {
                Namespace::Global => Rule::Allowed,
                Namespace::User => allowed(topic.id() == identity.user_id),
                // Joined through voice_join only.
                Namespace::Voice => Rule::Forbidden,
                _ if membership && authorizer::is_gated(topic) => {
                    if self.conn.subscriptions().contains(topic) {
                        Rule::Allowed
                    } else {
                        Rule::AskMembership
                    }
                }
                Namespace::Channel | Namespace::Server | Namespace::Presence => {
                    allowed(identity.topics.allows(topic))
                }
            }
        })
    }

    /// Answers at once when every verdict is known (always with the `claims` authorizer,
    /// and with `redis` when the shard's cache holds them all). Otherwise the membership
    /// check is sent and a task of its own finishes the subscribe when the answer comes:
    /// the shard goes on serving its other connections meanwhile.
    fn subscribe(
        &mut self,
        requested: &[String],
        since: Option<&BTreeMap<String, u64>>,
        r#ref: Option<u64>,
    ) {
        let authorizer = authorizer::installed();
        let mut request = PendingSubscribe {
            r#ref,
            candidates: Vec::new(),
            forbidden: Vec::new(),
            invalid: Vec::new(),
        };
        for raw in dedup(requested) {
            let Ok(topic) = Topic::parse(raw) else {
                request.invalid.push(raw.to_owned());
                continue;
            };
            let verdict = match self.subscribe_rule(&topic, authorizer.is_some()) {
                Rule::Forbidden => {
                    request.forbidden.push(raw.to_owned());
                    continue;
                }
                Rule::Allowed => Some(Verdict::Allowed),
                Rule::AskMembership => None,
            };
            request.candidates.push((raw.to_owned(), topic, verdict));
        }
        let asked = request.undecided();
        let Some(authorizer) = authorizer.filter(|_| !asked.is_empty()) else {
            request.finish(&self.shard, &self.conn, since);
            return;
        };
        let user_id = conn::with_identity(&self.conn, |identity| {
            identity.map(|i| i.user_id.clone()).unwrap_or_default()
        });
        let now = Instant::now();
        let lookup = authorizer.lookup(&user_id, &asked, now);
        if let Some(verdicts) = lookup.complete() {
            request.decide(verdicts);
            request.finish(&self.shard, &self.conn, since);
            return;
        }
        let answer = match authorizer.send_check(&user_id, lookup.missing().to_vec()) {
            Ok(answer) => answer,
            Err(error) => {
                request.decide(authorizer.record(&user_id, lookup, Err(error), now));
                request.finish(&self.shard, &self.conn, since);
                return;
            }
        };
        let shard = self.shard.clone();
        shard.check_started(&self.conn);
        let key = self.conn.key;
        // Weak: the shard's table and the connection's task let go of their references
        // together, in the same step, when the connection ends (`run_session`), so a
        // failed upgrade means the connection is gone; and a slow check keeps no closed
        // connection's memory alive.
        let conn = Rc::downgrade(&self.conn);
        let since = since.cloned();
        let timeout = authorizer.timeout();
        glommio::spawn_local(async move {
            let answer = future::or(
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
            // Recorded even for a connection gone meanwhile: the next subscribe uses it.
            let verdicts = authorizer.record(&user_id, lookup, answer, Instant::now());
            let unsubscribed_meanwhile = shard.check_finished(key);
            let Some(conn) = conn.upgrade() else {
                return;
            };
            if conn.is_closing() {
                return;
            }
            request.decide(verdicts);
            request.forget(&unsubscribed_meanwhile);
            request.finish(&shard, &conn, since.as_ref());
        })
        .detach();
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

/// What the fixed rules say about one requested topic.
enum Rule {
    Allowed,
    Forbidden,
    /// Gated, and the `redis` authorizer decides.
    AskMembership,
}

/// A subscribe request once the rules were applied, until it is answered; it outlives
/// the message's handling when membership must be asked for.
struct PendingSubscribe {
    r#ref: Option<u64>,
    /// The topics the rules did not refuse, in request order, with their verdict; `None`
    /// while membership is being asked for.
    candidates: Vec<(String, Topic, Option<Verdict>)>,
    forbidden: Vec<String>,
    invalid: Vec<String>,
}

impl PendingSubscribe {
    /// The topics waiting for a membership verdict, in order.
    fn undecided(&self) -> Vec<Topic> {
        self.candidates
            .iter()
            .filter(|(_, _, verdict)| verdict.is_none())
            .map(|(_, topic, _)| topic.clone())
            .collect()
    }

    /// Leaves out topics the client unsubscribed from while this request waited: its
    /// later word wins, so they are neither subscribed nor reported.
    fn forget(&mut self, unsubscribed: &[Topic]) {
        self.candidates
            .retain(|(_, topic, _)| !unsubscribed.contains(topic));
    }

    /// Gives the undecided topics their verdicts, in the order of [`Self::undecided`].
    fn decide(&mut self, verdicts: Vec<Verdict>) {
        let mut verdicts = verdicts.into_iter();
        for (_, _, verdict) in &mut self.candidates {
            if verdict.is_none() {
                *verdict = verdicts.next();
            }
        }
    }

    /// Subscribes what was allowed, within the connection's limit, and queues the
    /// replies: `subscribed` (unless every topic was refused), then one `error` per
    /// reason. A topic still without a verdict is refused `not_ready`, never granted.
    fn finish(self, shard: &LocalShard, conn: &LocalConn, since: Option<&BTreeMap<String, u64>>) {
        let max = shard.config.max_subscriptions;
        let PendingSubscribe {
            r#ref,
            candidates,
            mut forbidden,
            invalid,
        } = self;
        let mut granted = Vec::new();
        let mut over_limit = Vec::new();
        let mut unavailable = Vec::new();
        for (raw, topic, verdict) in candidates {
            match verdict.unwrap_or(Verdict::Unavailable) {
                Verdict::Allowed => {}
                Verdict::Denied => {
                    forbidden.push(raw);
                    continue;
                }
                Verdict::Unavailable => {
                    unavailable.push(raw);
                    continue;
                }
            }
            let already = conn.subscriptions().contains(&topic);
            if !already && conn.subscriptions().len() >= max {
                over_limit.push(raw);
                continue;
            }
            if !already {
                shard.subscribe(conn, &topic);
            }
            granted.push(raw);
        }
        shard.flush_interest();
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
            conn::queue_reply(
                shard,
                conn,
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
                conn::queue_reply(
                    shard,
                    conn,
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
}
