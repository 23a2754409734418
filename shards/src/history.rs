//! History (PROTOCOL.md §6): which topics keep a stream of their publications
//! ([`HistoryPolicy`], the `--history` setting), and what a shard asks the node about
//! those streams and hears back ([`HistoryRequest`], [`HistoryAnswer`]).
//!
//! The streams themselves are the node's: in Redis (written by the `coregate_publish`
//! function) or, without Redis, in the ingestor's memory. A shard never reads them; its
//! sessions ask for positions and replays and merge the answer with the live
//! publications by offset (`session::recovery`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use coregate_protocol::{StreamPosition, Topic};

use crate::bus::SharedDelivery;
use crate::hub::ConnKey;

/// The most publications one topic's history may keep.
pub const MAX_HISTORY_SIZE: usize = 10_000;

/// How much of a topic's publications its stream keeps.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// The last `size` publications…
    pub size: usize,
    /// …none older than this.
    pub ttl: Duration,
}

/// `--history`: per topic prefix (a namespace like `channel:`, or any longer prefix),
/// how much history its topics keep; the longest matching prefix decides. Empty: no
/// topic has history (the default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryPolicy {
    rules: Vec<(String, Retention)>,
}

impl HistoryPolicy {
    /// Parses `channel:=200/24h,server:=50/1h` (each `PREFIX=SIZE/TTL`, the TTL in
    /// humantime's syntax; blanks between rules ignored).
    pub fn parse(text: &str) -> Result<HistoryPolicy, String> {
        let mut rules: Vec<(String, Retention)> = Vec::new();
        for rule in text.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (prefix, retention) = rule.split_once('=').ok_or_else(|| {
                format!("`{rule}` is not PREFIX=SIZE/TTL (e.g. channel:=200/24h)")
            })?;
            let prefix = prefix.trim();
            if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("`{prefix}` is not a topic prefix like `channel:`"));
            }
            let (size, ttl) = retention
                .split_once('/')
                .ok_or_else(|| format!("`{retention}` is not SIZE/TTL (e.g. 200/24h)"))?;
            let size: usize = size
                .trim()
                .parse()
                .ok()
                .filter(|s| (1..=MAX_HISTORY_SIZE).contains(s))
                .ok_or_else(|| {
                    format!("history size `{size}` must be between 1 and {MAX_HISTORY_SIZE}")
                })?;
            let ttl = humantime::parse_duration(ttl.trim())
                .ok()
                .filter(|t| !t.is_zero())
                .ok_or_else(|| format!("history TTL `{ttl}` is not a duration like 24h"))?;
            if rules.iter().any(|(p, _)| p == prefix) {
                return Err(format!("`{prefix}` is given twice"));
            }
            rules.push((prefix.to_owned(), Retention { size, ttl }));
        }
        Ok(HistoryPolicy { rules })
    }

    /// How much history `topic` keeps; `None`: it has none.
    pub fn retention(&self, topic: &Topic) -> Option<Retention> {
        self.rules
            .iter()
            .filter(|(prefix, _)| topic.as_str().starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, retention)| *retention)
    }

    /// Whether any topic has history.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules, in the order given.
    pub fn rules(&self) -> impl Iterator<Item = (&str, Retention)> {
        self.rules.iter().map(|(p, r)| (p.as_str(), *r))
    }

    /// The longest TTL of any rule.
    pub fn longest_ttl(&self) -> Option<Duration> {
        self.rules.iter().map(|(_, r)| r.ttl).max()
    }
}

impl fmt::Display for HistoryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (prefix, r)) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(
                f,
                "{prefix}={}/{}",
                r.size,
                humantime::format_duration(r.ttl)
            )?;
        }
        Ok(())
    }
}

/// What a read of one topic's stream is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadFor {
    /// `subscribe`: the position, and with `since` everything after it (if all of it is
    /// still held and the epoch is the same).
    Subscribe { since: Option<StreamPosition> },
    /// `history`: at most `limit` publications, the first ones after `since` (same
    /// epoch), else the latest.
    History {
        since: Option<StreamPosition>,
        limit: usize,
    },
}

