//! The optional `redis` subscribe authorizer (PROTOCOL.md §3). Authorization of
//! `subscribe` is pluggable: with `claims` (the default, nothing installed here) the token's
//! `topics` claim decides; with `redis` (installed) `SISMEMBER <members-prefix><topic>
//! <sub>` alone decides for the gated namespaces, `channel:`, `server:` and `presence:`.
//! The fixed rules for `user:`, `global` and `voice:` apply either way.
//!
//! Shards are glommio executors and cannot run the redis crate's tokio code, so a check
//! goes to the node's ingestor thread as a [`MembershipCheck`] over flume, with a reply
//! channel. Verdicts are cached per shard (each shard's hub owns a [`MembershipGate`])
//! for a short configurable time, so a user re-subscribing, or many connections of one
//! user, cost one round trip. Failures are never cached.
//!
//! The binary makes one [`SharedAuthorizer`] per node and hands it to `start_shards`;
//! every shard wraps it in a gate of its own.
//!
//! A shard serves thousands of connections, so nothing here waits: the session's
//! subscribe takes the cached verdicts ([`MembershipGate::lookup`]); on a miss the hub
//! sends the check ([`MembershipGate::send_check`]), the driver awaits the reply in a
//! task of its own, bounded by [`MembershipGate::timeout`], and the hub hands the answer
//! to [`MembershipGate::record`], which caches it and merges it with the cached verdicts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use coregate_protocol::{Namespace, Topic};

/// Verdicts a shard keeps at most; past this, expired ones are dropped, then all.
const MAX_CACHED_VERDICTS: usize = 65_536;

/// One user's membership question about some topics, answered by the ingestor with one
/// verdict per topic, in order.
#[derive(Debug)]
pub struct MembershipCheck {
    pub user_id: String,
    pub topics: Vec<Topic>,
    pub reply: flume::Sender<MembershipAnswer>,
}

/// Why membership could not be checked. The topic is refused (`not_ready`), not granted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MembershipError {
    #[error("the membership store is not connected")]
    Unavailable,
    #[error("the membership check took longer than {0:?}")]
    TimedOut(Duration),
    #[error("the membership store failed: {0}")]
    Store(String),
    #[error("the membership checker is overloaded")]
    Overloaded,
}

/// The node's membership checker, as every shard sees it.
#[derive(Debug, Clone)]
pub struct SharedAuthorizer {
    checks: flume::Sender<MembershipCheck>,
    /// How long a verdict is reused.
    cache_ttl: Duration,
    /// How long a subscribe waits for an answer before refusing with `not_ready`.
    timeout: Duration,
}

/// The ingestor's answer to one [`MembershipCheck`].
pub type MembershipAnswer = Result<Vec<bool>, MembershipError>;

impl SharedAuthorizer {
    pub fn new(
        checks: flume::Sender<MembershipCheck>,
        cache_ttl: Duration,
        timeout: Duration,
    ) -> SharedAuthorizer {
        SharedAuthorizer {
            checks,
            cache_ttl,
            timeout,
        }
    }
}

/// A shard's side of the `redis` authorizer: the node's checker and this shard's
/// cached verdicts. Owned by the shard's hub, so no lock and no thread-local.
#[derive(Debug)]
pub struct MembershipGate {
    authorizer: SharedAuthorizer,
    cache: LocalVerdictCache,
}

impl MembershipGate {
    pub fn new(authorizer: SharedAuthorizer) -> MembershipGate {
        MembershipGate {
            authorizer,
            cache: LocalVerdictCache::default(),
        }
    }

    /// How long the caller should wait for an answer to [`Self::send_check`].
    pub fn timeout(&self) -> Duration {
        self.authorizer.timeout
    }

    /// The verdicts this shard has cached for `user_id` on `topics` (only gated ones).
    pub(crate) fn lookup(&self, user_id: &str, topics: &[Topic], now: Instant) -> Lookup {
        self.cache.lookup(user_id, topics, now)
    }

    /// Sends the question to the ingestor without waiting; the answer comes on the
    /// returned receiver. Refused at once when the ingestor's queue is full or gone, so
    /// that a shard never waits for room either.
    pub(crate) fn send_check(
        &self,
        user_id: &str,
        topics: Vec<Topic>,
    ) -> Result<flume::Receiver<MembershipAnswer>, MembershipError> {
        let (reply, answer) = flume::bounded(1);
        self.authorizer
            .checks
            .try_send(MembershipCheck {
                user_id: user_id.to_owned(),
                topics,
                reply,
            })
            .map_err(|e| match e {
                flume::TrySendError::Full(_) => MembershipError::Overloaded,
                flume::TrySendError::Disconnected(_) => MembershipError::Unavailable,
            })?;
        Ok(answer)
    }

