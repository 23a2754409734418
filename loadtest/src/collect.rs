//! The parent's view of a run while it goes: folds the fleets' events, prints a progress
//! line to stderr each second and keeps it as a timeline, and waits for phases to end.
//! With the gateway's pid, each second's tick also reads the gateway's RSS from `/proc`
//! (one small file read a second), so a long run shows whether its memory stays flat.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use crate::fleet::{ConnectedSummary, FleetEvent, FleetReport};
use crate::histo;
use crate::procfs;
use crate::workers::Events;

/// One second of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Tick {
    pub t_s: f64,
    pub open: u64,
    pub failed: u64,
    pub deliveries_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// The gateway's resident set size at this second (only with `--gateway-pid`, and
    /// only while `/proc/<pid>` can be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_rss_bytes: Option<u64>,
}

pub struct Collector {
    events: Events,
    quiet: bool,
    started: Instant,
    last_tick: Instant,
    latest: Vec<(u64, u64, u64)>,
    settled: Vec<u64>,
    pub connected: Vec<Option<ConnectedSummary>>,
    pub reports: Vec<Option<FleetReport>>,
    pub failures: Vec<String>,
    gone: Vec<bool>,
    interval: Histogram<u64>,
    pub timeline: Vec<Tick>,
    pub phase: &'static str,
    gateway_pid: Option<u32>,
}

impl Collector {
    pub fn new(events: Events, members: usize, quiet: bool) -> Collector {
        let now = Instant::now();
        Collector {
            events,
            quiet,
            started: now,
            last_tick: now,
            latest: vec![(0, 0, 0); members],
            settled: vec![0; members],
            connected: vec![None; members],
            reports: vec![None; members],
            failures: Vec::new(),
            gone: vec![false; members],
            interval: histo::new(),
            timeline: Vec::new(),
            phase: "connect",
            gateway_pid: None,
        }
    }

    /// Samples this gateway's RSS into every tick from now on.
    pub fn with_gateway_pid(mut self, pid: Option<u32>) -> Collector {
        self.gateway_pid = pid;
        self
    }

    pub fn open(&self) -> u64 {
        self.latest.iter().map(|l| l.0).sum()
    }

    pub fn deliveries(&self) -> u64 {
        self.latest.iter().map(|l| l.2).sum()
    }

    /// Storm: connections back or given up, over every round, as last reported.
    pub fn settled(&self) -> u64 {
        self.settled.iter().sum()
    }

    pub fn all_connected(&self) -> bool {
        (0..self.gone.len()).all(|i| self.gone[i] || self.connected[i].is_some())
    }

    pub fn all_done(&self) -> bool {
        (0..self.gone.len()).all(|i| self.gone[i] || self.reports[i].is_some())
    }

    /// Handles events (printing each second) until `done` holds or `deadline` passes;
    /// returns whether `done` held.
    pub async fn pump_until(
        &mut self,
        deadline: Instant,
        done: impl Fn(&Collector) -> bool,
    ) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let next_tick = self.last_tick + Duration::from_secs(1);
            tokio::select! {
                event = self.events.recv() => match event {
                    Some((index, event)) => self.handle(index, event),
                    None => {
                        tokio::time::sleep_until(deadline.min(next_tick)).await;
                    }
                },
                _ = tokio::time::sleep_until(deadline.min(next_tick)) => {}
            }
            if Instant::now() >= next_tick {
                self.tick();
            }
        }
    }

    /// Pumps for `length`.
    pub async fn pump_for(&mut self, length: Duration) {
        self.pump_until(Instant::now() + length, |_| false).await;
    }

    fn handle(&mut self, index: usize, event: FleetEvent) {
        match event {
            FleetEvent::Progress(p) => {
                if let Some(l) = self.latest.get_mut(index) {
                    *l = (p.open, p.failed, p.deliveries);
                }
                if let Some(s) = self.settled.get_mut(index) {
                    *s = p.settled;
                }
                if let Err(e) = histo::merge_encoded(&mut self.interval, &p.interval) {
                    eprintln!("fleet {index}: {e:#}");
                }
            }
            FleetEvent::Connected(c) => {
                if let Some(l) = self.latest.get_mut(index) {
                    l.0 = c.open;
                    l.1 = c.failed;
                }
                if let Some(slot) = self.connected.get_mut(index) {
                    *slot = Some(c);
                }
            }
            FleetEvent::Done(report) => {
                if let Some(slot) = self.reports.get_mut(index) {
                    *slot = Some(*report);
                }
            }
            FleetEvent::Failed { message } => {
                eprintln!("loadtest: fleet {index} failed: {message}");
                self.failures.push(message);
                if let Some(g) = self.gone.get_mut(index) {
                    *g = true;
                }
            }
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last_tick).as_secs_f64().max(1e-3);
        self.last_tick = now;
        let p = histo::Percentiles::of(&self.interval);
        let tick = Tick {
            t_s: now.duration_since(self.started).as_secs_f64(),
            open: self.open(),
            failed: self.latest.iter().map(|l| l.1).sum(),
            deliveries_per_s: p.count as f64 / elapsed,
            p50_us: p.p50,
            p99_us: p.p99,
            max_us: p.max,
            gateway_rss_bytes: self.gateway_pid.and_then(procfs::rss_bytes),
        };
        self.interval.reset();
        if !self.quiet {
            let rss = tick.gateway_rss_bytes.map_or(String::new(), |b| {
                format!("  rss {:.1} MiB", b as f64 / 1048576.0)
            });
            eprintln!(
                "[{:6.1}s {:>8}] open {:>6} failed {:>5} | {:>9.0} deliveries/s  p50 {:>7}µs  p99 {:>7}µs  max {:>7}µs{rss}",
                tick.t_s,
                self.phase,
                tick.open,
                tick.failed,
                tick.deliveries_per_s,
                tick.p50_us,
                tick.p99_us,
                tick.max_us
            );
        }
        self.timeline.push(tick);
    }
}
