//! History with Redis (PROTOCOL.md §6): the `coregate` Redis Function library, which
//! this node loads at every (re)connection, and the reads of the shards' requests.
//!
//! Any backend publishes with history by calling the function, in any language:
//!
//! ```text
//! FCALL coregate_publish 1 <topic> <payload>      → the offset (or nil: no history)
//! ```
//!
//! `payload` is the §6 envelope (`{"op", "d", "exclude_user"?}`). In one server-side step
//! the function takes the topic's next offset (from its metadata hash, made with a new
//! epoch if missing), appends the payload to the topic's stream (`XADD` with the offset
//! as the entry id, capped at the rule's size, the stream expiring a TTL after its last
//! publication), and `PUBLISH`es the payload with `offset` and `epoch` put in front, so
//! that subscribers on every node get it with its position. A topic that no rule covers
//! is published plainly. Keys carry the topic as a hash tag (`<prefix>history:{<topic>}`
//! and `…:meta`), so they share a Redis Cluster slot with the key `<topic>` that the
//! call declares. The metadata outlives the stream (`META_TTL` against a TTL of at most
//! `MAX_HISTORY_TTL`): losing it (a flush, an eviction) starts a new epoch, never lower
//! offsets in the same epoch. The rules are written into the library when it is loaded:
//! every node must run with the same `--history` (the last one to load wins).
//!
//! `FCALL coregate_history 1 <topic> [after]` answers `{epoch, offset, o1, p1, o2, p2,
//! …}`: the stream's position and what it holds within its TTL, oldest first: all of
//! it, only the publications after offset `after`, or none (`after` = `none`). The node
//! reads a topic once for every request about it queued meanwhile (a reconnect storm
//! makes one read per topic per batch, not one per client), only as much as the widest
//! of those requests needs (a storm of fresh subscribes reads positions alone), after
//! the SUBSCRIBEs those requests follow are in place, so that the read and the live
//! flow overlap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use coregate_protocol::{Publication, StreamPosition, Topic};
use coregate_shards::history::{select, widest, HistoryPolicy, HistoryRequest, HistoryUnavailable};
use coregate_shards::{ShardMessage, ShardSender, SharedDelivery};
use redis::aio::MultiplexedConnection;

use super::history::META_TTL;
use super::IngestorStats;
use std::sync::atomic::Ordering;

/// The library's code for this node's key prefix and history rules.
pub fn library(prefix: &str, policy: &HistoryPolicy) -> String {
    let mut rules: Vec<_> = policy.rules().collect();
    // The longest prefix decides, as in `HistoryPolicy::retention`.
    rules.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    let rules: String = rules
        .iter()
        .map(|(p, r)| format!("{{{}, {}, {}}},", lua_string(p), r.size, r.ttl.as_millis()))
        .collect();
    LUA_LIBRARY
        .replace("@PREFIX@", &lua_string(prefix))
        .replace("@RULES@", &rules)
        .replace("@META_TTL_MS@", &META_TTL.as_millis().to_string())
}

/// `s` as a Lua string literal.
fn lua_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

const LUA_LIBRARY: &str = r#"#!lua name=coregate
-- coregate's history functions (src/ingest/history_redis.rs documents them).
local PREFIX = @PREFIX@
local RULES = { @RULES@ }
local META_TTL_MS = @META_TTL_MS@

