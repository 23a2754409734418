//! The optional `redis` subscribe authorizer (PROTOCOL.md §3): a user may subscribe to
//! `channel:`, `server:` and `presence:` topics only if `SISMEMBER <members-prefix><topic>
//! <sub>` says so. It is an extra gate after the namespace and claims rules.
//!
//! Shards are glommio executors and cannot run the redis crate's tokio code, so a check
//! goes to the node's ingestor thread as a [`MembershipCheck`] over flume, with a reply
//! channel. Verdicts are cached per shard (a thread-local: one shard per thread) for a
//! short configurable time, so a user re-subscribing, or many connections of one user,
//! cost one round trip. Failures are never cached.
//!
//! The check is installed once per process ([`install`]): the shards' configuration and
//! connection types do not carry it, and every shard of a node shares the same one.
//!
//! A cache miss waits for the answer on the shard's thread, bounded by the configured
//! timeout (a loopback Redis answers in well under a millisecond). The subscribe path is
//! synchronous today; making it wait without holding the shard needs a way for a task
//! other than the connection's own to queue the connection's reply.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
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
    pub reply: flume::Sender<Result<Vec<bool>, MembershipError>>,
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
    /// How long a shard waits for an answer.
    timeout: Duration,
}

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

    /// Asks the ingestor and waits (bounded) for the answer.
    fn ask(&self, user_id: &str, topics: Vec<Topic>) -> Result<Vec<bool>, MembershipError> {
        let expected = topics.len();
        let (reply, answer) = flume::bounded(1);
        self.checks
            .try_send(MembershipCheck {
                user_id: user_id.to_owned(),
                topics,
                reply,
            })
            .map_err(|e| match e {
                flume::TrySendError::Full(_) => MembershipError::Overloaded,
                flume::TrySendError::Disconnected(_) => MembershipError::Unavailable,
            })?;
        let verdicts = answer.recv_timeout(self.timeout).map_err(|e| match e {
            flume::RecvTimeoutError::Timeout => MembershipError::TimedOut(self.timeout),
            flume::RecvTimeoutError::Disconnected => MembershipError::Unavailable,
        })??;
        if verdicts.len() != expected {
            return Err(MembershipError::Store(format!(
                "{} answers for {expected} topics",
                verdicts.len()
            )));
        }
        Ok(verdicts)
    }
}

/// Installed a second time.
#[derive(Debug, thiserror::Error)]
#[error("a subscribe authorizer is already installed")]
pub struct AlreadyInstalled;

static AUTHORIZER: OnceLock<SharedAuthorizer> = OnceLock::new();

/// Makes every shard of this process check membership through `authorizer`. Call before
/// the shards start.
pub fn install(authorizer: SharedAuthorizer) -> Result<(), AlreadyInstalled> {
    AUTHORIZER.set(authorizer).map_err(|_| AlreadyInstalled)
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

thread_local! {
    static CACHE: RefCell<LocalVerdictCache> = RefCell::new(LocalVerdictCache::default());
}

/// One verdict per topic for `user_id`; every topic is allowed when no authorizer is
/// installed. Only gated topics should be passed.
pub fn check(user_id: &str, topics: &[Topic], now: Instant) -> Vec<Verdict> {
    let Some(authorizer) = AUTHORIZER.get() else {
        return vec![Verdict::Allowed; topics.len()];
    };
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        cache.check(user_id, topics, now, authorizer.cache_ttl, |missing| {
            authorizer.ask(user_id, missing)
        })
    })
}

/// A shard's recent verdicts, keyed by user and topic.
#[derive(Default)]
struct LocalVerdictCache {
    verdicts: HashMap<(Box<str>, Topic), (bool, Instant)>,
    /// When a warning was last logged, so that an outage logs once a second at most.
    last_warning: Option<Instant>,
}

impl LocalVerdictCache {
    /// Answers from the cache where it can, asks `fetch` once for the rest.
    fn check(
        &mut self,
        user_id: &str,
        topics: &[Topic],
        now: Instant,
        ttl: Duration,
        fetch: impl FnOnce(Vec<Topic>) -> Result<Vec<bool>, MembershipError>,
    ) -> Vec<Verdict> {
        let mut verdicts = Vec::with_capacity(topics.len());
        let mut missing = Vec::new();
        for topic in topics {
            let key = (Box::<str>::from(user_id), topic.clone());
            match self.verdicts.get(&key) {
                Some(&(allowed, expires)) if expires > now => verdicts.push(Some(allowed)),
                _ => {
                    verdicts.push(None);
                    missing.push(topic.clone());
                }
            }
        }
        if missing.is_empty() {
            return verdicts
                .into_iter()
                .map(|v| verdict(v == Some(true)))
                .collect();
        }
        let fetched = fetch(missing.clone());
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(error) => {
                self.warn(now, &error);
                return verdicts
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
        verdicts
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

    fn topics(names: &[&str]) -> Vec<Topic> {
        names.iter().map(|n| Topic::parse(n).unwrap()).collect()
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
    fn gated_namespaces() {
        assert!(is_gated(&Topic::parse("channel:1").unwrap()));
        assert!(is_gated(&Topic::parse("presence:u").unwrap()));
        assert!(!is_gated(&Topic::parse("user:u").unwrap()));
        assert!(!is_gated(&Topic::global()));
    }
}
