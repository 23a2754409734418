//! Typing indicators, node-wide (PROTOCOL.md §4–§5): a sans-IO table that takes `now`.
//!
//! Shards hand over each connection's transitions ([`TypingSignal`]s); the table turns
//! them into user-level announcements:
//!
//! - the first `typing_start` of a user on a topic is announced; a repeat within
//!   `--typing-ttl`, from any connection of the user, only extends the indicator;
//! - `typing_stop` (or the connection's close) announces exactly one `typing_stop` if an
//!   indicator was open; silence for the TTL does the same ([`TypingTable::handle_timeout`]);
//! - a user's `typing_start`s closer together than [`TYPING_MIN_INTERVAL`] are dropped
//!   quietly (clients throttle to about one a second), whatever the topic; stops are
//!   never dropped, so that no indicator stays on because of the rate.
//!
//! Without Redis the table is the whole of it ([`super::run_embedded`]). With Redis the
//! dedup and the deadlines live in Redis ([`super::typing_redis`]) and only the rate
//! ([`TypingRate`]) is kept here, per node.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use coregate_protocol::{Publication, Topic};
use coregate_shards::bus::announcement;
use coregate_shards::{TypingAction, TypingSignal};

/// The per-user typing rate: at most one `typing_start` a second per user (and node);
/// more is dropped quietly. Not a setting, as the ping allowance is not: clients throttle
/// their `typing_start`s to one every few seconds, so only a misbehaving one meets it.
pub const TYPING_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The per-user rate of `typing_start`s.
#[derive(Debug, Default)]
pub struct TypingRate {
    /// When each user's last accepted `typing_start` was taken.
    last: HashMap<String, Instant>,
}

impl TypingRate {
    /// Whether `user_id` may start (or extend) an indicator at `now`; counts it if so.
    pub fn allow(&mut self, user_id: &str, now: Instant) -> bool {
        match self.last.get_mut(user_id) {
            Some(last) if now.saturating_duration_since(*last) < TYPING_MIN_INTERVAL => false,
            Some(last) => {
                *last = now;
                true
            }
            None => {
                self.last.insert(user_id.to_owned(), now);
                true
            }
        }
    }

    /// Forgets users whose last start is older than the interval: memory stays
    /// proportional to the users typing in the last second.
    pub fn prune(&mut self, now: Instant) {
        self.last
            .retain(|_, last| now.saturating_duration_since(*last) < TYPING_MIN_INTERVAL);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.last.len()
    }
}

/// An open indicator.
#[derive(Debug)]
struct Indicator {
    name: Option<String>,
    deadline: Instant,
}

/// The node's typing state without Redis; see the module docs.
#[derive(Debug)]
pub struct TypingTable {
    ttl: Duration,
    rate: TypingRate,
    open: HashMap<(Topic, String), Indicator>,
    /// Deadlines, earliest first; an entry whose indicator was extended or stopped since
    /// is stale and skipped when it comes up.
    deadlines: BinaryHeap<Reverse<(Instant, Topic, String)>>,
}

impl TypingTable {
    pub fn new(ttl: Duration) -> TypingTable {
        TypingTable {
            ttl,
            rate: TypingRate::default(),
            open: HashMap::new(),
            deadlines: BinaryHeap::new(),
        }
    }

    /// Applies one connection's transition; the announcement to publish, if any.
    pub fn handle(&mut self, signal: TypingSignal, now: Instant) -> Option<Publication> {
        match signal.action {
            TypingAction::Start => self.start(signal, now),
            TypingAction::Stop => self.stop(&signal.topic, &signal.user_id),
        }
    }

    fn start(&mut self, signal: TypingSignal, now: Instant) -> Option<Publication> {
        if !self.rate.allow(&signal.user_id, now) {
            return None;
        }
        let deadline = now + self.ttl;
        let key = (signal.topic, signal.user_id);
        self.deadlines
            .push(Reverse((deadline, key.0.clone(), key.1.clone())));
        if let Some(open) = self.open.get_mut(&key) {
            open.deadline = deadline;
            return None;
        }
        let publication = announcement(&key.0, &key.1, signal.name.as_deref(), TypingAction::Start);
        self.open.insert(
            key,
            Indicator {
                name: signal.name,
                deadline,
            },
        );
        Some(publication)
    }