impl ReadFor {
    /// The part of the stream this read can use: `Some(n)`, the publications after
    /// offset `n` (`Some(u64::MAX)`: none, only the position); `None`, all of them. A
    /// node that reads a stream for several requests at once reads the widest part any
    /// of them needs ([`widest`]): a storm of fresh subscribes reads positions only.
    pub fn needs_after(&self) -> Option<u64> {
        match self {
            ReadFor::Subscribe { since: None } => Some(u64::MAX),
            ReadFor::Subscribe { since: Some(since) } => Some(since.offset),
            // The latest publications, or the next page (the latest when `since` is of
            // another epoch, which only the read tells): `history` is a user's click,
            // not a storm, and reads the whole stream.
            ReadFor::History { .. } => None,
        }
    }
}

/// The part of a stream that serves every one of `needs` ([`ReadFor::needs_after`]).
pub fn widest(needs: impl IntoIterator<Item = Option<u64>>) -> Option<u64> {
    needs
        .into_iter()
        .try_fold(u64::MAX, |widest, need| need.map(|n| widest.min(n)))
}

/// A shard's question about some topics' streams, for one connection.
#[derive(Debug)]
pub struct HistoryRequest {
    pub shard_id: usize,
    pub conn: ConnKey,
    /// Names the request among the connection's (a `subscribe` waits for its own).
    pub ticket: u64,
    pub reads: Vec<(Topic, ReadFor)>,
}

/// What a topic's stream held for one read.
#[derive(Debug, Clone)]
pub struct TopicHistory {
    pub topic: Topic,
    /// Where the stream stands at the read.
    pub position: StreamPosition,
    /// In offset order: for a recovery, everything after `since`; for `history`, what
    /// was asked for. Shared by every connection the read answered.
    pub publications: Vec<Arc<SharedDelivery>>,
    /// For a recovery: whether everything after `since` was held (same epoch, no gap).
    pub complete: bool,
}

/// The node's answer to a [`HistoryRequest`]: each read's result in request order, or
/// why there is none (Redis unreachable).
pub type HistoryAnswer = Result<Vec<TopicHistory>, HistoryUnavailable>;

/// The streams could not be read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryUnavailable;

/// The position of a stream that has had no publication yet: offset 0, no epoch.
pub fn unwritten() -> StreamPosition {
    StreamPosition {
        offset: 0,
        epoch: String::new(),
    }
}

/// What `read` gets of a stream at `position` that holds `held` (oldest first, all
/// within its TTL, each with its offset): the one rule for the embedded bus and Redis.
pub fn select(
    topic: &Topic,
    read: &ReadFor,
    position: StreamPosition,
    held: &[Arc<SharedDelivery>],
) -> TopicHistory {
    let offset_of = |d: &Arc<SharedDelivery>| d.publication().offset().unwrap_or(0);
    let after = |since: u64| held.iter().filter(move |d| offset_of(d) > since).cloned();
    let (publications, complete) = match read {
        ReadFor::Subscribe { since: None } => (Vec::new(), true),
        ReadFor::Subscribe { since: Some(since) } => {
            let oldest = held.first().map(offset_of);
            if holds_everything_after(since, &position, oldest) {
                (after(since.offset).collect(), true)
            } else {
                (Vec::new(), false)
            }
        }
        ReadFor::History { since, limit } => {
            let continues = since.as_ref().filter(|s| s.epoch == position.epoch);
            let publications = match continues {
                Some(since) => after(since.offset).take(*limit).collect(),
                None => held[held.len().saturating_sub(*limit)..].to_vec(),
            };
            (publications, true)
        }
    };
    TopicHistory {
        topic: topic.clone(),
        position,
        publications,
        complete,
    }
}

