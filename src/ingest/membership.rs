//! The `redis` subscribe authorizer's side in the ingestor: shards send
//! [`MembershipCheck`]s (they cannot run tokio code), answered here with one pipelined
//! `SISMEMBER <members-prefix><topic> <sub>` per topic. Checks run concurrently; a
//! failure is answered as such, and the shard refuses the topics it could not check.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use coregate_shards::{MembershipCheck, MembershipError};
use redis::aio::MultiplexedConnection;
use tokio::sync::watch;

use super::log_limit::LogLimit;
use super::IngestorStats;

/// See the module docs. Runs until every shard's sender is gone.
pub async fn run(
    checks: flume::Receiver<MembershipCheck>,
    connection: watch::Receiver<Option<MultiplexedConnection>>,
    members_prefix: String,
    stats: Arc<IngestorStats>,
) {
    let members_prefix: Arc<str> = members_prefix.into();
    while let Ok(check) = checks.recv_async().await {
        let current = connection.borrow().clone();
        let Some(conn) = current else {
            stats
                .membership_check_errors
                .fetch_add(1, Ordering::Relaxed);
            let _ = check.reply.send(Err(MembershipError::Unavailable));
            continue;
        };
        tokio::spawn(answer(conn, check, members_prefix.clone(), stats.clone()));
    }
}

async fn answer(
    mut conn: MultiplexedConnection,
    check: MembershipCheck,
    members_prefix: Arc<str>,
    stats: Arc<IngestorStats>,
) {
    let mut pipe = redis::pipe();
    for topic in &check.topics {
        let key = format!("{members_prefix}{}", topic.as_str());
        pipe.cmd("SISMEMBER").arg(key).arg(&check.user_id);
    }
    let answer = match pipe.query_async::<Vec<bool>>(&mut conn).await {
        Ok(verdicts) => {
            stats.membership_checks.fetch_add(1, Ordering::Relaxed);
            Ok(verdicts)
        }
        Err(error) => {
            stats
                .membership_check_errors
                .fetch_add(1, Ordering::Relaxed);
            warn(&error);
            Err(MembershipError::Store(format!("{:?}", error.kind())))
        }
    };
    // The shard may have stopped waiting; then there is no one to tell.
    let _ = check.reply.send(answer);
}

fn warn(error: &redis::RedisError) {
    static LIMIT: std::sync::Mutex<LogLimit> = std::sync::Mutex::new(LogLimit::per_second());
    // Only the ingestor thread takes this lock, and only on a failure.
    let allowed = LIMIT
        .lock()
        .map(|mut limit| limit.allow(Instant::now()))
        .unwrap_or(None);
    if let Some(suppressed) = allowed {
        tracing::warn!(%error, suppressed, "membership check failed");
    }
}
