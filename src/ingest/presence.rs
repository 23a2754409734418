//! Presence, node-wide (PROTOCOL.md §4–§5, issue 12): a sans-IO table that takes `now`.
//!
//! Shards hand over each connection's presence signals ([`PresenceSignal`]); the table
//! counts connections per user and announces only user-level transitions:
//!
//! - the first connection of a user makes them `online` (announced);
//! - when the last one closes, `offline` follows after `--presence-grace`
//!   ([`PresenceTable::handle_timeout`]); a connection within the grace cancels it and
//!   announces nothing (a reload, a drain, a reconnect storm);
//! - `presence_set` changes the status; `invisible` reads as `offline` to everyone but
//!   the user, so going invisible announces `offline` and coming back announces the
//!   visible status;
//! - `presence_query` reads the table: unknown users are `offline` (since 0).
//!
//! Announcements are `presence_update {user_id, status, since}` (`since` in ms since
//! the epoch, when the visible status last changed) on `presence:<sub>` and on every
//! topic of the token's `presence` claim. Without Redis this table is the whole of it
//! ([`super::run_embedded`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use coregate_protocol::{PresenceEntry, PresenceStatus, Publication, Topic};
use coregate_shards::PresenceSignal;

/// One user's presence on this node.
#[derive(Debug)]
struct UserPresence {
    /// Live connections.
    connections: u32,
    /// The status the user chose (`online` until they `presence_set` another).
    chosen: PresenceStatus,
    /// What everyone else was last told (`offline` before the first announcement).
    announced: PresenceStatus,
    /// When `announced` last changed, in ms since the epoch.
    since_ms: u64,
    /// How many times the user's last connection closed: an offline deadline stands
    /// only if it was set at the latest of them and the user has not come back since.
    /// A count rather than the deadline itself keeps the entry at 48 bytes (one per
    /// connected user, in a table at most 7/8 full).
    last_closes: u32,
    /// Where the user's transitions are announced besides `presence:<sub>`: the topics
    /// of the `presence` claim (of the user's latest connection). Most users have none
    /// (behind a thin pointer, for the entry's size), and `presence:<sub>` is made when
    /// announcing rather than kept for every user.
    #[allow(clippy::box_collection)] // a thin pointer, for the entry's size
    elsewhere: Option<Box<Vec<Topic>>>,
}

/// What others see of a chosen status.
pub fn visible(status: PresenceStatus) -> PresenceStatus {
    match status {
        PresenceStatus::Invisible => PresenceStatus::Offline,
        other => other,
    }
}

/// `presence_update {user_id, status, since}` on `topic`.
pub fn presence_update(
    topic: &Topic,
    user_id: &str,
    status: PresenceStatus,
    since_ms: u64,
) -> Publication {
    let d = serde_json::json!({
        "user_id": user_id,
        "status": status.as_str(),
        "since": since_ms,
    });
    Publication::new(topic.clone(), "presence_update", d, None)
}

/// The node's presence state without Redis; see the module docs.
#[derive(Debug)]
pub struct PresenceTable {
    grace: Duration,
    users: HashMap<Box<str>, UserPresence>,
    /// Offline deadlines, earliest first, with the user's `last_closes` when set; one
    /// whose user reconnected (or closed again) since is skipped when it comes up.
    deadlines: BinaryHeap<Reverse<(Instant, String, u32)>>,
}

impl PresenceTable {
    pub fn new(grace: Duration) -> PresenceTable {
        PresenceTable {
            grace,
            users: HashMap::new(),
            deadlines: BinaryHeap::new(),
        }
    }

    /// Applies one signal; queries are answered with [`PresenceTable::query`].
    /// `unix_ms` is the wall clock, for `since`.
    pub fn handle(
        &mut self,
        signal: PresenceSignal,
        now: Instant,
        unix_ms: u64,
    ) -> Vec<Publication> {
        match signal {
            PresenceSignal::Connect { user_id, topics } => self.connect(user_id, topics, unix_ms),
            PresenceSignal::Disconnect { user_id } => {
                self.disconnect(&user_id, now);
                Vec::new()
            }
            PresenceSignal::Set { user_id, status } => self.set(&user_id, status, unix_ms),
            PresenceSignal::Query { .. } => Vec::new(),
        }
    }

