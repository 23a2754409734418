//! The Prometheus text exposition of `/metrics`. Shards keep their own counters
//! (no shared atomics on a hot path); they are summed here, at scrape time.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use coregate_shards::stats::LATENCY_BUCKETS_US;
use coregate_shards::{ShardStats, StatsSnapshot};

use crate::ingest::IngestorStats;
use crate::proxy::ProxyStats;
use crate::voice::VoiceStats;

/// Counter families whose members are shard counters named `<prefix><label value>`:
/// (prefix, exported name, label).
const LABELLED: [(&str, &str, &str); 4] = [
    ("upgrades_refused_", "upgrades_refused", "reason"),
    ("messages_in_", "messages_in", "class"),
    ("messages_out_", "messages_out", "class"),
    ("closes_", "closes", "reason"),
];

/// Reads one field of a shard's snapshot.
type ReadField = fn(&StatsSnapshot) -> u64;

/// Shard figures that are high-water gauges, not counters: exported as the highest
/// shard's, not summed.
const HIGH_WATER: [(&str, ReadField); 2] = [
    ("outbox_high_water_bytes", |s| s.outbox_high_water_bytes),
    ("inbox_high_water_events", |s| s.inbox_high_water_events),
];

/// Shard figures exported per shard, as gauges: (name, help, field).
const PER_SHARD_GAUGES: [(&str, &str, ReadField); 2] = [
    (
        "connections",
        "Open WebSocket connections per shard.",
        |s| s.connections,
    ),
    (
        "parked_connections",
        "Of the open connections, idle ones parked without a task of their own, per shard.",
        |s| s.parked_connections,
    ),
];

/// Renders every shard's and the ingestor's figures.
pub fn render(
    shard_stats: &[Arc<ShardStats>],
    ingestor: &IngestorStats,
    proxy: &ProxyStats,
    voice: &VoiceStats,
) -> String {
    let mut out = String::new();
    let mut total = StatsSnapshot::default();
    let per_shard: Vec<StatsSnapshot> = shard_stats.iter().map(|s| s.snapshot()).collect();
    for snapshot in &per_shard {
        total += *snapshot;
    }
    for (name, help, read) in PER_SHARD_GAUGES {
        let _ = writeln!(out, "# HELP coregate_{name} {help}");
        let _ = writeln!(out, "# TYPE coregate_{name} gauge");
        for (shard, snapshot) in per_shard.iter().enumerate() {
            let _ = writeln!(
                out,
                "coregate_{name}{{shard=\"{shard}\"}} {}",
                read(snapshot)
            );
        }
    }
    render_shard_counters(&mut out, &total);
    render_high_water(&mut out, &per_shard);
    render_histogram(
        &mut out,
        "coregate_publish_to_write_seconds",
        "From the node receiving a publication to its event being written.",
        shard_stats.iter().map(|s| s.publish_to_write.snapshot()),
    );
    let _ = writeln!(out, "# TYPE coregate_backend_calls_total counter");
    for (kind, stats) in proxy.kinds() {
        for (outcome, value) in stats.outcomes() {
            let _ = writeln!(
                out,
                "coregate_backend_calls_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {value}"
            );
        }
    }
    for (kind, stats) in proxy.kinds() {
        render_histogram(
            &mut out,
            &format!("coregate_backend_{kind}_seconds"),
            "From sending a call to the backend to its answer (timeouts excluded).",
            std::iter::once(stats.latency.snapshot()),
        );
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
        ("history_requests", &ingestor.history_requests),
        ("history_redis_reads", &ingestor.history_redis_reads),
        ("history_read_errors", &ingestor.history_read_errors),
        (
            "history_publications_without_offset",
            &ingestor.history_publications_without_offset,
        ),
        ("voice_joins", &voice.joins),
        ("voice_datagrams_in", &voice.datagrams_in),
        ("voice_datagrams_unknown", &voice.datagrams_unknown),
        ("voice_packets_forwarded", &voice.packets_forwarded),
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
        (
            "voice_rooms",
            "Voice rooms this node's SFU holds.",
            voice.rooms.load(Ordering::Relaxed),
        ),
        (
            "voice_participants",
            "Participants in the voice rooms this node's SFU holds.",
            voice.participants.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP coregate_{name} {help}");
        let _ = writeln!(out, "# TYPE coregate_{name} gauge");
        let _ = writeln!(out, "coregate_{name} {value}");
    }
    render_histogram(
        &mut out,
        "coregate_voice_connect_seconds",
        "From a voice join to its WebRTC session being up (ICE and DTLS).",
        std::iter::once(voice.connect_time.snapshot()),
    );
    out
}

/// The shards' summed counters: one family per labelled prefix, one counter per
/// other field, and the high-water gauges.
fn render_shard_counters(out: &mut String, total: &StatsSnapshot) {
    let mut family_started = [false; LABELLED.len()];
    for (name, value) in total.fields() {
        let gauge = PER_SHARD_GAUGES.iter().any(|(gauge, _, _)| *gauge == name)
            || HIGH_WATER.iter().any(|(gauge, _)| *gauge == name);
        if gauge {
            continue;
        }
        let labelled = LABELLED
            .iter()
            .enumerate()
            .find_map(|(i, (prefix, family, label))| {
                Some((i, *family, *label, name.strip_prefix(prefix)?))
            });
        match labelled {
            Some((i, family, label, label_value)) => {
                if !std::mem::replace(&mut family_started[i], true) {
                    let _ = writeln!(out, "# TYPE coregate_{family}_total counter");
                }
                let _ = writeln!(
                    out,
                    "coregate_{family}_total{{{label}=\"{label_value}\"}} {value}"
                );
            }
            None => {
                let _ = writeln!(out, "# TYPE coregate_{name}_total counter");
                let _ = writeln!(out, "coregate_{name}_total {value}");
            }
        }
    }
}

/// The high-water gauges, the highest shard's.
fn render_high_water(out: &mut String, per_shard: &[StatsSnapshot]) {
    for (gauge, value) in HIGH_WATER {
        let highest = per_shard.iter().map(value).max().unwrap_or(0);
        let _ = writeln!(out, "# TYPE coregate_{gauge} gauge");
        let _ = writeln!(out, "coregate_{gauge} {highest}");
    }
}

/// A latency histogram: the snapshots' buckets summed (one per shard, or one), in
/// seconds as Prometheus expects.
fn render_histogram(
    out: &mut String,
    name: &str,
    help: &str,
    snapshots: impl Iterator<Item = ([u64; LATENCY_BUCKETS_US.len() + 1], u64)>,
) {
    let mut buckets = [0u64; LATENCY_BUCKETS_US.len() + 1];
    let mut sum_us = 0u64;
    for (snapshot_buckets, snapshot_sum) in snapshots {
        for (total, n) in buckets.iter_mut().zip(snapshot_buckets) {
            *total += n;
        }
        sum_us += snapshot_sum;
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    let mut cumulative = 0;
    for (bound_us, n) in LATENCY_BUCKETS_US.iter().zip(buckets) {
        cumulative += n;
        let le = *bound_us as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    cumulative += buckets[LATENCY_BUCKETS_US.len()];
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {cumulative}");
}
