//! The Prometheus text exposition of `/metrics`. Shards keep their own counters
//! (no shared atomics on a hot path); they are summed here, at scrape time.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use coregate_shards::{ShardStats, StatsSnapshot};

use crate::ingest::IngestorStats;

/// Renders every shard's and the ingestor's figures.
pub fn render(shard_stats: &[Arc<ShardStats>], ingestor: &IngestorStats) -> String {
    let mut out = String::new();
    let mut total = StatsSnapshot::default();
    let per_shard: Vec<StatsSnapshot> = shard_stats.iter().map(|s| s.snapshot()).collect();
    for snapshot in &per_shard {
        total += *snapshot;
    }
    let _ = writeln!(
        out,
        "# HELP coregate_connections Open WebSocket connections per shard."
    );
    let _ = writeln!(out, "# TYPE coregate_connections gauge");
    for (shard, snapshot) in per_shard.iter().enumerate() {
        let _ = writeln!(
            out,
            "coregate_connections{{shard=\"{shard}\"}} {}",
            snapshot.connections
        );
    }
    for (name, value) in total.fields() {
        if name == "connections" {
            continue;
        }
        let _ = writeln!(out, "# TYPE coregate_{name}_total counter");
        let _ = writeln!(out, "coregate_{name}_total {value}");
    }
    let counters = [
        ("ingestor_publications", &ingestor.publications),
        (
            "ingestor_publications_without_subscribers",
            &ingestor.publications_without_subscribers,
        ),
        ("ingestor_shard_queue_full", &ingestor.shard_queue_full),
        (
            "ingestor_malformed_publications",
            &ingestor.malformed_publications,
        ),
        (
            "ingestor_oversize_publications",
            &ingestor.oversize_publications,
        ),
        ("redis_outages", &ingestor.redis_outages),
        ("redis_resubscriptions", &ingestor.redis_resubscriptions),
        (
            "redis_subscription_commands",
            &ingestor.redis_subscription_commands,
        ),
        ("redis_published", &ingestor.redis_published),
        ("redis_publish_errors", &ingestor.redis_publish_errors),
        ("redis_membership_checks", &ingestor.membership_checks),
        (
            "redis_membership_check_errors",
            &ingestor.membership_check_errors,
        ),
    ];
    for (name, value) in counters {
        let _ = writeln!(out, "# TYPE coregate_{name}_total counter");
        let _ = writeln!(
            out,
            "coregate_{name}_total {}",
            value.load(Ordering::Relaxed)
        );
    }
    let gauges = [
        (
            "ingestor_topics",
            "Topics with at least one local subscriber.",
            ingestor.topics_of_interest.load(Ordering::Relaxed),
        ),
        (
            "redis_connected",
            "1 while both Redis connections are up.",
            u64::from(ingestor.redis_connected.load(Ordering::Relaxed)),
        ),
        (
            "redis_subscribed_topics",
            "Topics subscribed in Redis.",
            ingestor.redis_subscribed_topics.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP coregate_{name} {help}");
        let _ = writeln!(out, "# TYPE coregate_{name} gauge");
        let _ = writeln!(out, "coregate_{name} {value}");
    }
    out
}
