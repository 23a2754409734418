//! Presence across nodes: the state lives in Redis, every decision and its announcement
//! are made inside one Lua script (so each transition is announced once, whichever nodes
//! race), and a lease per node lets the survivors take a dead node's users offline.
//!
//! Keys, all under `--redis-prefix`:
//!
//! - `presence:u:<user_id>`, a hash: `n:<node id>` → the user's live connections on that
//!   node, `total` → their sum, `chosen` (the status the user set; `online` at first),
//!   `announced` (what others were last told), `since` (ms, Redis's clock), `ch` (the
//!   channels to announce on, `\n`-joined: `presence:<sub>` and the `presence` claim's
//!   topics). Deleted when `offline` is announced.
//! - `presence:node:<node id>`, a set: the users with connections on that node.
//! - `presence:leases`, a sorted set: node id → lease expiry (ms); every node refreshes
//!   its own every [`SWEEP_EVERY`] for `--presence-ttl`.
//! - `presence:offline`, a sorted set: user id → when `offline` is due (ms).
//!
//! Per connection: its `ready` is one `EVAL` of [`CONNECT`], its close one `EVAL` of
//! [`DISCONNECT`], pipelined with the node's other presence signals of the moment.
//! Every node, every [`SWEEP_EVERY`]: one `EVAL` of [`SWEEP`], which refreshes the
//! node's lease, takes the connections of nodes whose lease ran out off their users'
//! counts, and announces `offline` for the users whose grace ran out with no connection
//! left (exactly once: the script deletes what it announces). `presence_set` is one
//! `EVAL` of [`SET`]; `presence_query` one of [`QUERY`]. A node whose own sweep finds
//! its lease gone (it was cut off or stopped past the TTL, and a survivor took its users
//! offline) puts its live connections back with one pipelined [`RESYNC`] per user.
//!
//! While Redis is down, signals wait (in order, up to [`MAX_PENDING`]) and are sent
//! again once it is back (a batch Redis refuses with an error is dropped, not retried);
//! queries are answered `error {code: not_ready}` at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use coregate_protocol::{PresenceEntry, PresenceStatus, Publication};
use coregate_shards::{PresenceAnswer, PresenceSignal, ShardMessage, ShardSender};
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, watch};

use super::log_limit::LogLimit;
use super::IngestorStats;

/// Shared Lua: `now` in ms on Redis's clock, the visible status, and the announcement.
const LIB: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function visible(s)
  if s == 'invisible' then return 'offline' end
  return s
end
local function announce(key, uid, status)
  local ch = redis.call('HGET', key, 'ch') or ''
  local payload = '{"op":"presence_update","d":{"user_id":' .. cjson.encode(uid)
    .. ',"status":"' .. status .. '","since":' .. string.format('%d', now) .. '}}'
  for c in string.gmatch(ch, '[^\n]+') do
    redis.call('PUBLISH', c, payload)
  end
  redis.call('HSET', key, 'announced', status, 'since', now)
  return 1
end
local function settle(key, uid)
  local s = redis.call('HMGET', key, 'chosen', 'announced')
  local v = visible(s[1] or 'online')
  if v ~= (s[2] or 'offline') then return announce(key, uid, v) end
  return 0
end
"#;

/// `KEYS`: user hash, node set, leases, offline set; `ARGV`: node id, user id, the
/// channels (`\n`-joined), `--presence-ttl` in ms. 1 if it announced.
const CONNECT: &str = r#"
redis.call('HINCRBY', KEYS[1], 'n:' .. ARGV[1], 1)
redis.call('HINCRBY', KEYS[1], 'total', 1)
redis.call('HSETNX', KEYS[1], 'chosen', 'online')
redis.call('HSET', KEYS[1], 'ch', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[2])
return settle(KEYS[1], ARGV[2])
"#;

/// `KEYS`: user hash, node set, offline set; `ARGV`: node id, user id, grace in ms.
/// A connection the sweep already took off (its node was thought dead) changes nothing.
const DISCONNECT: &str = r#"
local field = 'n:' .. ARGV[1]
if not redis.call('HGET', KEYS[1], field) then return 0 end
local left = redis.call('HINCRBY', KEYS[1], field, -1)
if left <= 0 then
  redis.call('HDEL', KEYS[1], field)
  redis.call('SREM', KEYS[2], ARGV[2])
end
if redis.call('HINCRBY', KEYS[1], 'total', -1) <= 0 then
  redis.call('HSET', KEYS[1], 'total', 0)
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[2])
end
return 0
"#;