    fn connect(&mut self, user_id: String, topics: Vec<Topic>, unix_ms: u64) -> Vec<Publication> {
        let own = Topic::presence(&user_id).ok();
        let user = self
            .users
            .entry(user_id.as_str().into())
            .or_insert(UserPresence {
                connections: 0,
                chosen: PresenceStatus::Online,
                announced: PresenceStatus::Offline,
                since_ms: unix_ms,
                last_closes: 0,
                elsewhere: None,
            });
        user.connections += 1;
        if !topics.is_empty() {
            let elsewhere: Vec<Topic> = topics
                .into_iter()
                .filter(|t| Some(t) != own.as_ref())
                .collect();
            user.elsewhere = (!elsewhere.is_empty()).then(|| Box::new(elsewhere));
        }
        Self::announce(&user_id, user, unix_ms)
    }

    fn disconnect(&mut self, user_id: &str, now: Instant) {
        let Some(user) = self.users.get_mut(user_id) else {
            return;
        };
        user.connections = user.connections.saturating_sub(1);
        if user.connections == 0 {
            user.last_closes = user.last_closes.wrapping_add(1);
            self.deadlines.push(Reverse((
                now + self.grace,
                user_id.to_owned(),
                user.last_closes,
            )));
        }
    }

    fn set(&mut self, user_id: &str, status: PresenceStatus, unix_ms: u64) -> Vec<Publication> {
        if !status.is_settable_by_client() {
            return Vec::new();
        }
        match self.users.get_mut(user_id) {
            // Only a connected user sets a status (a set racing the last close is moot).
            Some(user) if user.connections > 0 => {
                user.chosen = status;
                Self::announce(user_id, user, unix_ms)
            }
            _ => Vec::new(),
        }
    }

    /// Announces the user's visible status if it differs from what was last announced.
    fn announce(user_id: &str, user: &mut UserPresence, unix_ms: u64) -> Vec<Publication> {
        let status = visible(user.chosen);
        if status == user.announced {
            return Vec::new();
        }
        user.announced = status;
        user.since_ms = unix_ms;
        Topic::presence(user_id)
            .ok()
            .iter()
            .chain(user.elsewhere.iter().flat_map(|topics| topics.iter()))
            .map(|topic| presence_update(topic, user_id, status, unix_ms))
            .collect()
    }

    /// `presence_state`'s entries for `user_ids`, as `viewer` sees them: others'
    /// invisibility reads as `offline`, the viewer's own status as it is.
    pub fn query(&self, viewer: &str, user_ids: &[String]) -> Vec<PresenceEntry> {
        user_ids
            .iter()
            .map(|user_id| match self.users.get(user_id.as_str()) {
                Some(user) if user_id == viewer && user.connections > 0 => PresenceEntry {
                    user_id: user_id.clone(),
                    status: user.chosen,
                    since: user.since_ms,
                },
                Some(user) => PresenceEntry {
                    user_id: user_id.clone(),
                    status: user.announced,
                    since: user.since_ms,
                },
                None => PresenceEntry {
                    user_id: user_id.clone(),
                    status: PresenceStatus::Offline,
                    since: 0,
                },
            })
            .collect()
    }