    /// Completes `lookup` with the answer about its missing topics (or why there is
    /// none): caches what was answered, logs a failure (rate-limited), and returns one
    /// verdict per topic originally looked up.
    pub(crate) fn record(
        &mut self,
        user_id: &str,
        lookup: Lookup,
        answer: MembershipAnswer,
        now: Instant,
    ) -> Vec<Verdict> {
        let ttl = self.authorizer.cache_ttl;
        self.cache.record(user_id, lookup, answer, now, ttl)
    }
}

/// What the authorizer says about one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
    /// The check failed; the topic is refused with `not_ready`, the client may retry.
    Unavailable,
}

/// Whether a topic's namespace is gated by the authorizer; the others have fixed rules.
pub fn is_gated(topic: &Topic) -> bool {
    matches!(
        topic.namespace(),
        Namespace::Channel | Namespace::Server | Namespace::Presence
    )
}

/// The cached verdicts on some topics, and the topics that must be asked about.
#[derive(Debug)]
pub(crate) struct Lookup {
    /// One per topic looked up, in order; `None` where nothing fresh is cached.
    cached: Vec<Option<bool>>,
    missing: Vec<Topic>,
}

impl Lookup {
    /// The topics without a fresh verdict, in order: what to send to the ingestor.
    pub(crate) fn missing(&self) -> &[Topic] {
        &self.missing
    }

    /// Every verdict, when all were cached; `None` when some must be asked for.
    pub(crate) fn complete(&self) -> Option<Vec<Verdict>> {
        self.cached
            .iter()
            .map(|cached| cached.map(verdict))
            .collect()
    }
}

/// A shard's recent verdicts, keyed by user and topic.
#[derive(Default, Debug)]
struct LocalVerdictCache {
    verdicts: HashMap<(Box<str>, Topic), (bool, Instant)>,
    /// When a warning was last logged, so that an outage logs once a second at most.
    last_warning: Option<Instant>,
}

impl LocalVerdictCache {
    fn lookup(&self, user_id: &str, topics: &[Topic], now: Instant) -> Lookup {
        let mut cached = Vec::with_capacity(topics.len());
        let mut missing = Vec::new();
        for topic in topics {
            let key = (Box::<str>::from(user_id), topic.clone());
            match self.verdicts.get(&key) {
                Some(&(allowed, expires)) if expires > now => cached.push(Some(allowed)),
                _ => {
                    cached.push(None);
                    missing.push(topic.clone());
                }
            }
        }
        Lookup { cached, missing }
    }

    fn record(
        &mut self,
        user_id: &str,
        lookup: Lookup,
        answer: MembershipAnswer,
        now: Instant,
        ttl: Duration,
    ) -> Vec<Verdict> {
        let Lookup { cached, missing } = lookup;
        let answer = answer.and_then(|fetched| {
            if fetched.len() == missing.len() {
                Ok(fetched)
            } else {
                Err(MembershipError::Store(format!(
                    "{} answers for {} topics",
                    fetched.len(),
                    missing.len()
                )))
            }
        });
        let fetched = match answer {
            Ok(fetched) => fetched,
            Err(error) => {
                self.warn(now, &error);
                return cached
                    .into_iter()
                    .map(|v| v.map_or(Verdict::Unavailable, verdict))
                    .collect();
            }
        };
        self.make_room(now, missing.len());
        for (topic, allowed) in missing.into_iter().zip(&fetched) {
            self.verdicts
                .insert((user_id.into(), topic), (*allowed, now + ttl));
        }
        let mut fetched = fetched.into_iter();
        cached
            .into_iter()
            .map(|v| verdict(v.or_else(|| fetched.next()).unwrap_or(false)))
            .collect()
    }

    fn make_room(&mut self, now: Instant, needed: usize) {
        if self.verdicts.len() + needed <= MAX_CACHED_VERDICTS {
            return;
        }
        self.verdicts.retain(|_, (_, expires)| *expires > now);
        if self.verdicts.len() + needed > MAX_CACHED_VERDICTS {
            self.verdicts.clear();
        }
    }

