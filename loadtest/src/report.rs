//! The end of a run: merging the fleets' reports, the summary with every figure, its human
//! rendering on stdout and its JSON file.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::chat::ChatReport;
use crate::collect::Tick;
use crate::fleet::FleetReport;
use crate::histo::{self, Percentiles};
use crate::storm::RoundFigures;

/// All fleets' reports added up.
#[derive(Debug)]
pub struct Merged {
    pub sum: FleetReport,
    pub latency: Histogram<u64>,
    pub connect: Histogram<u64>,
}

/// Adds the reports up; histograms are merged from their serialized form.
pub fn merge<'a>(reports: impl IntoIterator<Item = &'a FleetReport>) -> anyhow::Result<Merged> {
    let mut sum = FleetReport::default();
    let mut latency = histo::new();
    let mut connect = histo::new();
    let mut first = true;
    for r in reports {
        sum.attempted += r.attempted;
        sum.connected += r.connected;
        add_map(&mut sum.errors, &r.errors);
        sum.connect_started_ns = if first {
            r.connect_started_ns
        } else {
            sum.connect_started_ns.min(r.connect_started_ns)
        };
        first = false;
        sum.connect_finished_ns = sum.connect_finished_ns.max(r.connect_finished_ns);
        sum.healthy += r.healthy;
        sum.slow += r.slow;
        sum.deliveries += r.deliveries;
        sum.last_delivery_ns = sum.last_delivery_ns.max(r.last_delivery_ns);
        sum.losses += r.losses;
        sum.duplicates += r.duplicates;
        sum.reordered += r.reordered;
        sum.decode_errors += r.decode_errors;
        sum.tracked_received += r.tracked_received;
        if let Some(c) = &r.chat {
            sum.chat.get_or_insert_with(Default::default).add(c);
        }
        add_map(&mut sum.ends, &r.ends);
        add_map(&mut sum.slow_ends, &r.slow_ends);
        histo::merge_encoded(&mut latency, &r.latency_hist)?;
        histo::merge_encoded(&mut connect, &r.connect_hist)?;
    }
    Ok(Merged {
        sum,
        latency,
        connect,
    })
}

