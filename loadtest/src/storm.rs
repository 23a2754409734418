//! `storm`, on the fleet's side: each connection holds (reading, pinging) until a round's
//! signal, drops at the round's instant, and reconnects at once, retrying with a short
//! backoff until it is back or the round's reconnect limit passes. Each round's reconnect
//! times (drop → ready again) go into a histogram, failed attempts into an error tally; the
//! fleets' round reports are merged into [`RoundFigures`] by the parent.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{stopped, End, Stop};
use crate::connect::{self, Params, Ws};
use crate::histo::{self, lock, Percentiles};
use crate::tokens::unix_now;

/// What storm connections do; travels inside the fleet spec.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StormSpec {
    pub rounds: u32,
    /// A connection not back this long after the drop gives up for the round.
    pub reconnect_timeout_ms: u64,
    /// First retry delay; doubled per failed attempt (with jitter), at most 2 s.
    pub backoff_ms: u64,
    /// Send a close frame (1001) before dropping, instead of just closing the socket.
    pub graceful: bool,
}

/// A round's start: every connection drops at `at_ns` (unix ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal {
    pub round: u32,
    pub at_ns: u64,
}

pub type Signals = watch::Receiver<Option<Signal>>;

/// One round as one fleet saw it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RoundReport {
    pub round: u32,
    pub at_ns: u64,
    pub dropped: u64,
    pub back: u64,
    pub gave_up: u64,
    /// Failed connect attempts by kind.
    pub errors: BTreeMap<String, u64>,
    pub last_back_ns: u64,
    /// Drop → ready again, µs, serialized.
    pub hist: String,
}

/// Every round's accumulators of one fleet.
pub struct Rounds {
    inner: Mutex<Vec<(RoundReport, Histogram<u64>)>>,
    /// Connections that are back or gave up, over every round (for the parent's progress).
    pub settled: AtomicU64,
}

impl Rounds {
    pub fn new(rounds: u32) -> Rounds {
        Rounds {
            inner: Mutex::new(
                (0..rounds)
                    .map(|round| {
                        (
                            RoundReport {
                                round,
                                ..RoundReport::default()
                            },
                            histo::new(),
                        )
                    })
                    .collect(),
            ),
            settled: AtomicU64::new(0),
        }
    }

    fn with(&self, round: u32, f: impl FnOnce(&mut RoundReport, &mut Histogram<u64>)) {
        if let Some((r, h)) = lock(&self.inner).get_mut(round as usize) {
            f(r, h);
        }
    }

    pub fn dropped(&self, s: Signal) {
        self.with(s.round, |r, _| {
            r.at_ns = s.at_ns;
            r.dropped += 1;
        });
    }

    pub fn back(&self, s: Signal, now_ns: u64) {
        self.with(s.round, |r, h| {
            r.back += 1;
            r.last_back_ns = r.last_back_ns.max(now_ns);
            histo::record(h, now_ns.saturating_sub(s.at_ns) / 1000);
        });
        self.settled.fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, round: u32, kind: String) {
        self.with(round, |r, _| *r.errors.entry(kind).or_default() += 1);
    }

    pub fn gave_up(&self, round: u32) {
        self.with(round, |r, _| r.gave_up += 1);
        self.settled.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reports(&self) -> Vec<RoundReport> {
        lock(&self.inner)
            .iter()
            .map(|(r, h)| RoundReport {
                hist: histo::encode(h),
                ..r.clone()
            })
            .collect()
    }
}

/// One round over every fleet.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RoundFigures {
    pub round: u32,
    pub dropped: u64,
    pub back: u64,
    pub gave_up: u64,
    pub failed_attempts: u64,
    pub errors: BTreeMap<String, u64>,
    /// Drop → ready again, milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Drop → the last connection back; `None` when some did not come back.
    pub all_back_s: Option<f64>,
}