local function retention(topic)
  for _, rule in ipairs(RULES) do
    if string.sub(topic, 1, #rule[1]) == rule[1] then
      return rule[2], rule[3]
    end
  end
  return nil
end

local function stream_keys(topic)
  local stream = PREFIX .. 'history:{' .. topic .. '}'
  return stream, stream .. ':meta'
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The stream's epoch and offset for a publication; a stream without metadata starts a
-- new epoch, and whatever entries it had belong to no epoch any more.
local function position(stream, meta)
  local m = redis.call('HMGET', meta, 'epoch', 'offset')
  if not m[1] then
    local t = redis.call('TIME')
    local epoch = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
    redis.call('DEL', stream)
    return epoch, 0
  end
  return m[1], tonumber(m[2])
end

local function publish(keys, args)
  local topic, payload = keys[1], args[1]
  if type(payload) ~= 'string' then
    return redis.error_reply('ERR coregate_publish: give the topic as the key and the payload')
  end
  local channel = PREFIX .. topic
  local size, ttl = retention(topic)
  if not size then
    redis.call('PUBLISH', channel, payload)
    return nil
  end
  local ok, decoded = pcall(cjson.decode, payload)
  if not ok or type(decoded) ~= 'table' or type(decoded.op) ~= 'string' then
    return redis.error_reply('ERR coregate_publish: the payload must be a JSON object with an op')
  end
  local stream, meta = stream_keys(topic)
  local epoch, offset = position(stream, meta)
  offset = offset + 1
  redis.call('HSET', meta, 'offset', offset)
  redis.call('PEXPIRE', meta, META_TTL_MS)
  redis.call('XADD', stream, 'MAXLEN', size, '0-' .. offset, 'p', payload, 't', now_ms())
  redis.call('PEXPIRE', stream, ttl)
  -- The payload with its position put in front, never re-encoded (numbers stay exact).
  local rest = string.match(payload, '^%s*{(.*)$')
  local separator = string.match(rest, '^%s*}') and '' or ','
  local event = '{"offset":' .. offset .. ',"epoch":"' .. epoch .. '"' .. separator .. rest
  redis.call('PUBLISH', channel, event)
  return offset
end

local function history(keys, args)
  local topic = keys[1]
  local size, ttl = retention(topic)
  if not size then
    return redis.error_reply('ERR coregate_history: no history is kept for this topic')
  end
  local stream, meta = stream_keys(topic)
  local m = redis.call('HMGET', meta, 'epoch', 'offset')
  -- Never published to (or forgotten): nothing is made for a read.
  if not m[1] then
    return { '', 0 }
  end
  redis.call('PEXPIRE', meta, META_TTL_MS)
  local out = { m[1], tonumber(m[2]) }
  local after = args[1]
  if after == 'none' then
    return out
  end
  local from = after and ('(0-' .. after) or '-'
  local cutoff = now_ms() - ttl
  for _, entry in ipairs(redis.call('XRANGE', stream, from, '+')) do
    local fields = entry[2]
    local held = {}
    for i = 1, #fields, 2 do held[fields[i]] = fields[i + 1] end
    if tonumber(held.t) >= cutoff then
      table.insert(out, tonumber(string.sub(entry[1], 3)))
      table.insert(out, held.p)
    end
  end
  return out
end

redis.register_function('coregate_publish', publish)
redis.register_function('coregate_history', history)
"#;

/// Loads (or replaces) the library.
pub async fn load(conn: &mut MultiplexedConnection, code: &str) -> redis::RedisResult<()> {
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(code)
        .query_async::<String>(conn)
        .await
        .map(|_| ())
}

/// The start-up check that the streams' metadata outlives the streams: an `allkeys-*`
/// eviction policy may evict a metadata hash (which has the longer TTL) and keep its
/// stream; the next publication then starts a new epoch, and clients reload once. Said
/// once per connection, as a warning.
pub async fn check_eviction_policy(conn: &mut MultiplexedConnection) {
    let policy: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await;
    if let Ok(reply) = policy {
        if let Some(policy) = reply.get(1).filter(|p| p.starts_with("allkeys-")) {
            tracing::warn!(
                policy,
                "Redis may evict any key (maxmemory-policy): a history stream's metadata can \
                 go before the stream, and its topic then starts a new epoch; prefer \
                 volatile-* or noeviction"
            );
        }
    }
}

/// Whether `error` says the library is not there (Redis restarted empty, or flushed).
pub fn is_missing_library(error: &redis::RedisError) -> bool {
    error.to_string().contains("Function not found")
}

/// One topic's stream as `coregate_history` answered it.
struct Held {
    position: StreamPosition,
    publications: Vec<Arc<SharedDelivery>>,
}

/// Answers `requests`: one `coregate_history` per distinct topic, pipelined, within
/// `timeout`; every request gets its answer, `HistoryUnavailable` if the read failed.
/// A Redis that lost the library (restarted empty) gets it loaded again, and the read
/// is made once more.
pub async fn answer(
    requests: Vec<HistoryRequest>,
    conn: Option<MultiplexedConnection>,
    timeout: Duration,
    shards: Vec<ShardSender>,
    library: Arc<str>,
    stats: Arc<IngestorStats>,
) {
    // Each distinct topic once, with the widest part of its stream any request needs.
    let mut topics: Vec<(Topic, Option<u64>)> = Vec::new();
    for request in &requests {
        for (topic, read) in &request.reads {
            match topics.iter_mut().find(|(t, _)| t == topic) {
                Some((_, after)) => *after = widest([*after, read.needs_after()]),
                None => topics.push((topic.clone(), read.needs_after())),
            }
        }
    }
    stats
        .history_requests
        .fetch_add(requests.len() as u64, Ordering::Relaxed);
    let held = match conn {
        None => None,
        Some(mut conn) => {
            stats
                .history_redis_reads
                .fetch_add(topics.len() as u64, Ordering::Relaxed);
            let attempt = async {
                match read(&mut conn, &topics).await {
                    Err(error) if is_missing_library(&error) => {
                        load(&mut conn, &library).await?;
                        read(&mut conn, &topics).await
                    }
                    other => other,
                }
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(held)) => Some(held),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "history read failed");
                    None
                }
                Err(_) => None,
            }
        }
    };
    if held.is_none() {
        stats.history_read_errors.fetch_add(1, Ordering::Relaxed);
    }
    for request in requests {
        let answer = match &held {
            None => Err(HistoryUnavailable),
            Some(held) => Ok(request
                .reads
                .iter()
                .filter_map(|(topic, read)| {
                    let stream = held.get(topic)?;
                    Some(select(
                        topic,
                        read,
                        stream.position.clone(),
                        &stream.publications,
                    ))
                })
                .collect()),
        };
        let message = ShardMessage::History {
            conn: request.conn,
            ticket: request.ticket,
            answer,
        };
        if let Some(shard) = shards.get(request.shard_id) {
            // Fails only once the shard has stopped: no one is waiting then.
            let _ = shard.answer(message);
        }
    }
}

