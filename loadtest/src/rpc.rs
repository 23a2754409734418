//! `loadtest rpc`: what a client `rpc` costs through the gateway. `-c` connections each
//! keep one `rpc` in flight (send, await its `rpc_result` by `ref`, send the next) for
//! `--duration`; the round trips per second, their latency, and with `--gateway-pid` the
//! round trips per gateway CPU-second. With `--direct URL` the same loop POSTs the same
//! body straight to the backend instead (one keep-alive HTTP connection per client): the
//! backend's own latency, to subtract.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coregate_protocol::{encode_client, ClientEnvelope, ClientMessage, Encoding};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::RpcArgs;
use crate::connect::{self, Params};
use crate::histo::{self, Percentiles};
use crate::http::HttpConn;
use crate::tokens::Tokens;
use crate::{decode, procfs, targets};

/// The figures of one run.
#[derive(Debug, Serialize)]
pub struct RpcReport {
    pub mode: &'static str,
    pub clients: u64,
    pub duration_s: f64,
    pub round_trips: u64,
    pub round_trips_per_s: f64,
    pub errors: u64,
    pub latency_us: Percentiles,
    pub gateway_cpu_s: Option<f64>,
    pub round_trips_per_gateway_cpu_s: Option<f64>,
}

/// One client's tally.
struct Tally {
    latency: Histogram<u64>,
    errors: u64,
}

pub async fn run(args: &RpcArgs) -> anyhow::Result<()> {
    let report = match &args.direct {
        Some(url) => direct(args, url).await?,
        None => through_gateway(args).await?,
    };
    println!(
        "rpc ({}): {} clients, {} round trips in {:.1} s ({:.0}/s), {} errors; latency p50 {} µs p99 {} µs p99.9 {} µs max {} µs{}",
        report.mode,
        report.clients,
        report.round_trips,
        report.duration_s,
        report.round_trips_per_s,
        report.errors,
        report.latency_us.p50,
        report.latency_us.p99,
        report.latency_us.p999,
        report.latency_us.max,
        report
            .round_trips_per_gateway_cpu_s
            .map(|r| format!("; {r:.0} round trips per gateway CPU-second"))
            .unwrap_or_default(),
    );
    args.common.write_report(&report)
}

/// The loop through the gateway: one WebSocket connection per client.
async fn through_gateway(args: &RpcArgs) -> anyhow::Result<RpcReport> {
    let common = &args.common;
    let params = Params::for_gateway(common).await?;
    let tokens = Tokens::new(&common.token_source()?)?;
    let mut opened = Vec::new();
    for i in 0..args.clients {
        let token = tokens.get(i)?;
        let source = common
            .source_addrs
            .get(i as usize % common.source_addrs.len().max(1))
            .copied();
        let conn = connect::open(&params, source, &token, Vec::new())
            .await
            .map_err(|kind| anyhow::anyhow!("connection {i}: {kind}"))?;
        opened.push(conn);
    }
    let encoding = params.encoding;
    let method = args.method.clone();
    let measure = Measure::start(common.gateway_pid);
    let until = Instant::now() + common.duration;
    let tasks = opened.into_iter().map(|conn| {
        let method = method.clone();
        tokio::spawn(async move { client_loop(conn.ws, encoding, &method, until).await })
    });
    let tallies = futures_util::future::join_all(tasks).await;
    Ok(measure.finish("gateway", args.clients, tallies))
}

