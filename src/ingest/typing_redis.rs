//! Typing indicators across nodes: the dedup and the deadlines live in Redis, and each
//! announcement is made by exactly one node, inside the Lua script that decides it (so
//! that a `typing_start` and the `typing_stop` that follows it reach Redis's pub/sub in
//! the order they were decided, whichever nodes decided them).
//!
//! One key per open indicator, `<redis-prefix>typing:<topic> <user_id>` (neither part
//! holds a space), a hash `{owner: <node id>, deadline: <ms, Redis TIME>}` with a Redis
//! expiry of twice the TTL as a backstop. Per typing action:
//!
//! - `typing_start` (after the node's per-user rate, [`TypingRate`]): `EVAL` of
//!   [`START`]: no key → create it, owned by this node, and `PUBLISH` the
//!   `typing_start` (1); a key → move its deadline to now + TTL, announce nothing (0),
//!   or take it over (2) when its owner is overdue by more than [`TAKEOVER_AFTER_MS`]
//!   (the owner died: someone must announce the stop). The node that owns a key checks
//!   it at its deadline.
//! - The owner's check at the deadline: `EVAL` of [`CHECK`]: still this node's and the
//!   deadline passed (on Redis's clock) → `DEL` and `PUBLISH` the `typing_stop` (0);
//!   extended meanwhile → the time left (> 0), checked again then; gone or another
//!   node's → -1, forgotten.
//! - `typing_stop` (explicit, an unsubscribe, or a close): `EVAL` of [`STOP`]: `DEL`,
//!   and `PUBLISH` the `typing_stop` only if it deleted the key.
//!
//! Each batch of signals, and each batch of due checks, is one pipelined round trip.
//! While Redis is down, signals are dropped (counted as publish errors) and due checks
//! are retried every second.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coregate_protocol::{Publication, Topic};
use coregate_shards::bus::announcement;
use coregate_shards::{TypingAction, TypingSignal};
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, watch};

use super::log_limit::LogLimit;
use super::typing::TypingRate;
use super::IngestorStats;

/// `KEYS[1]` the indicator; `ARGV`: channel, `typing_start` payload, node id, TTL in ms,
/// [`TAKEOVER_AFTER_MS`].
pub const START: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
local old = redis.call('HGET', KEYS[1], 'deadline')
if old then
  redis.call('HSET', KEYS[1], 'deadline', now + ttl)
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  if tonumber(old) + tonumber(ARGV[5]) < now then
    redis.call('HSET', KEYS[1], 'owner', ARGV[3])
    return 2
  end
  return 0
end
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'deadline', now + ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"#;

/// `KEYS[1]` the indicator; `ARGV`: channel, `typing_stop` payload, node id.
pub const CHECK: &str = r#"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[3] then
  return -1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left = tonumber(redis.call('HGET', KEYS[1], 'deadline')) - now
if left > 0 then
  return left
end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 0
"#;

/// `KEYS[1]` the indicator; `ARGV`: channel, `typing_stop` payload.
pub const STOP: &str = r#"
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
  return 1
end
return 0
"#;

/// How far past its deadline an indicator must be before another node's `typing_start`
/// takes it over from an owner that did not check it (dead, or cut off from Redis).
pub const TAKEOVER_AFTER_MS: u64 = 2_000;
/// Signals per pipelined batch.
const BATCH: usize = 256;
/// When a check could not be made (Redis down or failing), how soon it is tried again.
const RETRY_CHECK: Duration = Duration::from_secs(1);

/// How the node keeps typing state in Redis.
#[derive(Debug, Clone)]
pub struct TypingRedis {
    /// `--redis-prefix`: of the channels and of the keys.
    pub prefix: String,
    pub ttl: Duration,
    /// This process's id, the owner field of the keys it created.
    pub node_id: String,
}

impl TypingRedis {
    fn key(&self, topic: &Topic, user_id: &str) -> String {
        format!("{}typing:{} {user_id}", self.prefix, topic.as_str())
    }
    fn channel(&self, topic: &Topic) -> String {
        Publication::redis_channel(&self.prefix, topic)
    }
}

/// An indicator this node owns: it checks it at its deadline.
struct Owned {
    topic: Topic,
    user_id: String,
    name: Option<String>,
    check_at: Instant,
}