/// `KEYS`: user hash; `ARGV`: user id, status. Only a connected user sets a status.
const SET: &str = r#"
if tonumber(redis.call('HGET', KEYS[1], 'total') or '0') <= 0 then return 0 end
redis.call('HSET', KEYS[1], 'chosen', ARGV[2])
return settle(KEYS[1], ARGV[1])
"#;

/// `KEYS`: the user hashes; `ARGV`: the viewer, then the user ids. A flat array of
/// status, since per user.
const QUERY: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local s = redis.call('HMGET', key, 'total', 'chosen', 'announced', 'since')
  local status, since = 'offline', '0'
  if s[3] then
    status, since = s[3], s[4]
    if ARGV[i + 1] == ARGV[1] and tonumber(s[1] or '0') > 0 then status = s[2] end
  end
  table.insert(out, status)
  table.insert(out, since)
end
return out
"#;

/// `KEYS`: leases, offline set; `ARGV`: node id, `--presence-ttl` ms, key prefix, grace
/// ms, the most users to take offline at once. 1 if this node's lease had lapsed (a
/// survivor took its connections off): the node then puts them back ([`RESYNC`]).
const SWEEP: &str = r#"
local lapsed = 0
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then lapsed = 1 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local prefix = ARGV[3]
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  local set = prefix .. 'presence:node:' .. dead
  for _, uid in ipairs(redis.call('SMEMBERS', set)) do
    local key = prefix .. 'presence:u:' .. uid
    local c = tonumber(redis.call('HGET', key, 'n:' .. dead) or '0')
    redis.call('HDEL', key, 'n:' .. dead)
    if c > 0 and redis.call('HINCRBY', key, 'total', -c) <= 0 then
      redis.call('HSET', key, 'total', 0)
      redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), uid)
    end
  end
  redis.call('DEL', set)
  redis.call('ZREM', KEYS[1], dead)
end
local announced = 0
for _, uid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))) do
  local key = prefix .. 'presence:u:' .. uid
  redis.call('ZREM', KEYS[2], uid)
  local s = redis.call('HMGET', key, 'total', 'announced')
  if s[2] and tonumber(s[1] or '0') <= 0 then
    if s[2] ~= 'offline' then
      announced = announced + announce(key, uid, 'offline')
    end
    redis.call('DEL', key)
  end
end
return lapsed
"#;

/// `KEYS`: user hash, node set, leases, offline set; `ARGV`: node id, user id, the
/// channels, `--presence-ttl` ms, this node's live connections of the user. Puts back
/// what a sweep took off while this node was thought dead (its lease had lapsed: cut
/// off from Redis, or stopped, for longer than the TTL). 1 if it announced.
const RESYNC: &str = r#"
local field = 'n:' .. ARGV[1]
local before = tonumber(redis.call('HGET', KEYS[1], field) or '0')
local count = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], field, count)
redis.call('HINCRBY', KEYS[1], 'total', count - before)
redis.call('HSETNX', KEYS[1], 'chosen', 'online')
redis.call('HSET', KEYS[1], 'ch', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[2])
return settle(KEYS[1], ARGV[2])
"#;

/// How often each node refreshes its lease and sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Users one sweep takes offline at most; the rest wait for the next.
const SWEEP_LIMIT: u64 = 1_000;
/// Signals per pipelined batch.
const BATCH: usize = 256;
/// Signals kept while Redis is down; beyond, the oldest are dropped (and counted).
pub const MAX_PENDING: usize = 100_000;

/// How the node keeps presence in Redis.
#[derive(Debug, Clone)]
pub struct PresenceRedis {
    pub prefix: String,
    pub grace: Duration,
    /// `--presence-ttl`: the lease.
    pub ttl: Duration,
    pub node_id: String,
}

impl PresenceRedis {
    fn user(&self, user_id: &str) -> String {
        format!("{}presence:u:{user_id}", self.prefix)
    }
    fn node_set(&self) -> String {
        format!("{}presence:node:{}", self.prefix, self.node_id)
    }
    fn leases(&self) -> String {
        format!("{}presence:leases", self.prefix)
    }
    fn offline(&self) -> String {
        format!("{}presence:offline", self.prefix)
    }
}

fn eval<'a>(pipe: &'a mut redis::Pipeline, body: &str) -> &'a mut redis::Pipeline {
    // The shared prelude and the script are one script: EVAL caches it by its SHA.
    pipe.cmd("EVAL").arg(format!("{LIB}{body}"))
}