/// Merges the fleets' round reports (each fleet's list is indexed by round).
pub fn merge_rounds<'a>(
    fleets: impl IntoIterator<Item = &'a [RoundReport]>,
) -> anyhow::Result<Vec<RoundFigures>> {
    let mut acc: Vec<(RoundReport, Histogram<u64>)> = Vec::new();
    for reports in fleets {
        for r in reports {
            let i = r.round as usize;
            while acc.len() <= i {
                let round = acc.len() as u32;
                acc.push((
                    RoundReport {
                        round,
                        ..RoundReport::default()
                    },
                    histo::new(),
                ));
            }
            let (a, h) = &mut acc[i];
            if r.dropped > 0 {
                a.at_ns = if a.at_ns == 0 {
                    r.at_ns
                } else {
                    a.at_ns.min(r.at_ns)
                };
            }
            a.dropped += r.dropped;
            a.back += r.back;
            a.gave_up += r.gave_up;
            a.last_back_ns = a.last_back_ns.max(r.last_back_ns);
            for (k, v) in &r.errors {
                *a.errors.entry(k.clone()).or_default() += v;
            }
            histo::merge_encoded(h, &r.hist)?;
        }
    }
    Ok(acc
        .into_iter()
        .map(|(a, h)| {
            let p = Percentiles::of(&h);
            RoundFigures {
                round: a.round,
                dropped: a.dropped,
                back: a.back,
                gave_up: a.gave_up,
                failed_attempts: a.errors.values().sum(),
                errors: a.errors,
                p50_ms: p.p50 as f64 / 1000.0,
                p99_ms: p.p99 as f64 / 1000.0,
                max_ms: p.max as f64 / 1000.0,
                all_back_s: (a.dropped > 0 && a.back == a.dropped)
                    .then(|| a.last_back_ns.saturating_sub(a.at_ns) as f64 / 1e9),
            }
        })
        .collect())
}

/// What one storm connection needs.
pub struct Conn<'a> {
    pub index: u64,
    pub params: &'a Params,
    pub source: Option<IpAddr>,
    pub token: &'a str,
    pub topics: Vec<String>,
    pub spec: &'a StormSpec,
    pub connect_timeout: Duration,
    pub rounds: &'a Rounds,
}

/// Runs an opened connection through every round until the stop signal.
pub async fn run(
    conn: Conn<'_>,
    ws: Ws,
    heartbeat: Duration,
    mut signals: Signals,
    mut stop: Stop,
) -> End {
    let mut ws = Some(ws);
    let mut heartbeat = heartbeat;
    let mut end = End::Open;
    loop {
        let signal = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            changed = signals.changed() => match changed {
                Ok(()) => *signals.borrow_and_update(),
                Err(_) => break,
            },
            lost = hold(ws.as_mut(), heartbeat, conn.params) => {
                // The gateway ended it between rounds: down until the next round.
                end = lost;
                ws = None;
                continue;
            }
        };
        let Some(signal) = signal else { continue };
        let wait = signal.at_ns.saturating_sub(unix_now().as_nanos() as u64);
        tokio::time::sleep(Duration::from_nanos(wait)).await;
        if let Some(mut old) = ws.take() {
            if conn.spec.graceful {
                let frame = CloseFrame {
                    code: CloseCode::Away,
                    reason: "storm".into(),
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), old.close(Some(frame))).await;
            }
            drop(old);
        }
        conn.rounds.dropped(signal);
        match reconnect(&conn, signal, &mut stop).await {
            Some((new, hb)) => {
                ws = Some(new);
                heartbeat = hb;
                end = End::Open;
            }
            None => end = End::Broken("not_back".into()),
        }
    }
    if ws.is_some() {
        End::Open
    } else {
        end
    }
}