/// One client through the gateway: an `rpc`, its answer, the next.
async fn client_loop(
    mut ws: connect::Ws,
    encoding: Encoding,
    method: &str,
    until: Instant,
) -> Tally {
    let mut tally = Tally {
        latency: histo::new(),
        errors: 0,
    };
    let mut r#ref = 1u64;
    let mut out = Vec::new();
    while Instant::now() < until {
        r#ref += 1;
        out.clear();
        encode_client(
            encoding,
            &ClientEnvelope {
                r#ref: Some(r#ref),
                message: ClientMessage::Rpc {
                    method: method.to_owned(),
                    d: serde_json::json!({"text": "hello", "n": r#ref}),
                },
            },
            &mut out,
        );
        let sent = Instant::now();
        if connect::send(&mut ws, encoding, out.clone()).await.is_err() {
            tally.errors += 1;
            break;
        }
        let mut answered = None;
        while answered.is_none() {
            let bytes = match ws.next().await {
                Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                Some(Ok(Message::Binary(b))) => b.to_vec(),
                Some(Ok(_)) => continue,
                _ => return tally_closed(tally),
            };
            decode::for_each(encoding, &bytes, |seen| {
                if seen.r#ref == Some(r#ref) {
                    answered = Some(seen.op == "rpc_result");
                }
            });
        }
        match answered {
            Some(true) => histo::record(&mut tally.latency, sent.elapsed().as_micros() as u64),
            _ => tally.errors += 1,
        }
    }
    tally
}

fn tally_closed(mut tally: Tally) -> Tally {
    tally.errors += 1;
    tally
}

/// The same loop straight to the backend: the body the gateway would send.
async fn direct(args: &RpcArgs, url: &str) -> anyhow::Result<RpcReport> {
    let target = Arc::new(targets::parse(url, "http").await?);
    targets::check_loopback("--direct", target.addr.ip(), args.common.allow_remote)?;
    let measure = Measure::start(None);
    let until = Instant::now() + args.common.duration;
    let tasks = (0..args.clients).map(|i| {
        let target = target.clone();
        let method = args.method.clone();
        tokio::spawn(async move {
            let mut conn = HttpConn::new(target.addr, &target.authority);
            let mut tally = Tally {
                latency: histo::new(),
                errors: 0,
            };
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let body = serde_json::json!({
                    "user_id": format!("lt-{i}"), "session_id": "direct", "method": method,
                    "d": {"text": "hello", "n": n}, "meta": null
                })
                .to_string();
                let sent = Instant::now();
                match conn.post(&target.path, body.as_bytes()).await {
                    Ok(200) => histo::record(&mut tally.latency, sent.elapsed().as_micros() as u64),
                    _ => tally.errors += 1,
                }
            }
            tally
        })
    });
    let tallies = futures_util::future::join_all(tasks).await;
    Ok(measure.finish("direct", args.clients, tallies))
}

/// The run's clock and the gateway's CPU.
struct Measure {
    started: Instant,
    pid: Option<u32>,
    cpu_before: Option<f64>,
}

impl Measure {
    fn start(pid: Option<u32>) -> Measure {
        Measure {
            started: Instant::now(),
            pid,
            cpu_before: pid.and_then(procfs::cpu_seconds),
        }
    }

    fn finish(
        self,
        mode: &'static str,
        clients: u64,
        tallies: Vec<Result<Tally, tokio::task::JoinError>>,
    ) -> RpcReport {
        let duration = self.started.elapsed().max(Duration::from_millis(1));
        let mut latency = histo::new();
        let mut errors = 0;
        for tally in tallies.into_iter().flatten() {
            let _ = latency.add(&tally.latency);
            errors += tally.errors;
        }
        let gateway_cpu_s = match (self.pid.and_then(procfs::cpu_seconds), self.cpu_before) {
            (Some(after), Some(before)) => Some(after - before),
            _ => None,
        };
        let round_trips = latency.len();
        RpcReport {
            mode,
            clients,
            duration_s: duration.as_secs_f64(),
            round_trips,
            round_trips_per_s: round_trips as f64 / duration.as_secs_f64(),
            errors,
            latency_us: Percentiles::of(&latency),
            gateway_cpu_s,
            round_trips_per_gateway_cpu_s: gateway_cpu_s
                .filter(|&cpu| cpu > 0.0)
                .map(|cpu| round_trips as f64 / cpu),
        }
    }
}