    fn stop(&mut self, topic: &Topic, user_id: &str) -> Option<Publication> {
        let key = (topic.clone(), user_id.to_owned());
        let open = self.open.remove(&key)?;
        Some(announcement(
            topic,
            user_id,
            open.name.as_deref(),
            TypingAction::Stop,
        ))
    }

    /// The `typing_stop`s of the indicators silent for the TTL at `now`, each once.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Publication> {
        let mut stops = Vec::new();
        while let Some(Reverse((deadline, _, _))) = self.deadlines.peek() {
            if *deadline > now {
                break;
            }
            let Some(Reverse((deadline, topic, user_id))) = self.deadlines.pop() else {
                break;
            };
            let key = (topic, user_id);
            if self
                .open
                .get(&key)
                .is_some_and(|open| open.deadline == deadline)
            {
                if let Some(open) = self.open.remove(&key) {
                    stops.push(announcement(
                        &key.0,
                        &key.1,
                        open.name.as_deref(),
                        TypingAction::Stop,
                    ));
                }
            }
        }
        self.rate.prune(now);
        stops
    }

    /// When [`TypingTable::handle_timeout`] must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines
            .peek()
            .map(|Reverse((deadline, _, _))| *deadline)
    }

    /// Indicators open now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn signal(topic: &str, user: &str, action: TypingAction) -> TypingSignal {
        TypingSignal {
            topic: Topic::parse(topic).unwrap(),
            user_id: user.to_owned(),
            name: Some(format!("{user}'s name")),
            action,
        }
    }

    fn start(topic: &str, user: &str) -> TypingSignal {
        signal(topic, user, TypingAction::Start)
    }

    fn stop(topic: &str, user: &str) -> TypingSignal {
        signal(topic, user, TypingAction::Stop)
    }

    /// `(op, topic, user_id, name, exclude_user)` of an announcement, from its backend
    /// payload (what goes out to Redis or is routed locally).
    fn parts(p: &Publication) -> (String, String, String, String, String) {
        let payload: serde_json::Value = serde_json::from_slice(&p.to_backend_payload()).unwrap();
        (
            payload["op"].as_str().unwrap().to_owned(),
            p.topic().as_str().to_owned(),
            payload["d"]["user_id"].as_str().unwrap().to_owned(),
            payload["d"]["name"].as_str().unwrap_or_default().to_owned(),
            payload["exclude_user"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    }

    fn op(p: &Option<Publication>) -> Option<String> {
        p.as_ref().map(|p| parts(p).0)
    }

    #[test]
    fn the_first_start_is_announced_with_the_name_excluding_the_typist() {
        let t0 = Instant::now();
        let mut table = TypingTable::new(TTL);
        let announced = table.handle(start("channel:1", "alice"), t0).unwrap();
        assert_eq!(
            parts(&announced),
            (
                "typing_start".into(),
                "channel:1".into(),
                "alice".into(),
                "alice's name".into(),
                "alice".into()
            )
        );
        assert_eq!(table.poll_timeout(), Some(t0 + TTL));
    }

    #[test]
    fn a_repeat_within_the_ttl_is_not_re_broadcast_and_extends_the_indicator() {
        let t0 = Instant::now();
        let mut table = TypingTable::new(TTL);
        assert!(table.handle(start("channel:1", "alice"), t0).is_some());
        // A repeat from any connection of the user, past the rate interval.
        let t1 = t0 + Duration::from_secs(4);
        assert!(table.handle(start("channel:1", "alice"), t1).is_none());
        // The first deadline is stale now: nothing stops at t0 + TTL.
        assert!(table.handle_timeout(t0 + TTL).is_empty());
        assert_eq!(table.len(), 1);
        // Another user on the same topic is their own indicator.
        assert!(table.handle(start("channel:1", "bob"), t1).is_some());
        let stops = table.handle_timeout(t1 + TTL);
        let mut who: Vec<_> = stops.iter().map(|p| (parts(p).0, parts(p).2)).collect();
        who.sort();
        assert_eq!(
            who,
            [
                ("typing_stop".into(), "alice".into()),
                ("typing_stop".into(), "bob".into())
            ]
        );
    }

    #[test]
    fn silence_for_the_ttl_yields_exactly_one_stop() {
        let t0 = Instant::now();
        let mut table = TypingTable::new(TTL);
        table.handle(start("channel:1", "alice"), t0);
        assert!(table
            .handle_timeout(t0 + TTL - Duration::from_millis(1))
            .is_empty());
        let stops = table.handle_timeout(t0 + TTL);
        assert_eq!(stops.len(), 1);
        assert_eq!(parts(&stops[0]).0, "typing_stop");
        assert_eq!(
            parts(&stops[0]).3,
            "alice's name",
            "the stop carries the name"
        );
        assert!(table.handle_timeout(t0 + TTL * 3).is_empty(), "once");
        assert_eq!(table.poll_timeout(), None);
        // A stop after the expiry announces nothing more.
        assert!(table
            .handle(stop("channel:1", "alice"), t0 + TTL * 3)
            .is_none());
        // The next start is announced again.
        assert!(table
            .handle(start("channel:1", "alice"), t0 + TTL * 3)
            .is_some());
    }

    #[test]
    fn an_explicit_stop_is_announced_once_and_cancels_the_expiry() {
        let t0 = Instant::now();
        let mut table = TypingTable::new(TTL);
        table.handle(start("channel:1", "alice"), t0);
        let stop1 = table.handle(stop("channel:1", "alice"), t0 + Duration::from_secs(2));
        assert_eq!(op(&stop1).as_deref(), Some("typing_stop"));
        // A second tab's stop, or the close of the connection that started it: nothing.
        assert!(table
            .handle(stop("channel:1", "alice"), t0 + Duration::from_secs(3))
            .is_none());
        assert!(
            table.handle_timeout(t0 + TTL).is_empty(),
            "no stop at the TTL"
        );
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_stop_without_a_start_announces_nothing() {
        let mut table = TypingTable::new(TTL);
        assert!(table
            .handle(stop("channel:1", "alice"), Instant::now())
            .is_none());
    }

    #[test]
    fn the_per_user_rate_drops_starts_quietly_but_never_stops() {
        let t0 = Instant::now();
        let mut table = TypingTable::new(TTL);
        assert!(table.handle(start("channel:1", "alice"), t0).is_some());
        // Within the second: another topic of the same user is dropped.
        let t1 = t0 + Duration::from_millis(500);
        assert!(table.handle(start("channel:2", "alice"), t1).is_none());
        assert_eq!(table.len(), 1, "channel:2 was not started");
        // A dropped repeat does not extend: the indicator still ends at t0 + TTL.
        assert!(table.handle(start("channel:1", "alice"), t1).is_none());
        // Other users are not affected.
        assert!(table.handle(start("channel:2", "bob"), t1).is_some());
        // A stop within the second goes through.
        assert!(table.handle(stop("channel:1", "alice"), t1).is_some());
        // Past the interval, alice may start again.
        let t2 = t0 + TYPING_MIN_INTERVAL;
        assert!(table.handle(start("channel:2", "alice"), t2).is_some());
    }

    #[test]
    fn a_dropped_repeat_does_not_extend_the_deadline() {
        let t0 = Instant::now();
        let mut table = TypingTable::new(TTL);
        table.handle(start("channel:1", "alice"), t0);
        table.handle(start("channel:1", "alice"), t0 + Duration::from_millis(999));
        assert_eq!(table.handle_timeout(t0 + TTL).len(), 1);
    }

    #[test]
    fn a_disconnect_stops_what_it_had_open() {
        // The hub turns a close into one stop per open indicator of the connection.
        let t0 = Instant::now();
        let mut table = TypingTable::new(TTL);
        table.handle(start("channel:1", "alice"), t0);
        table.handle(start("channel:2", "alice"), t0 + TYPING_MIN_INTERVAL);
        let at = t0 + TYPING_MIN_INTERVAL * 2;
        let stops: Vec<_> = [stop("channel:1", "alice"), stop("channel:2", "alice")]
            .into_iter()
            .filter_map(|s| table.handle(s, at))
            .collect();
        assert_eq!(stops.len(), 2);
        assert!(table.handle_timeout(t0 + TTL * 2).is_empty());
    }

    #[test]
    fn the_rate_forgets_users_after_the_interval() {
        let t0 = Instant::now();
        let mut table = TypingTable::new(TTL);
        table.handle(start("channel:1", "alice"), t0);
        assert_eq!(table.rate.len(), 1);
        table.handle_timeout(t0 + TTL);
        assert_eq!(table.rate.len(), 0);
    }
}