/// Reconnects after `signal`'s drop; `None` if not back within the round's limit.
async fn reconnect(conn: &Conn<'_>, signal: Signal, stop: &mut Stop) -> Option<(Ws, Duration)> {
    let limit = Duration::from_millis(conn.spec.reconnect_timeout_ms);
    let deadline = Instant::now() + limit;
    let mut backoff = Duration::from_millis(conn.spec.backoff_ms.max(1));
    let mut attempt = 0u64;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let outcome = tokio::select! {
            _ = stopped(stop) => Err("stopped".to_owned()),
            r = tokio::time::timeout(
                conn.connect_timeout.min(left),
                connect::open(conn.params, conn.source, conn.token, conn.topics.clone()),
            ) => r.unwrap_or_else(|_| Err("timeout".into())),
        };
        match outcome {
            Ok(opened) => {
                conn.rounds.back(signal, unix_now().as_nanos() as u64);
                return Some((opened.ws, opened.heartbeat));
            }
            Err(kind) => {
                let stopped = kind == "stopped";
                conn.rounds.error(signal.round, kind);
                // Jitter in [0.5, 1.5) × backoff so retries don't line up.
                let jitter = 0.5
                    + (crate::chatmix::mix64(conn.index ^ (attempt << 32)) % 1000) as f64 / 1000.0;
                let pause = backoff.mul_f64(jitter);
                attempt += 1;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                if stopped || Instant::now() + pause >= deadline {
                    conn.rounds.gave_up(signal.round);
                    return None;
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Reads (discarding) and pings until the connection ends; pending forever without one.
async fn hold(ws: Option<&mut Ws>, heartbeat: Duration, params: &Params) -> End {
    let Some(ws) = ws else {
        return std::future::pending().await;
    };
    let ping = crate::client::ping_bytes(params.encoding);
    let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(Message::Close(frame))) => {
                    return End::Closed(frame.map_or(1005, |f| u16::from(f.code)))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return End::Broken(connect::ws_error_kind(&e)),
                None => return End::Broken("eof".into()),
            },
            _ = ticker.tick() => {
                if let Err(e) = connect::send(ws, params.encoding, ping.clone()).await {
                    return End::Broken(connect::ws_error_kind(&e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(rounds: &Rounds, at: u64, backs_ms: &[u64], errors: &[&str], gave_up: u32) {
        let s = Signal {
            round: 0,
            at_ns: at,
        };
        for &ms in backs_ms {
            rounds.dropped(s);
            rounds.back(s, at + ms * 1_000_000);
        }
        for e in errors {
            rounds.error(0, (*e).to_owned());
        }
        for _ in 0..gave_up {
            rounds.dropped(s);
            rounds.gave_up(0);
        }
    }

    #[test]
    fn rounds_merge_across_fleets() {
        let at = 1_000_000_000_000;
        let (a, b) = (Rounds::new(2), Rounds::new(2));
        fleet(&a, at, &[10, 20, 30], &["http_503"], 0);
        fleet(&b, at, &[40, 500], &["http_503", "io_ConnectionRefused"], 0);
        // Round 1: one connection of b never came back.
        let s1 = Signal {
            round: 1,
            at_ns: at + 5_000_000_000,
        };
        a.dropped(s1);
        a.back(s1, s1.at_ns + 7_000_000);
        b.dropped(s1);
        b.gave_up(1);
        assert_eq!(a.settled.load(Ordering::Relaxed), 4);
        assert_eq!(b.settled.load(Ordering::Relaxed), 3);

        let (ra, rb) = (a.reports(), b.reports());
        let merged = merge_rounds([ra.as_slice(), rb.as_slice()]).expect("merge");
        assert_eq!(merged.len(), 2);
        let r0 = &merged[0];
        assert_eq!((r0.dropped, r0.back, r0.gave_up), (5, 5, 0));
        assert_eq!(r0.failed_attempts, 3);
        assert_eq!(r0.errors["http_503"], 2);
        assert!((r0.p50_ms - 30.0).abs() < 0.1, "{r0:?}");
        assert!((r0.max_ms - 500.0).abs() < 1.0, "{r0:?}");
        assert!((r0.p99_ms - 500.0).abs() < 1.0, "{r0:?}");
        let all = r0.all_back_s.expect("all back");
        assert!((all - 0.5).abs() < 1e-9, "{all}");
        let r1 = &merged[1];
        assert_eq!((r1.dropped, r1.back, r1.gave_up), (2, 1, 1));
        assert_eq!(r1.all_back_s, None);
        assert!((r1.max_ms - 7.0).abs() < 0.1);
        // An empty fleet list merges to nothing; a bad histogram is an error.
        assert!(merge_rounds(std::iter::empty()).expect("empty").is_empty());
        let bad = vec![RoundReport {
            hist: "!".into(),
            ..RoundReport::default()
        }];
        assert!(merge_rounds([bad.as_slice()]).is_err());
    }
}