/// See the module docs. Runs until the ingestor drops the sender.
pub async fn run(
    mut signals: mpsc::Receiver<PresenceSignal>,
    mut connection: watch::Receiver<Option<MultiplexedConnection>>,
    settings: PresenceRedis,
    shards: Vec<ShardSender>,
    stats: Arc<IngestorStats>,
) {
    let mut pending: VecDeque<PresenceSignal> = VecDeque::new();
    let mut local: HashMap<String, Local> = HashMap::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut warnings = LogLimit::per_second();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            count = signals.recv_many(&mut batch, BATCH) => {
                if count == 0 {
                    return;
                }
                pending.extend(batch.drain(..));
                while pending.len() > MAX_PENDING {
                    if let Some(dropped) = pending.pop_front() {
                        query(dropped, None, &settings, &shards).await;
                    }
                    stats
                        .redis_publish_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            // (Re)connected: what waited goes out now, not at the next tick.
            changed = connection.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = sweep.tick() => {
                let conn = connection.borrow().clone();
                if let Some(conn) = conn {
                    run_sweep(conn, &settings, &local, &mut warnings).await;
                }
            }
        }
        let conn = connection.borrow().clone();
        match conn {
            Some(conn) => {
                send(
                    &mut pending,
                    conn,
                    &settings,
                    &shards,
                    &mut local,
                    &mut warnings,
                )
                .await
            }
            None => {
                // Queries cannot wait for Redis: `not_ready` now; the rest waits.
                let mut waiting = VecDeque::with_capacity(pending.len());
                for signal in pending.drain(..) {
                    match signal {
                        PresenceSignal::Query { .. } => {
                            query(signal, None, &settings, &shards).await;
                        }
                        other => waiting.push_back(other),
                    }
                }
                pending = waiting;
            }
        }
    }
}

/// Sends the waiting signals, in order, a batch per round trip (a query is read after
/// every signal before it went out); on failure they wait for the next attempt.
async fn send(
    pending: &mut VecDeque<PresenceSignal>,
    mut conn: MultiplexedConnection,
    settings: &PresenceRedis,
    shards: &[ShardSender],
    local: &mut HashMap<String, Local>,
    warnings: &mut LogLimit,
) {
    while !pending.is_empty() {
        if matches!(pending.front(), Some(PresenceSignal::Query { .. })) {
            if let Some(signal) = pending.pop_front() {
                query(signal, Some(conn.clone()), settings, shards).await;
            }
            continue;
        }
        let count = pending
            .iter()
            .take(BATCH)
            .take_while(|s| !matches!(s, PresenceSignal::Query { .. }))
            .count();
        let mut pipe = redis::pipe();
        for signal in pending.iter().take(count) {
            match signal {
                PresenceSignal::Connect { user_id, topics } => {
                    eval(&mut pipe, CONNECT)
                        .arg(4)
                        .arg(settings.user(user_id))
                        .arg(settings.node_set())
                        .arg(settings.leases())
                        .arg(settings.offline())
                        .arg(&settings.node_id)
                        .arg(user_id)
                        .arg(channels(topics, settings))
                        .arg(settings.ttl.as_millis() as u64);
                }
                PresenceSignal::Disconnect { user_id } => {
                    eval(&mut pipe, DISCONNECT)
                        .arg(3)
                        .arg(settings.user(user_id))
                        .arg(settings.node_set())
                        .arg(settings.offline())
                        .arg(&settings.node_id)
                        .arg(user_id)
                        .arg(settings.grace.as_millis() as u64);
                }
                PresenceSignal::Set { user_id, status } => {
                    eval(&mut pipe, SET)
                        .arg(1)
                        .arg(settings.user(user_id))
                        .arg(user_id)
                        .arg(status.as_str());
                }
                PresenceSignal::Query { .. } => {
                    pipe.cmd("PING");
                }
            }
        }
        match pipe.query_async::<Vec<redis::Value>>(&mut conn).await {
            Ok(_) => {
                let sent: Vec<_> = pending.drain(..count).collect();
                record(local, &sent, settings);
            }
            // Redis answered with an error (not a lost connection): sending the same
            // batch again would fail again and hold every later signal back.
            Err(error) if !(error.is_io_error() || error.is_timeout()) => {
                if let Some(suppressed) = warnings.allow(std::time::Instant::now()) {
                    tracing::warn!(%error, suppressed, count, "presence signals refused by Redis; dropped");
                }
                pending.drain(..count);
            }
            Err(error) => {
                if let Some(suppressed) = warnings.allow(std::time::Instant::now()) {
                    tracing::warn!(%error, suppressed, "presence signals not sent; retrying");
                }
                return;
            }
        }
    }
}