fn add_map(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

#[derive(Debug, Serialize, Default)]
pub struct Summary {
    pub mode: &'static str,
    pub encoding: &'static str,
    pub url: String,
    pub processes: usize,
    pub connect: ConnectFigures,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout: Option<FanoutFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow: Option<SlowFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<ChatFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormFigures>,
    /// How non-slow connections ended ("open" = still open at the end).
    pub ends: BTreeMap<String, u64>,
    /// CPU seconds of the harness itself (parent and workers) over the measured window.
    pub harness_cpu_s: Option<f64>,
    pub fleet_failures: Vec<String>,
    pub timeline: Vec<Tick>,
}

#[derive(Debug, Serialize, Default)]
pub struct ConnectFigures {
    pub requested: u64,
    pub connected: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub phase_s: f64,
    pub rate_per_s: f64,
    /// Connect → ready (→ subscribed), milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize, Default)]
pub struct GatewayFigures {
    pub pid: u32,
    pub rss_before_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
    pub rss_delta_bytes: Option<i64>,
    /// Idle: RSS delta ÷ open connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_connection: Option<f64>,
    /// Idle: the anonymous part of the RSS (heap, stacks; `RssAnon`) before and after,
    /// and its delta ÷ open connections: the same figure without the binary's pages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anon_before_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anon_after_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anon_bytes_per_connection: Option<f64>,
    /// Gateway CPU seconds over the measured window.
    pub cpu_s: Option<f64>,
    pub window_s: f64,
    /// cpu_s ÷ window_s.
    pub cpu_utilization: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_per_cpu_s: Option<f64>,
}

#[derive(Debug, Serialize, Default)]
pub struct FanoutFigures {
    pub subscribers: u64,
    pub healthy_subscribers: u64,
    pub topics: u32,
    pub rate_target: f64,
    pub publications: u64,
    pub publish_attempts: u64,
    pub publish_errors: BTreeMap<String, u64>,
    pub publish_rate: f64,
    pub payload_bytes: usize,
    /// First publication → last delivery.
    pub window_s: f64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    pub latency_us: Percentiles,
    pub losses: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub decode_errors: u64,
}

#[derive(Debug, Serialize, Default)]
pub struct SlowFigures {
    pub slow_subscribers: u64,
    /// How slow subscribers ended: "close_4010", "open", "eof", "io_ConnectionReset", ...
    pub ends: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, Default)]
pub struct ChatFigures {
    pub large_channels: u32,
    pub small_channels: u32,
    /// Users that never churn: their channels are checked for losses.
    pub stable_users: u64,
    /// Publications on stable users' channels × those users.
    pub stable_expected: u64,
    pub stable_received: u64,
    /// Typing, churn and errors, summed over the fleets (flattened into this object).
    #[serde(flatten)]
    pub activity: ChatReport,
}

#[derive(Debug, Serialize, Default)]
pub struct StormFigures {
    /// Connections that took part (connected before the first round).
    pub connections: u64,
    pub graceful: bool,
    pub rounds: Vec<RoundFigures>,
    /// Failed reconnect attempts over every round, by kind.
    pub errors: BTreeMap<String, u64>,
}

impl Summary {
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// The human summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!(
            "== loadtest {} ({}, {} process{}) against {}",
            self.mode,
            self.encoding,
            self.processes,
            if self.processes == 1 { "" } else { "es" },
            self.url
        ));
        let c = &self.connect;
        line(format!(
            "connections: {}/{} ready in {:.2}s ({:.0}/s), connect p50 {:.1}ms p99 {:.1}ms max {:.1}ms",
            c.connected, c.requested, c.phase_s, c.rate_per_s, c.p50_ms, c.p99_ms, c.max_ms
        ));
        if !c.errors.is_empty() {
            line(format!("connect errors: {}", fmt_map(&c.errors)));
        }
        line(format!("connection ends: {}", fmt_map(&self.ends)));
        if let Some(f) = &self.fanout {
            line(format!(
                "fanout: {} subscribers ({} healthy) on {} topic(s); {} publications ({:.1}/s, target {}/s, {}-byte d), errors {}",
                f.subscribers,
                f.healthy_subscribers,
                f.topics,
                f.publications,
                f.publish_rate,
                f.rate_target,
                f.payload_bytes,
                fmt_map(&f.publish_errors)
            ));
            if self.chat.is_some() {
                // Churning users receive too: only stable users' figures are checked.
                line(format!(
                    "deliveries: {} in {:.2}s = {:.0}/s",
                    f.deliveries, f.window_s, f.deliveries_per_s
                ));
            } else {
                line(format!(
                    "deliveries: {} of {} expected in {:.2}s = {:.0}/s",
                    f.deliveries, f.expected_deliveries, f.window_s, f.deliveries_per_s
                ));
            }
            let l = &f.latency_us;
            line(format!(
                "latency µs: p50 {} p90 {} p99 {} p99.9 {} max {} (mean {:.0})",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean
            ));
            line(format!(
                "losses {} duplicates {} reordered {} undecodable {}",
                f.losses, f.duplicates, f.reordered, f.decode_errors
            ));
        }
        if let Some(c) = &self.chat {
            line(format!(
                "chat: {} large + {} small channels; stable users {} received {} of {} expected",
                c.large_channels,
                c.small_channels,
                c.stable_users,
                c.stable_received,
                c.stable_expected
            ));
            let a = &c.activity;
            line(format!(
                "typing: {} sent, {} received; churn: {} resubscribes, {} reconnects, errors {}; server errors {}",
                a.typing_sent,
                a.typing_received,
                a.resubscribes,
                a.reconnects,
                fmt_map(&a.churn_errors),
                a.server_errors
            ));
        }
        if let Some(s) = &self.storm {
            for r in &s.rounds {
                line(format!(
                    "storm round {}: {}/{} back ({} gave up), reconnect p50 {:.1}ms p99 {:.1}ms max {:.1}ms, all back {}, failed attempts {}",
                    r.round,
                    r.back,
                    r.dropped,
                    r.gave_up,
                    r.p50_ms,
                    r.p99_ms,
                    r.max_ms,
                    r.all_back_s.map_or("never".into(), |s| format!("in {s:.2}s")),
                    r.failed_attempts
                ));
            }
            line(format!("storm errors: {}", fmt_map(&s.errors)));
        }
        if let Some(s) = &self.slow {
            line(format!(
                "slow subscribers: {} ended {}",
                s.slow_subscribers,
                fmt_map(&s.ends)
            ));
        }
        if let Some(g) = &self.gateway {
            let mb = |b: Option<u64>| {
                b.map_or("?".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
            };
            line(format!(
                "gateway pid {}: RSS {} → {} (Δ {}){}",
                g.pid,
                mb(g.rss_before_bytes),
                mb(g.rss_after_bytes),
                g.rss_delta_bytes.map_or("?".into(), |d| format!("{d} B")),
                g.bytes_per_connection
                    .map_or(String::new(), |b| format!(", {b:.0} B/connection"))
            ));
            if let Some(per_connection) = g.anon_bytes_per_connection {
                line(format!(
                    "gateway anonymous RSS: {} → {}, {per_connection:.0} B/connection",
                    mb(g.anon_before_bytes),
                    mb(g.anon_after_bytes),
                ));
            }
            line(format!(
                "gateway CPU: {} over {:.2}s{}{}",
                g.cpu_s.map_or("?".into(), |c| format!("{c:.2}s")),
                g.window_s,
                g.cpu_utilization.map_or(String::new(), |u| format!(
                    " ({:.0}% of one core)",
                    u * 100.0
                )),
                g.deliveries_per_cpu_s.map_or(String::new(), |d| format!(
                    ", {d:.0} deliveries per CPU-second"
                ))
            ));
        }
        if let Some(h) = self.harness_cpu_s {
            line(format!("harness CPU: {h:.2}s"));
        }
        for f in &self.fleet_failures {
            line(format!("FLEET FAILED: {f}"));
        }
        out
    }
}

fn fmt_map(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_fleet_reports() {
        let mut a = FleetReport::default();
        let mut b = FleetReport::default();
        let (mut ha, mut hb) = (histo::new(), histo::new());
        for v in 1..=100 {
            histo::record(&mut ha, v);
            histo::record(&mut hb, v * 10);
        }
        a.latency_hist = histo::encode(&ha);
        b.latency_hist = histo::encode(&hb);
        a.connect_hist = histo::encode(&histo::new());
        b.connect_hist = histo::encode(&histo::new());
        a.deliveries = 100;
        b.deliveries = 100;
        a.errors.insert("http_401".into(), 2);
        b.errors.insert("http_401".into(), 3);
        a.connect_started_ns = 50;
        b.connect_started_ns = 40;
        let merged = merge([&a, &b]).expect("merge");
        assert_eq!(merged.sum.deliveries, 200);
        assert_eq!(merged.sum.errors["http_401"], 5);
        assert_eq!(merged.sum.connect_started_ns, 40);
        assert_eq!(merged.latency.len(), 200);
        assert_eq!(merged.latency.max(), hb.max());
        let summary = Summary::default();
        assert!(summary.render().contains("connections"));
    }
}