/// See the module docs. Runs until the ingestor drops the sender.
pub async fn run(
    mut signals: mpsc::Receiver<TypingSignal>,
    connection: watch::Receiver<Option<MultiplexedConnection>>,
    settings: TypingRedis,
    stats: Arc<IngestorStats>,
) {
    let mut rate = TypingRate::default();
    let mut owned: HashMap<String, Owned> = HashMap::new();
    let mut checks: BinaryHeap<Reverse<(Instant, String)>> = BinaryHeap::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut warnings = LogLimit::per_second();
    let mut last_prune = Instant::now();
    loop {
        let next_check = checks.peek().map(|Reverse((at, _))| *at);
        let due = tokio::select! {
            count = signals.recv_many(&mut batch, BATCH) => {
                if count == 0 {
                    return;
                }
                false
            }
            _ = sleep_until(next_check), if next_check.is_some() => true,
        };
        let now = Instant::now();
        if now.saturating_duration_since(last_prune) >= Duration::from_secs(1) {
            rate.prune(now);
            last_prune = now;
        }
        let conn = connection.borrow().clone();
        if due {
            let mut keys = Vec::new();
            while let Some(Reverse((at, _))) = checks.peek() {
                if *at > now {
                    break;
                }
                if let Some(Reverse((at, key))) = checks.pop() {
                    // Stale: the indicator's check was moved since.
                    if owned.get(&key).is_some_and(|o| o.check_at == at) {
                        keys.push(key);
                    }
                }
            }
            run_checks(
                keys,
                conn,
                &settings,
                &mut owned,
                &mut checks,
                &stats,
                &mut warnings,
            )
            .await;
            continue;
        }
        let signals: Vec<_> = batch
            .drain(..)
            .filter(|s| s.action == TypingAction::Stop || rate.allow(&s.user_id, now))
            .collect();
        if signals.is_empty() {
            continue;
        }
        let Some(mut conn) = conn else {
            dropped(
                &stats,
                &mut warnings,
                signals.len(),
                "Redis is not connected",
            );
            continue;
        };
        let mut pipe = redis::pipe();
        for signal in &signals {
            let key = settings.key(&signal.topic, &signal.user_id);
            let channel = settings.channel(&signal.topic);
            let payload = signal.announcement().to_backend_payload();
            match signal.action {
                TypingAction::Start => pipe
                    .cmd("EVAL")
                    .arg(START)
                    .arg(1)
                    .arg(key)
                    .arg(channel)
                    .arg(payload)
                    .arg(&settings.node_id)
                    .arg(settings.ttl.as_millis() as u64)
                    .arg(TAKEOVER_AFTER_MS),
                TypingAction::Stop => pipe
                    .cmd("EVAL")
                    .arg(STOP)
                    .arg(1)
                    .arg(key)
                    .arg(channel)
                    .arg(payload),
            };
        }
        match pipe.query_async::<Vec<i64>>(&mut conn).await {
            Ok(results) => {
                for (signal, result) in signals.into_iter().zip(results) {
                    if result == 1 {
                        // The script announced it.
                        stats.redis_published.fetch_add(1, Ordering::Relaxed);
                    }
                    let key = settings.key(&signal.topic, &signal.user_id);
                    match (signal.action, result) {
                        (TypingAction::Start, 1 | 2) => {
                            let check_at = now + settings.ttl;
                            checks.push(Reverse((check_at, key.clone())));
                            owned.insert(
                                key,
                                Owned {
                                    topic: signal.topic,
                                    user_id: signal.user_id,
                                    name: signal.name,
                                    check_at,
                                },
                            );
                        }
                        (TypingAction::Stop, 1) => {
                            owned.remove(&key);
                        }
                        _ => {}
                    }
                }
            }
            Err(error) => {
                dropped(&stats, &mut warnings, signals.len(), &error.to_string());
            }
        }
    }
}

/// Checks the indicators in `keys` (all owned by this node and due), in one round trip.
async fn run_checks(
    keys: Vec<String>,
    conn: Option<MultiplexedConnection>,
    settings: &TypingRedis,
    owned: &mut HashMap<String, Owned>,
    checks: &mut BinaryHeap<Reverse<(Instant, String)>>,
    stats: &IngestorStats,
    warnings: &mut LogLimit,
) {
    if keys.is_empty() {
        return;
    }
    let mut retry = |owned: &mut HashMap<String, Owned>, keys: Vec<String>| {
        let at = Instant::now() + RETRY_CHECK;
        for key in keys {
            if let Some(o) = owned.get_mut(&key) {
                o.check_at = at;
                checks.push(Reverse((at, key)));
            }
        }
    };
    let Some(mut conn) = conn else {
        retry(owned, keys);
        return;
    };
    let mut pipe = redis::pipe();
    for key in &keys {
        let Some(o) = owned.get(key) else { continue };
        let stop = announcement(&o.topic, &o.user_id, o.name.as_deref(), TypingAction::Stop);
        pipe.cmd("EVAL")
            .arg(CHECK)
            .arg(1)
            .arg(key)
            .arg(settings.channel(&o.topic))
            .arg(stop.to_backend_payload())
            .arg(&settings.node_id);
    }
    match pipe.query_async::<Vec<i64>>(&mut conn).await {
        Ok(results) => {
            let now = Instant::now();
            for (key, left) in keys.into_iter().zip(results) {
                if left > 0 {
                    let at = now + Duration::from_millis(left as u64);
                    if let Some(o) = owned.get_mut(&key) {
                        o.check_at = at;
                        checks.push(Reverse((at, key)));
                    }
                } else {
                    if left == 0 {
                        // The script announced the stop.
                        stats.redis_published.fetch_add(1, Ordering::Relaxed);
                    }
                    owned.remove(&key);
                }
            }
        }
        Err(error) => {
            stats.redis_publish_errors.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = warnings.allow(Instant::now()) {
                tracing::warn!(%error, suppressed, "typing expiry check failed; retrying");
            }
            retry(owned, keys);
        }
    }
}

fn dropped(stats: &IngestorStats, warnings: &mut LogLimit, count: usize, why: &str) {
    stats
        .redis_publish_errors
        .fetch_add(count as u64, Ordering::Relaxed);
    if let Some(suppressed) = warnings.allow(Instant::now()) {
        tracing::warn!(count, suppressed, reason = why, "typing signals dropped");
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