/// Answers one `presence_query` from Redis to the asking connection's shard (`error`
/// when Redis cannot answer).
async fn query(
    signal: PresenceSignal,
    conn: Option<MultiplexedConnection>,
    settings: &PresenceRedis,
    shards: &[ShardSender],
) {
    // Anything but a query has no one waiting for an answer.
    let PresenceSignal::Query {
        shard_id,
        conn: key,
        r#ref,
        viewer,
        user_ids,
    } = signal
    else {
        return;
    };
    let mut users = PresenceAnswer::NotReady;
    if let Some(mut conn) = conn {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(QUERY).arg(user_ids.len());
        for user_id in &user_ids {
            cmd.arg(settings.user(user_id));
        }
        cmd.arg(&viewer);
        for user_id in &user_ids {
            cmd.arg(user_id);
        }
        if let Ok(flat) = cmd.query_async::<Vec<String>>(&mut conn).await {
            users = PresenceAnswer::Users(
                user_ids
                    .iter()
                    .zip(flat.chunks(2))
                    .map(|(user_id, pair)| PresenceEntry {
                        user_id: user_id.clone(),
                        status: pair
                            .first()
                            .map_or(PresenceStatus::Offline, |s| status_of(s)),
                        since: pair.get(1).and_then(|s| s.parse().ok()).unwrap_or(0),
                    })
                    .collect(),
            );
        }
    }
    if let Some(shard) = shards.get(shard_id) {
        let _ = shard.answer(ShardMessage::PresenceState {
            conn: key,
            r#ref,
            users,
        });
    }
}

fn status_of(s: &str) -> PresenceStatus {
    match s {
        "online" => PresenceStatus::Online,
        "away" => PresenceStatus::Away,
        "busy" => PresenceStatus::Busy,
        "invisible" => PresenceStatus::Invisible,
        _ => PresenceStatus::Offline,
    }
}

/// Refreshes the lease, takes dead nodes' connections off and announces due offlines.
async fn run_sweep(
    mut conn: MultiplexedConnection,
    settings: &PresenceRedis,
    local: &HashMap<String, Local>,
    warnings: &mut LogLimit,
) {
    let mut pipe = redis::pipe();
    eval(&mut pipe, SWEEP)
        .arg(2)
        .arg(settings.leases())
        .arg(settings.offline())
        .arg(&settings.node_id)
        .arg(settings.ttl.as_millis() as u64)
        .arg(&settings.prefix)
        .arg(settings.grace.as_millis() as u64)
        .arg(SWEEP_LIMIT);
    let lapsed = match pipe.query_async::<Vec<u64>>(&mut conn).await {
        Ok(result) => result.first() == Some(&1),
        Err(error) => {
            if let Some(suppressed) = warnings.allow(std::time::Instant::now()) {
                tracing::warn!(%error, suppressed, "presence sweep failed");
            }
            false
        }
    };
    if !lapsed || local.is_empty() {
        return;
    }
    tracing::warn!(
        users = local.len(),
        "this node's presence lease had lapsed; its users' connections are counted again"
    );
    let mut pipe = redis::pipe();
    for (user_id, l) in local {
        eval(&mut pipe, RESYNC)
            .arg(4)
            .arg(settings.user(user_id))
            .arg(settings.node_set())
            .arg(settings.leases())
            .arg(settings.offline())
            .arg(&settings.node_id)
            .arg(user_id)
            .arg(&l.channels)
            .arg(settings.ttl.as_millis() as u64)
            .arg(l.connections);
    }
    if let Err(error) = pipe.query_async::<Vec<redis::Value>>(&mut conn).await {
        if let Some(suppressed) = warnings.allow(std::time::Instant::now()) {
            tracing::warn!(%error, suppressed, "presence resync failed");
        }
    }
}

/// What this node has told Redis of one user: their live connections here, and the
/// channels of the latest, for a [`RESYNC`].
#[derive(Debug, Default)]
struct Local {
    connections: u32,
    channels: String,
}

/// Applies the signals Redis has taken to this node's own view.
fn record(local: &mut HashMap<String, Local>, sent: &[PresenceSignal], settings: &PresenceRedis) {
    for signal in sent {
        match signal {
            PresenceSignal::Connect { user_id, topics } => {
                let l = local.entry(user_id.clone()).or_default();
                l.connections += 1;
                l.channels = channels(topics, settings);
            }
            PresenceSignal::Disconnect { user_id } => {
                if let Some(l) = local.get_mut(user_id) {
                    l.connections = l.connections.saturating_sub(1);
                    if l.connections == 0 {
                        local.remove(user_id);
                    }
                }
            }
            _ => {}
        }
    }
}

fn channels(topics: &[coregate_protocol::Topic], settings: &PresenceRedis) -> String {
    topics
        .iter()
        .map(|t| Publication::redis_channel(&settings.prefix, t))
        .collect::<Vec<_>>()
        .join("\n")
}
