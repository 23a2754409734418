//! Typing indicators across nodes: the dedup and the deadlines live in Redis, and each
//! announcement is made by exactly one node, inside the Lua script that decides it (so
//! that a `typing_start` and the `typing_stop` that follows it reach Redis's pub/sub in
//! the order they were decided, whichever nodes decided them).
//!
//! One hash per open indicator, `<redis-prefix>typing:<topic> <user_id>` (neither part
//! holds a space): `{owner: <node id>, deadline: <ms on Redis's clock>, channel, stop:
//! <the typing_stop payload>}`, with a Redis expiry of twice the TTL plus a minute as a
//! last backstop; and one sorted set of every indicator by deadline,
//! `<redis-prefix>typing:deadlines`, for the survivors of a node that died. Per typing
//! action:
//!
//! - `typing_start` (after the node's per-user rate, [`TypingRate`]): `EVAL` of
//!   [`START`]: no hash → create it, owned by this node, `ZADD` the deadline and
//!   `PUBLISH` the `typing_start` (1); a hash → move its deadline to now + TTL and
//!   announce nothing (0). The node that created an indicator checks it at its deadline.
//! - The owner's check at the deadline: `EVAL` of [`CHECK`]: still this node's and the
//!   deadline passed (on Redis's clock) → `DEL`, `ZREM` and `PUBLISH` the `typing_stop`
//!   (0); extended meanwhile → the time left in ms (> 0), checked again then; gone or
//!   another node's → -1, forgotten.
//! - `typing_stop` (explicit, an unsubscribe, or a close): `EVAL` of [`STOP`]: `DEL` and
//!   `ZREM`, and `PUBLISH` the `typing_stop` only if it deleted the hash.
//! - Every node, every [`SWEEP_EVERY`]: `EVAL` of [`SWEEP`]: the indicators overdue by
//!   more than [`OVERDUE_MS`] (their owner died, or is cut off from Redis) are deleted
//!   and their `typing_stop` published, in the script, so exactly once whichever nodes
//!   sweep. With every owner alive it reads an empty range.
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

/// `KEYS`: the indicator, the deadlines set; `ARGV`: channel, `typing_start` payload,
/// node id, TTL in ms, `typing_stop` payload.
pub const START: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
local fresh = redis.call('EXISTS', KEYS[1]) == 0
if fresh then
  redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'channel', ARGV[1], 'stop', ARGV[5])
end
redis.call('HSET', KEYS[1], 'deadline', now + ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 2 + 60000)
redis.call('ZADD', KEYS[2], now + ttl, KEYS[1])
if fresh then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
  return 1
end
return 0
"#;

/// `KEYS`: the indicator, the deadlines set; `ARGV`: channel, `typing_stop` payload,
/// node id.
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
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 0
"#;

/// `KEYS`: the indicator, the deadlines set; `ARGV`: channel, `typing_stop` payload.
pub const STOP: &str = r#"
redis.call('ZREM', KEYS[2], KEYS[1])
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
  return 1
end
return 0
"#;

/// `KEYS`: the deadlines set; `ARGV`: [`OVERDUE_MS`], the most to sweep at once. The
/// number of stops it published.
pub const SWEEP: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, tonumber(ARGV[2]))
local stopped = 0
for _, key in ipairs(due) do
  local entry = redis.call('HMGET', key, 'deadline', 'channel', 'stop')
  if not entry[1] then
    redis.call('ZREM', KEYS[1], key)
  elseif tonumber(entry[1]) + tonumber(ARGV[1]) <= now then
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], key)
    redis.call('PUBLISH', entry[2], entry[3])
    stopped = stopped + 1
  else
    redis.call('ZADD', KEYS[1], tonumber(entry[1]), key)
  end
end
return stopped
"#;

/// How far past its deadline an indicator must be before any node's sweep stops it in
/// place of its owner.
pub const OVERDUE_MS: u64 = 2_000;
/// How often each node sweeps for overdue indicators.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Indicators one sweep stops at most; the rest wait for the next.
const SWEEP_LIMIT: u64 = 1_000;
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
    fn deadlines(&self) -> String {
        format!("{}typing:deadlines", self.prefix)
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
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
            _ = sweep.tick() => {
                let conn = connection.borrow().clone();
                if let Some(conn) = conn {
                    run_sweep(conn, &settings, &stats, &mut warnings).await;
                }
                continue;
            }
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
                TypingAction::Start => {
                    let stop = announcement(
                        &signal.topic,
                        &signal.user_id,
                        signal.name.as_deref(),
                        TypingAction::Stop,
                    );
                    pipe.cmd("EVAL")
                        .arg(START)
                        .arg(2)
                        .arg(key)
                        .arg(settings.deadlines())
                        .arg(channel)
                        .arg(payload)
                        .arg(&settings.node_id)
                        .arg(settings.ttl.as_millis() as u64)
                        .arg(stop.to_backend_payload())
                }
                TypingAction::Stop => pipe
                    .cmd("EVAL")
                    .arg(STOP)
                    .arg(2)
                    .arg(key)
                    .arg(settings.deadlines())
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
                        (TypingAction::Start, 1) => {
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
            .arg(2)
            .arg(key)
            .arg(settings.deadlines())
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

/// Stops the indicators whose owner is overdue (see [`SWEEP`]).
async fn run_sweep(
    mut conn: MultiplexedConnection,
    settings: &TypingRedis,
    stats: &IngestorStats,
    warnings: &mut LogLimit,
) {
    let swept = redis::cmd("EVAL")
        .arg(SWEEP)
        .arg(1)
        .arg(settings.deadlines())
        .arg(OVERDUE_MS)
        .arg(SWEEP_LIMIT)
        .query_async::<u64>(&mut conn)
        .await;
    match swept {
        Ok(0) => {}
        Ok(stopped) => {
            stats.redis_published.fetch_add(stopped, Ordering::Relaxed);
            tracing::info!(stopped, "typing indicators of an unresponsive node stopped");
        }
        Err(error) => {
            if let Some(suppressed) = warnings.allow(Instant::now()) {
                tracing::warn!(%error, suppressed, "typing sweep failed");
            }
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