async fn read(
    conn: &mut MultiplexedConnection,
    topics: &[(Topic, Option<u64>)],
) -> redis::RedisResult<HashMap<Topic, Held>> {
    let mut pipe = redis::pipe();
    for (topic, after) in topics {
        let call = pipe
            .cmd("FCALL")
            .arg("coregate_history")
            .arg(1)
            .arg(topic.as_str());
        match after {
            Some(u64::MAX) => call.arg("none"),
            Some(after) => call.arg(after),
            None => call,
        };
    }
    let replies: Vec<Vec<redis::Value>> = pipe.query_async(conn).await?;
    let mut held = HashMap::new();
    for ((topic, _), reply) in topics.iter().zip(replies) {
        if let Some(stream) = parse(topic, reply) {
            held.insert(topic.clone(), stream);
        }
    }
    Ok(held)
}

/// `{epoch, offset, o1, p1, …}` → the position and the publications; a payload that
/// does not decode is left out (it was checked when published).
fn parse(topic: &Topic, reply: Vec<redis::Value>) -> Option<Held> {
    let mut items = reply.into_iter();
    let epoch: String = redis::from_redis_value(items.next()?).ok()?;
    let offset: u64 = redis::from_redis_value(items.next()?).ok()?;
    let shared_epoch: Arc<str> = Arc::from(epoch.as_str());
    let mut publications = Vec::new();
    while let (Some(at), Some(payload)) = (items.next(), items.next()) {
        let (Ok(at), Ok(mut payload)) = (
            redis::from_redis_value::<u64>(at),
            redis::from_redis_value::<Vec<u8>>(payload),
        ) else {
            continue;
        };
        let Ok(publication) =
            Publication::from_backend_payload(topic.clone(), &mut payload, usize::MAX)
        else {
            continue;
        };
        let publication = publication.with_position(at, shared_epoch.clone());
        let delivery = SharedDelivery::new(publication, std::time::Instant::now());
        publications.push(Arc::new(delivery));
    }
    Some(Held {
        position: StreamPosition { offset, epoch },
        publications,
    })
}
