//! PUBLISH of what this node publishes (admin `/publish`, typing): one task that
//! pipelines whatever has queued up while the previous batch was in flight, so that
//! order is kept and a burst costs one round trip. A publication on a topic with
//! history goes through the `coregate_publish` function instead (`history_redis`), which
//! appends it to the topic's stream and publishes it with its position. Publications
//! are never delivered locally from here: they come back through the node's own
//! subscription.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use coregate_protocol::Publication;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, watch, Notify};

use super::log_limit::LogLimit;
use super::IngestorStats;

/// Publications per pipelined batch.
const PUBLISH_BATCH: usize = 512;

/// See the module docs. `connection` is `None` while Redis is down: publications are
/// then dropped and counted. A connection-level failure is reported on `broken`.
pub async fn run(
    mut queue: mpsc::Receiver<Publication>,
    connection: watch::Receiver<Option<MultiplexedConnection>>,
    prefix: String,
    history: coregate_shards::history::HistoryPolicy,
    stats: Arc<IngestorStats>,
    broken: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut warnings = LogLimit::per_second();
    while queue.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let count = batch.len() as u64;
        let current = connection.borrow().clone();
        let Some(mut conn) = current else {
            batch.clear();
            stats
                .redis_publish_errors
                .fetch_add(count, Ordering::Relaxed);
            if let Some(suppressed) = warnings.allow(Instant::now()) {
                tracing::warn!(
                    count,
                    suppressed,
                    "publications dropped: Redis is not connected"
                );
            }
            continue;
        };
        let mut pipe = redis::pipe();
        for publication in batch.drain(..) {
            let payload = publication.to_backend_payload();
            let topic = publication.topic();
            if !publication.is_ephemeral() && history.retention(topic).is_some() {
                pipe.cmd("FCALL")
                    .arg("coregate_publish")
                    .arg(1)
                    .arg(topic.as_str())
                    .arg(payload)
                    .ignore();
            } else {
                pipe.cmd("PUBLISH")
                    .arg(Publication::redis_channel(&prefix, topic))
                    .arg(payload)
                    .ignore();
            }
        }
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => {
                stats.redis_published.fetch_add(count, Ordering::Relaxed);
            }
            Err(error) => {
                stats
                    .redis_publish_errors
                    .fetch_add(count, Ordering::Relaxed);
                if let Some(suppressed) = warnings.allow(Instant::now()) {
                    tracing::warn!(%error, count, suppressed, "PUBLISH to Redis failed");
                }
                // A Redis that lost the functions (restarted empty) gets them again
                // with the reconnection.
                let lost_functions = super::history_redis::is_missing_library(&error);
                if error.is_connection_dropped()
                    || error.is_io_error()
                    || error.is_timeout()
                    || lost_functions
                {
                    broken.notify_one();
                }
            }
        }
    }
}
