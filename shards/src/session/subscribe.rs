//! `subscribe` (PROTOCOL.md §3, §4): the fixed rules per namespace, the `redis`
//! authorizer's membership verdicts (cached by the shard, else asked for while the
//! shard serves everyone else), the subscription limit, and the replies.

use std::collections::BTreeMap;
use std::time::Instant;

use coregate_protocol::{ErrorCode, Namespace, ServerMessage, StreamPosition, Topic};

use super::{dedup, Session, SessionCtx, SessionEvent};
use crate::authorizer::{self, Lookup, MembershipAnswer, MembershipGate, Verdict};

/// What the fixed rules say about one requested topic.
pub(super) enum Rule {
    Allowed,
    Forbidden,
    /// Gated, and the `redis` authorizer decides.
    AskMembership,
}

/// A subscribe request once the rules were applied, until it is answered; it outlives
/// the message's handling when membership must be asked for.
#[derive(Debug)]
pub struct PendingSubscribe {
    r#ref: Option<u64>,
    since: Option<BTreeMap<String, StreamPosition>>,
    /// The topics the rules did not refuse, in request order, with their verdict; `None`
    /// while membership is being asked for.
    candidates: Vec<(String, Topic, Option<Verdict>)>,
    forbidden: Vec<String>,
    invalid: Vec<String>,
    /// Set while the membership store is asked: whose membership, and what was cached.
    question: Option<(String, Lookup)>,
}

impl PendingSubscribe {
    /// Who is asked about, and the topics to ask the store about.
    pub fn question(&self) -> Option<(&str, &[Topic])> {
        self.question
            .as_ref()
            .map(|(user_id, lookup)| (user_id.as_str(), lookup.missing()))
    }

    /// Takes the store's answer (or why there is none): cached by `gate`, then merged
    /// with the verdicts cached when the request was made.
    pub fn answer(&mut self, gate: &mut MembershipGate, answer: MembershipAnswer, now: Instant) {
        if let Some((user_id, lookup)) = self.question.take() {
            let verdicts = gate.record(&user_id, lookup, answer, now);
            self.decide(verdicts);
        }
    }

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
}

impl Session {
    /// What the rules of PROTOCOL.md §3 say about this connection's user subscribing to
    /// `topic`. With the `redis` authorizer (`membership`), the gated namespaces are left
    /// to Redis membership alone, except a topic already subscribed, which stays granted.
    pub(super) fn subscribe_rule(&self, topic: &Topic, membership: bool) -> Rule {
        let allowed = |allowed: bool| {
            if allowed {
                Rule::Allowed
            } else {
                Rule::Forbidden
            }
        };
        let Some(identity) = self.identity() else {
            return Rule::Forbidden;
        };
        match topic.namespace() {
            Namespace::Global => Rule::Allowed,
            Namespace::User => allowed(topic.id() == &*identity.user_id),
            // Joined through voice_join only.
            Namespace::Voice => Rule::Forbidden,
            _ if membership && authorizer::is_gated(topic) => {
                if self.subscriptions.contains(topic) {
                    Rule::Allowed
                } else {
                    Rule::AskMembership
                }
            }
            Namespace::Channel | Namespace::Server | Namespace::Presence => {
                allowed(identity.topics.allows(topic))
            }
        }
    }

    /// Answers at once when every verdict is known (always with the `claims` authorizer,
    /// and with `redis` when the shard's cache holds them all). Otherwise the request
    /// goes out as [`SessionEvent::CheckMembership`] and is finished by
    /// [`Session::complete_subscribe`] when the answer comes.
    pub(super) fn subscribe(
        &mut self,
        requested: &[String],
        since: Option<BTreeMap<String, StreamPosition>>,
        r#ref: Option<u64>,
        now: Instant,
        ctx: &mut SessionCtx,
    ) {
        let strays: Vec<String> = since
            .iter()
            .flat_map(|since| since.keys())
            .filter(|topic| !requested.contains(topic))
            .cloned()
            .collect();
        if !strays.is_empty() {
            self.reply(
                &ServerMessage::Error {
                    code: ErrorCode::BadRequest,
                    message: "`since` names topics this subscribe does not ask for".to_owned(),
                    topics: Some(strays),
                    retry_after_ms: None,
                },
                r#ref,
                ctx,
            );
        }
        let membership = ctx.membership.is_some();
        let mut request = PendingSubscribe {
            r#ref,
            since,
            candidates: Vec::new(),
            forbidden: Vec::new(),
            invalid: Vec::new(),
            question: None,
        };
        for raw in dedup(requested) {
            let Ok(topic) = Topic::parse(raw) else {
                request.invalid.push(raw.to_owned());
                continue;
            };
            let verdict = match self.subscribe_rule(&topic, membership) {
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
        let Some(gate) = ctx.membership.as_deref().filter(|_| !asked.is_empty()) else {
            self.finish_subscribe(request, ctx);
            return;
        };
        let user_id = self.user_id().unwrap_or_default().to_owned();
        let lookup = gate.lookup(&user_id, &asked, now);
        if let Some(verdicts) = lookup.complete() {
            request.decide(verdicts);
            self.finish_subscribe(request, ctx);
            return;
        }
        request.question = Some((user_id, lookup));
        self.occasional().membership_checks += 1;
        ctx.events.push(SessionEvent::CheckMembership(request));
    }

    /// A request that waited for membership is answered (see
    /// [`PendingSubscribe::answer`]): finish it, unless the connection is closing.
    pub fn complete_subscribe(
        &mut self,
        mut request: PendingSubscribe,
        now: Instant,
        ctx: &mut SessionCtx,
    ) {
        if let Some(waits) = self.occasional.as_mut() {
            request.forget(&waits.unsubscribed_while_checking);
            waits.membership_checks = waits.membership_checks.saturating_sub(1);
            if waits.membership_checks == 0 {
                waits.unsubscribed_while_checking = Vec::new();
            }
        }
        self.release_occasional_if_unused();
        if !self.is_closing() {
            self.finish_subscribe(request, ctx);
        }
        self.enforce_control_budget(now, ctx);
    }

    /// Subscribes what was allowed, within the connection's limit, and queues the
    /// replies: `subscribed` (unless every topic was refused), then one `error` per
    /// reason; when a granted topic has history, `subscribed` waits for its stream's
    /// read and so comes after the errors. A topic still without a verdict is refused
    /// `not_ready`, never granted.
    fn finish_subscribe(&mut self, request: PendingSubscribe, ctx: &mut SessionCtx) {
        let max = ctx.config.max_subscriptions;
        let PendingSubscribe {
            r#ref,
            since,
            candidates,
            mut forbidden,
            invalid,
            question: _,
        } = request;
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
            let already = self.subscriptions.contains(&topic);
            if !already && self.subscriptions.len() >= max {
                over_limit.push(raw);
                continue;
            }
            if !already {
                self.hold(topic, ctx);
            }
            granted.push(raw);
        }
        let nothing_refused = forbidden.is_empty()
            && invalid.is_empty()
            && over_limit.is_empty()
            && unavailable.is_empty();
        if !granted.is_empty() || nothing_refused {
            let since = since.map(|mut since| {
                since.retain(|topic, _| granted.contains(topic));
                since
            });
            self.reply_subscribed(granted, since, r#ref, ctx);
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
            if topics.is_empty() {
                continue;
            }
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
                ctx,
            );
        }
    }
}