/// Whether a stream at `position`, whose oldest held publication is `oldest` (`None`:
/// it holds none), still holds everything after `since`.
///
/// A stream is made by its first publication, never by a read (so that subscribing to
/// made-up topics costs no memory): before it, its position is [`unwritten`],
/// and a client that saw that position missed nothing as long as the stream still holds
/// its first publication.
pub fn holds_everything_after(
    since: &StreamPosition,
    position: &StreamPosition,
    oldest: Option<u64>,
) -> bool {
    if *since == unwritten() {
        return position.offset == 0 || oldest == Some(1);
    }
    if since.epoch != position.epoch || since.offset > position.offset {
        return false;
    }
    if since.offset == position.offset {
        return true;
    }
    oldest.is_some_and(|oldest| oldest <= since.offset + 1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn topic(name: &str) -> Topic {
        Topic::parse(name).unwrap()
    }

    #[test]
    fn the_longest_prefix_decides_and_others_have_none() {
        let policy = HistoryPolicy::parse("channel:=200/24h, channel:vip-=1000/7d").unwrap();
        let day = Duration::from_secs(86_400);
        assert_eq!(
            policy.retention(&topic("channel:42")),
            Some(Retention {
                size: 200,
                ttl: day
            })
        );
        assert_eq!(
            policy.retention(&topic("channel:vip-1")).map(|r| r.size),
            Some(1000)
        );
        assert_eq!(policy.retention(&topic("server:1")), None);
        assert_eq!(
            policy.to_string(),
            "channel:=200/1day,channel:vip-=1000/7days"
        );
        assert_eq!(HistoryPolicy::parse(&policy.to_string()), Ok(policy));
        assert!(HistoryPolicy::parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (text, says) in [
            ("channel:", "PREFIX=SIZE/TTL"),
            ("channel:=200", "SIZE/TTL"),
            ("channel:=0/1h", "between 1 and"),
            ("channel:=99999999/1h", "between 1 and"),
            ("channel:=10/soon", "not a duration"),
            ("channel:=10/0s", "not a duration"),
            ("=10/1h", "topic prefix"),
            ("channel:=1/1h,channel:=2/1h", "twice"),
        ] {
            let error = HistoryPolicy::parse(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn a_batch_reads_the_widest_part_any_of_its_reads_needs() {
        let at = |offset| StreamPosition {
            offset,
            epoch: "e".into(),
        };
        let fresh = ReadFor::Subscribe { since: None };
        let recover = |o| ReadFor::Subscribe { since: Some(at(o)) };
        let latest = ReadFor::History {
            since: None,
            limit: 5,
        };
        let page = ReadFor::History {
            since: Some(at(3)),
            limit: 5,
        };
        assert_eq!(widest([fresh.needs_after()]), Some(u64::MAX));
        assert_eq!(
            widest([
                fresh.needs_after(),
                recover(7).needs_after(),
                recover(4).needs_after()
            ]),
            Some(4)
        );
        assert_eq!(widest([page.needs_after(), recover(7).needs_after()]), None);
        assert_eq!(
            widest([recover(7).needs_after(), latest.needs_after()]),
            None
        );
        // What a read from 4 on gives a recovery from 7 is what the whole stream gives.
        let topic = topic("channel:1");
        let stream: Vec<_> = (1..=10)
            .map(|o| {
                let p = coregate_protocol::Publication::new(
                    topic.clone(),
                    "m",
                    serde_json::json!(o),
                    None,
                )
                .with_position(o, "e".into());
                Arc::new(SharedDelivery::new(p, std::time::Instant::now()))
            })
            .collect();
        for since in [4, 7, 10] {
            let read = recover(since);
            let whole = select(&topic, &read, at(10), &stream);
            // The publications after offset 4 (offsets 5 to 10).
            let part = select(&topic, &read, at(10), &stream[4..]);
            let offsets = |h: &TopicHistory| -> Vec<u64> {
                h.publications
                    .iter()
                    .map(|d| d.publication().offset().unwrap())
                    .collect()
            };
            assert_eq!(
                (offsets(&whole), whole.complete),
                (offsets(&part), part.complete)
            );
        }
    }

    #[test]
    fn what_counts_as_everything_after_since() {
        let at = |offset, epoch: &str| StreamPosition {
            offset,
            epoch: epoch.into(),
        };
        let now = at(10, "e");
        // Held from offset 5: since 4 and later are whole, 3 has a gap.
        assert!(holds_everything_after(&at(4, "e"), &now, Some(5)));
        assert!(holds_everything_after(&at(9, "e"), &now, Some(5)));
        assert!(!holds_everything_after(&at(3, "e"), &now, Some(5)));
        // Nothing missed, even with nothing held (expired).
        assert!(holds_everything_after(&at(10, "e"), &now, None));
        assert!(!holds_everything_after(&at(9, "e"), &now, None));
        // Another epoch, or an offset from the future.
        assert!(!holds_everything_after(&at(10, "old"), &now, Some(5)));
        assert!(!holds_everything_after(&at(11, "e"), &now, Some(5)));
        // Subscribed before the stream's first publication: whole while it holds it.
        assert!(holds_everything_after(&unwritten(), &now, Some(1)));
        assert!(!holds_everything_after(&unwritten(), &now, Some(2)));
        assert!(holds_everything_after(&unwritten(), &unwritten(), None));
    }
}