    fn warn(&mut self, now: Instant, error: &MembershipError) {
        if self
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(1))
        {
            self.last_warning = Some(now);
            tracing::warn!(%error, "subscribe refused: membership check failed");
        }
    }
}

fn verdict(allowed: bool) -> Verdict {
    if allowed {
        Verdict::Allowed
    } else {
        Verdict::Denied
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::cell::RefCell;

    fn topics(names: &[&str]) -> Vec<Topic> {
        names.iter().map(|n| Topic::parse(n).unwrap()).collect()
    }

    impl LocalVerdictCache {
        /// What a subscribe does: look up, ask `fetch` for the missing ones if any, record.
        fn check(
            &mut self,
            user_id: &str,
            topics: &[Topic],
            now: Instant,
            ttl: Duration,
            fetch: impl FnOnce(Vec<Topic>) -> MembershipAnswer,
        ) -> Vec<Verdict> {
            let lookup = self.lookup(user_id, topics, now);
            if let Some(verdicts) = lookup.complete() {
                return verdicts;
            }
            let answer = fetch(lookup.missing().to_vec());
            self.record(user_id, lookup, answer, now, ttl)
        }
    }

    #[test]
    fn cached_verdicts_are_reused_until_they_expire() {
        let mut cache = LocalVerdictCache::default();
        let ttl = Duration::from_secs(5);
        let t0 = Instant::now();
        let asked = RefCell::new(Vec::new());
        let fetch = |missing: Vec<Topic>| {
            asked.borrow_mut().push(missing.clone());
            Ok(missing
                .iter()
                .map(|t| t.as_str() == "channel:1")
                .collect::<Vec<_>>())
        };
        let both = topics(&["channel:1", "channel:2"]);
        assert_eq!(
            cache.check("u", &both, t0, ttl, fetch),
            vec![Verdict::Allowed, Verdict::Denied]
        );
        assert_eq!(
            cache.check("u", &both, t0 + Duration::from_secs(4), ttl, fetch),
            vec![Verdict::Allowed, Verdict::Denied]
        );
        assert_eq!(asked.borrow().len(), 1, "second check answered from cache");
        // Another user is asked about separately.
        cache.check("v", &topics(&["channel:1"]), t0, ttl, fetch);
        assert_eq!(asked.borrow().len(), 2);
        // Expired: asked again, only for the expired one alongside a fresh one.
        let three = topics(&["channel:1", "server:3"]);
        cache.check("u", &three, t0 + Duration::from_secs(6), ttl, fetch);
        assert_eq!(asked.borrow()[2], three);
    }

    #[test]
    fn failures_refuse_unknown_topics_and_are_not_cached() {
        let mut cache = LocalVerdictCache::default();
        let ttl = Duration::from_secs(5);
        let t0 = Instant::now();
        let ok = |missing: Vec<Topic>| Ok(vec![true; missing.len()]);
        cache.check("u", &topics(&["channel:1"]), t0, ttl, ok);
        let down = |_: Vec<Topic>| Err(MembershipError::Unavailable);
        assert_eq!(
            cache.check("u", &topics(&["channel:1", "channel:2"]), t0, ttl, down),
            vec![Verdict::Allowed, Verdict::Unavailable]
        );
        assert_eq!(
            cache.check("u", &topics(&["channel:2"]), t0, ttl, ok),
            vec![Verdict::Allowed],
            "the failure was not remembered"
        );
    }

    #[test]
    fn an_answer_of_the_wrong_length_is_a_failure() {
        let mut cache = LocalVerdictCache::default();
        let ttl = Duration::from_secs(5);
        let t0 = Instant::now();
        let short = |_: Vec<Topic>| Ok(vec![true]);
        assert_eq!(
            cache.check("u", &topics(&["channel:1", "channel:2"]), t0, ttl, short),
            vec![Verdict::Unavailable, Verdict::Unavailable]
        );
        assert!(cache.verdicts.is_empty());
    }

    #[test]
    fn gated_namespaces() {
        assert!(is_gated(&Topic::parse("channel:1").unwrap()));
        assert!(is_gated(&Topic::parse("presence:u").unwrap()));
        assert!(!is_gated(&Topic::parse("user:u").unwrap()));
        assert!(!is_gated(&Topic::global()));
    }
}