    /// When [`PresenceTable::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Users whose grace ran out at `now` go `offline` (announced if others saw them
    /// otherwise) and are forgotten.
    pub fn handle_timeout(&mut self, now: Instant, unix_ms: u64) -> Vec<Publication> {
        let mut out = Vec::new();
        while let Some(Reverse((at, _, _))) = self.deadlines.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, user_id, closes))) = self.deadlines.pop() else {
                break;
            };
            let Some(user) = self.users.get(user_id.as_str()) else {
                continue;
            };
            if user.connections > 0 || user.last_closes != closes {
                continue; // came back, or a later deadline stands
            }
            if let Some(mut user) = self.users.remove(user_id.as_str()) {
                user.chosen = PresenceStatus::Offline;
                out.extend(Self::announce(&user_id, &mut user, unix_ms));
            }
        }
        out
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GRACE: Duration = Duration::from_secs(5);

    #[test]
    fn an_entry_stays_within_48_bytes() {
        assert!(std::mem::size_of::<(Box<str>, UserPresence)>() <= 48);
    }

    fn topic(s: &str) -> Topic {
        Topic::parse(s).unwrap()
    }

    fn connect(user: &str, topics: &[&str]) -> PresenceSignal {
        PresenceSignal::Connect {
            user_id: user.to_owned(),
            topics: topics.iter().map(|t| topic(t)).collect(),
        }
    }

    fn disconnect(user: &str) -> PresenceSignal {
        PresenceSignal::Disconnect {
            user_id: user.to_owned(),
        }
    }

    fn set(user: &str, status: PresenceStatus) -> PresenceSignal {
        PresenceSignal::Set {
            user_id: user.to_owned(),
            status,
        }
    }

    /// (topic, status, since) of each announcement.
    fn seen(out: &[Publication]) -> Vec<(String, String, u64)> {
        out.iter()
            .map(|p| {
                assert_eq!(p.op(), "presence_update");
                let d: serde_json::Value = serde_json::from_slice(&p.d_json().unwrap()).unwrap();
                assert_eq!(d["user_id"], "alice");
                (
                    p.topic().as_str().to_owned(),
                    d["status"].as_str().unwrap().to_owned(),
                    d["since"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    fn on(topic: &str, status: &str, since: u64) -> (String, String, u64) {
        (topic.to_owned(), status.to_owned(), since)
    }

    #[test]
    fn first_connection_announces_online_on_every_topic_and_a_second_announces_nothing() {
        let t0 = Instant::now();
        let mut table = PresenceTable::new(GRACE);
        let out = table.handle(connect("alice", &["presence:alice", "server:1"]), t0, 1000);
        assert_eq!(
            seen(&out),
            [
                on("presence:alice", "online", 1000),
                on("server:1", "online", 1000)
            ]
        );
        let out = table.handle(connect("alice", &["presence:alice"]), t0, 2000);
        assert!(out.is_empty());
    }

    #[test]
    fn closing_one_of_two_connections_keeps_the_user_online() {
        let t0 = Instant::now();
        let mut table = PresenceTable::new(GRACE);
        table.handle(connect("alice", &["presence:alice"]), t0, 0);
        table.handle(connect("alice", &["presence:alice"]), t0, 0);
        table.handle(disconnect("alice"), t0, 0);
        assert_eq!(table.poll_timeout(), None);
        assert!(table.handle_timeout(t0 + GRACE * 10, 0).is_empty());
        assert_eq!(
            table.query("bob", &["alice".into()])[0].status,
            PresenceStatus::Online
        );
    }

    #[test]
    fn the_last_close_announces_offline_after_the_grace_exactly_once() {
        let t0 = Instant::now();
        let mut table = PresenceTable::new(GRACE);
        table.handle(connect("alice", &["presence:alice"]), t0, 0);
        table.handle(connect("alice", &["presence:alice"]), t0, 0);
        table.handle(disconnect("alice"), t0, 0);
        let t1 = t0 + Duration::from_secs(1);
        assert!(table.handle(disconnect("alice"), t1, 0).is_empty());
        assert_eq!(table.poll_timeout(), Some(t1 + GRACE));
        // Still online during the grace.
        assert!(table
            .handle_timeout(t1 + GRACE - Duration::from_millis(1), 0)
            .is_empty());
        assert_eq!(
            table.query("bob", &["alice".into()])[0].status,
            PresenceStatus::Online
        );
        let out = table.handle_timeout(t1 + GRACE, 7000);
        assert_eq!(seen(&out), [on("presence:alice", "offline", 7000)]);
        assert!(table.handle_timeout(t1 + GRACE * 3, 8000).is_empty());
        assert_eq!(table.len(), 0);
        assert_eq!(table.poll_timeout(), None);
        assert_eq!(
            table.query("bob", &["alice".into()])[0],
            PresenceEntry {
                user_id: "alice".into(),
                status: PresenceStatus::Offline,
                since: 0
            }
        );
    }

    #[test]
    fn a_reconnect_within_the_grace_announces_nothing() {
        let t0 = Instant::now();
        let mut table = PresenceTable::new(GRACE);
        table.handle(connect("alice", &["presence:alice"]), t0, 0);
        table.handle(disconnect("alice"), t0, 0);
        let back = t0 + GRACE - Duration::from_millis(1);
        assert!(table
            .handle(connect("alice", &["presence:alice"]), back, 0)
            .is_empty());
        assert!(table.handle_timeout(t0 + GRACE * 2, 0).is_empty());
        // A second reload: the stale first deadline does not cut the new grace short.
        let t2 = t0 + GRACE * 2;
        table.handle(disconnect("alice"), t2, 0);
        assert!(table.handle_timeout(t2 + GRACE / 2, 0).is_empty());
        assert_eq!(
            seen(&table.handle_timeout(t2 + GRACE, 9)),
            [on("presence:alice", "offline", 9)]
        );
    }

    #[test]
    fn a_deadline_from_before_a_reconnect_does_not_cut_a_later_grace_short() {
        let t0 = Instant::now();
        let mut table = PresenceTable::new(GRACE);
        table.handle(connect("alice", &["presence:alice"]), t0, 0);
        table.handle(disconnect("alice"), t0, 0);
        let second = Duration::from_secs(1);
        table.handle(connect("alice", &["presence:alice"]), t0 + second, 0);
        table.handle(disconnect("alice"), t0 + second * 2, 0);
        // The first close's deadline comes up first, with the user gone again: stale.
        assert!(table.handle_timeout(t0 + GRACE, 0).is_empty());
        assert_eq!(table.poll_timeout(), Some(t0 + second * 2 + GRACE));
        assert_eq!(
            seen(&table.handle_timeout(t0 + second * 2 + GRACE, 5)),
            [on("presence:alice", "offline", 5)]
        );
    }

    #[test]
    fn a_reconnect_after_the_grace_announces_online_again() {
        let t0 = Instant::now();
        let mut table = PresenceTable::new(GRACE);
        table.handle(connect("alice", &["presence:alice"]), t0, 0);
        table.handle(disconnect("alice"), t0, 0);
        assert_eq!(table.handle_timeout(t0 + GRACE, 1).len(), 1);
        let out = table.handle(connect("alice", &["presence:alice"]), t0 + GRACE * 2, 2);
        assert_eq!(seen(&out), [on("presence:alice", "online", 2)]);
    }

    #[test]
    fn presence_set_announces_changes_and_invisible_reads_as_offline_to_others() {
        let t0 = Instant::now();
        let mut table = PresenceTable::new(GRACE);
        table.handle(connect("alice", &["presence:alice"]), t0, 0);
        let out = table.handle(set("alice", PresenceStatus::Away), t0, 10);
        assert_eq!(seen(&out), [on("presence:alice", "away", 10)]);
        assert!(table
            .handle(set("alice", PresenceStatus::Away), t0, 11)
            .is_empty());
        let out = table.handle(set("alice", PresenceStatus::Invisible), t0, 20);
        assert_eq!(seen(&out), [on("presence:alice", "offline", 20)]);
        let ids = ["alice".to_owned()];
        assert_eq!(table.query("bob", &ids)[0].status, PresenceStatus::Offline);
        assert_eq!(table.query("bob", &ids)[0].since, 20);
        // Her own connections see the truth.
        assert_eq!(
            table.query("alice", &ids)[0].status,
            PresenceStatus::Invisible
        );
        // An invisible user's last close announces nothing: others saw offline already.
        table.handle(disconnect("alice"), t0, 0);
        assert!(table.handle_timeout(t0 + GRACE, 30).is_empty());
        // After the grace she is forgotten: a new session starts online.
        let out = table.handle(connect("alice", &["presence:alice"]), t0 + GRACE, 40);
        assert_eq!(seen(&out), [on("presence:alice", "online", 40)]);
    }

    #[test]
    fn the_chosen_status_survives_a_reload_within_the_grace() {
        let t0 = Instant::now();
        let mut table = PresenceTable::new(GRACE);
        table.handle(connect("alice", &["presence:alice"]), t0, 0);
        table.handle(set("alice", PresenceStatus::Invisible), t0, 1);
        table.handle(disconnect("alice"), t0, 0);
        assert!(table
            .handle(connect("alice", &["presence:alice"]), t0, 2)
            .is_empty());
        assert_eq!(
            table.query("bob", &["alice".into()])[0].status,
            PresenceStatus::Offline
        );
        let out = table.handle(set("alice", PresenceStatus::Online), t0, 3);
        assert_eq!(seen(&out), [on("presence:alice", "online", 3)]);
    }

    #[test]
    fn offline_cannot_be_set_and_unknown_users_are_ignored() {
        let t0 = Instant::now();
        let mut table = PresenceTable::new(GRACE);
        assert!(table
            .handle(set("alice", PresenceStatus::Away), t0, 0)
            .is_empty());
        assert!(table.handle(disconnect("alice"), t0, 0).is_empty());
        assert_eq!(table.len(), 0);
        table.handle(connect("alice", &["presence:alice"]), t0, 0);
        assert!(table
            .handle(set("alice", PresenceStatus::Offline), t0, 0)
            .is_empty());
        let entries = table.query("bob", &["alice".into(), "carol".into()]);
        assert_eq!(entries[0].status, PresenceStatus::Online);
        assert_eq!(entries[1].status, PresenceStatus::Offline);
    }
}
