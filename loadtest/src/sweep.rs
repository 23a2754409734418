//! `sweep`: one scenario against gateways with different shard counts, to choose
//! `--shards` for a machine. Either the harness starts `coregate` itself for each count
//! (`--gateway-bin`, on free loopback ports, killed after its run) or it is given running
//! gateways (`--target shards=N,url=..,admin=..,pid=..`). Each run's summary is printed as
//! usual; at the end one table row per shard count goes to stdout and, with the table and
//! every summary, to `--json`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::cli::{Common, PublishArgs, SweepArgs, SweepScenario};
use crate::report::Summary;
use crate::scenario;

/// A running gateway to measure, given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    pub shards: u32,
    /// WebSocket URL.
    pub url: String,
    /// Admin API URL.
    pub admin: Option<String>,
    pub pid: Option<u32>,
}

impl TargetSpec {
    /// Parses `shards=N,url=ws://..,admin=http://..,pid=P` (`ws=` is taken for `url=`; a
    /// bare `host:port` admin gets `http://`).
    pub fn parse(text: &str) -> anyhow::Result<TargetSpec> {
        let (mut shards, mut url, mut admin, mut pid) = (None, None, None, None);
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .with_context(|| format!("--target: `{part}` is not key=value"))?;
            match key {
                "shards" => shards = Some(value.parse().context("--target shards")?),
                "url" | "ws" => url = Some(value.to_owned()),
                "admin" if value.contains("://") => admin = Some(value.to_owned()),
                "admin" => admin = Some(format!("http://{value}")),
                "pid" => pid = Some(value.parse().context("--target pid")?),
                _ => bail!("--target: unknown key `{key}` (shards, url, admin, pid)"),
            }
        }
        Ok(TargetSpec {
            shards: shards.context("--target needs shards=N")?,
            url: url.context("--target needs url=ws://HOST:PORT/PATH")?,
            admin,
            pid,
        })
    }
}

/// One shard count's figures.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Row {
    pub shards: u32,
    pub connected: u64,
    pub requested: u64,
    pub connect_rate_per_s: f64,
    pub deliveries_per_s: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub losses: Option<u64>,
    /// Gateway CPU over the window, in cores.
    pub gateway_cpu: Option<f64>,
    pub deliveries_per_cpu_s: Option<f64>,
    pub bytes_per_connection: Option<f64>,
    /// Storm: the worst round's reconnect p99 and time until all were back.
    pub reconnect_p99_ms: Option<f64>,
    pub all_back_s: Option<f64>,
}

impl Row {
    pub fn of(shards: u32, s: &Summary) -> Row {
        let f = s.fanout.as_ref();
        let ms = |us: u64| us as f64 / 1000.0;
        let g = s.gateway.as_ref();
        let storm = s.storm.as_ref();
        Row {
            shards,
            connected: s.connect.connected,
            requested: s.connect.requested,
            connect_rate_per_s: s.connect.rate_per_s,
            deliveries_per_s: f.map(|f| f.deliveries_per_s),
            p50_ms: f.map(|f| ms(f.latency_us.p50)),
            p99_ms: f.map(|f| ms(f.latency_us.p99)),
            p999_ms: f.map(|f| ms(f.latency_us.p999)),
            max_ms: f.map(|f| ms(f.latency_us.max)),
            losses: f.map(|f| f.losses),
            gateway_cpu: g.and_then(|g| g.cpu_utilization),
            deliveries_per_cpu_s: g.and_then(|g| g.deliveries_per_cpu_s),
            bytes_per_connection: g.and_then(|g| g.bytes_per_connection),
            reconnect_p99_ms: storm
                .and_then(|s| s.rounds.iter().map(|r| r.p99_ms).reduce(f64::max)),
            // A round where some never came back has no "all back" time: say so (None).
            all_back_s: storm.and_then(|s| {
                s.rounds
                    .iter()
                    .map(|r| r.all_back_s)
                    .try_fold(0.0_f64, |worst, r| r.map(|r| worst.max(r)))
            }),
        }
    }
}

/// The table, one line per row; columns no row has are left out.
pub fn render_table(rows: &[Row]) -> String {
    type Col = (&'static str, fn(&Row) -> Option<String>);
    let cols: [Col; 14] = [
        ("shards", |r| Some(r.shards.to_string())),
        ("connected", |r| {
            Some(format!("{}/{}", r.connected, r.requested))
        }),
        ("connect/s", |r| {
            Some(format!("{:.0}", r.connect_rate_per_s))
        }),
        ("deliveries/s", |r| {
            r.deliveries_per_s.map(|v| format!("{v:.0}"))
        }),
        ("p50 ms", |r| r.p50_ms.map(|v| format!("{v:.2}"))),
        ("p99 ms", |r| r.p99_ms.map(|v| format!("{v:.2}"))),
        ("p99.9 ms", |r| r.p999_ms.map(|v| format!("{v:.2}"))),
        ("max ms", |r| r.max_ms.map(|v| format!("{v:.2}"))),
        ("losses", |r| r.losses.map(|v| v.to_string())),
        ("gw cores", |r| r.gateway_cpu.map(|v| format!("{v:.2}"))),
        ("deliv/cpu-s", |r| {
            r.deliveries_per_cpu_s.map(|v| format!("{v:.0}"))
        }),
        ("B/conn", |r| {
            r.bytes_per_connection.map(|v| format!("{v:.0}"))
        }),
        ("reconn p99 ms", |r| {
            r.reconnect_p99_ms.map(|v| format!("{v:.1}"))
        }),
        ("all back s", |r| r.all_back_s.map(|v| format!("{v:.2}"))),
    ];
    let shown: Vec<&Col> = cols
        .iter()
        .filter(|(_, get)| rows.iter().any(|r| get(r).is_some()))
        .collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            shown
                .iter()
                .map(|(_, get)| get(r).unwrap_or_else(|| "-".into()))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = shown
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            cells
                .iter()
                .map(|c| c[i].len())
                .chain([name.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |values: Vec<String>| {
        let parts: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:>w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(shown.iter().map(|(n, _)| (*n).to_owned()).collect());
    for c in cells {
        line(c);
    }
    out
}

impl SweepScenario {
    fn name(&self) -> &'static str {
        match self {
            SweepScenario::Idle(_) => "idle",
            SweepScenario::Fanout(_) => "fanout",
            SweepScenario::Slow(_) => "slow",
            SweepScenario::Storm(_) => "storm",
            SweepScenario::Chat(_) => "chat",
        }
    }

    fn common_mut(&mut self) -> &mut Common {
        match self {
            SweepScenario::Idle(a) => &mut a.common,
            SweepScenario::Fanout(a) => &mut a.common,
            SweepScenario::Slow(a) => &mut a.fanout.common,
            SweepScenario::Storm(a) => &mut a.common,
            SweepScenario::Chat(a) => &mut a.common,
        }
    }

    fn publish_mut(&mut self) -> Option<&mut PublishArgs> {
        match self {
            SweepScenario::Fanout(a) => Some(&mut a.publish),
            SweepScenario::Slow(a) => Some(&mut a.fanout.publish),
            SweepScenario::Chat(a) => Some(&mut a.publish),
            SweepScenario::Idle(_) | SweepScenario::Storm(_) => None,
        }
    }

    async fn run(&self) -> anyhow::Result<Summary> {
        match self {
            SweepScenario::Idle(a) => scenario::idle(a).await,
            SweepScenario::Fanout(a) => scenario::fanout(a).await,
            SweepScenario::Slow(a) => scenario::slow(a).await,
            SweepScenario::Storm(a) => scenario::storm(a).await,
            SweepScenario::Chat(a) => scenario::chat(a).await,
        }
    }
}

/// A gateway this sweep started; killed when dropped.
struct Started {
    child: Child,
    ws: String,
    admin: String,
}

impl Started {
    /// Starts `bin serve` with `shards` shards on free loopback ports and waits for its
    /// `listening ws=.. admin=..` line.
    async fn start(
        bin: &Path,
        shards: u32,
        secret: &str,
        redis: Option<(&str, &str)>,
        extra: &[String],
    ) -> anyhow::Result<Started> {
        let mut command = Command::new(bin);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg("--shards")
            .arg(shards.to_string())
            // Through the environment, not argv: secrets stay out of `ps`.
            .env("COREGATE_JWT_SECRET", secret)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if let Some((url, prefix)) = redis {
            command
                .env("COREGATE_REDIS_URL", url)
                .args(["--redis-prefix", prefix]);
        }
        command.args(extra);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("gateway stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("ws=") {
                    return Ok(line);
                }
            }
            anyhow::Ok(String::new())
        })
        .await
        .context("the gateway did not say where it listens within 30 s")??;
        // Keep reading its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_owned)
        };
        let (Some(ws), Some(admin)) = (field("ws="), field("admin=")) else {
            bail!("the gateway exited or printed no `listening ws=.. admin=..` line");
        };
        Ok(Started { child, ws, admin })
    }
}

/// Adds `-shards<N>` before a path's extension.
fn suffixed(path: &Path, shards: u32) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let name = match path.extension() {
        Some(ext) => format!("{stem}-shards{shards}.{}", ext.to_string_lossy()),
        None => format!("{stem}-shards{shards}"),
    };
    path.with_file_name(name)
}

#[derive(Serialize)]
struct SweepJson<'a> {
    scenario: &'static str,
    rows: &'a [Row],
    runs: &'a [Summary],
}

/// The `sweep` subcommand.
pub async fn run(args: SweepArgs) -> anyhow::Result<()> {
    let targets = args
        .target
        .iter()
        .map(|t| TargetSpec::parse(t))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let counts: Vec<u32> = if !targets.is_empty() {
        targets.iter().map(|t| t.shards).collect()
    } else if !args.shards.is_empty() {
        args.shards.clone()
    } else {
        (1..=args.max_shards.max(1)).collect()
    };
    if targets.is_empty() && args.gateway_bin.is_none() {
        bail!("give --gateway-bin PATH (to start gateways) or --target for each shard count");
    }
    if counts.contains(&0) {
        bail!("shard counts start at 1");
    }
    let mut rows = Vec::new();
    let mut runs = Vec::new();
    for (n, &shards) in counts.iter().enumerate() {
        if n > 0 {
            tokio::time::sleep(args.pause).await;
        }
        let mut scenario = args.scenario.clone();
        let base = scenario.common_mut().clone();
        let redis = scenario
            .publish_mut()
            .and_then(|p| p.redis_url.clone().map(|u| (u, p.redis_prefix.clone())));
        let mut started = None;
        let (url, admin, pid) = match (targets.get(n), &args.gateway_bin) {
            (Some(t), _) => (t.url.clone(), t.admin.clone(), t.pid),
            (None, Some(bin)) => {
                let secret = base
                    .secret
                    .as_deref()
                    .context("a started gateway needs the scenario's --secret")?;
                let redis = redis.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
                let gw = Started::start(bin, shards, secret, redis, &args.gateway_arg).await?;
                let run = (
                    format!("ws://{}/ws", gw.ws),
                    Some(format!("http://{}", gw.admin)),
                    gw.child.id(),
                );
                started = Some(gw);
                run
            }
            (None, None) => bail!("no gateway for {shards} shard(s)"),
        };
        eprintln!(
            "loadtest sweep: {} with {shards} shard(s) at {url}",
            scenario.name()
        );
        {
            let common = scenario.common_mut();
            common.url = url;
            common.gateway_pid = pid.or(common.gateway_pid);
            common.json = base.json.as_deref().map(|p| suffixed(p, shards));
            common.plot = base.plot.as_deref().map(|p| suffixed(p, shards));
        }
        if let (Some(publish), Some(admin)) = (scenario.publish_mut(), admin) {
            publish.admin = admin;
        }
        let summary = scenario.run().await;
        drop(started);
        let summary = summary.with_context(|| format!("{shards} shard(s)"))?;
        let common = scenario.common_mut().clone();
        if let Err(e) = scenario::output(&summary, &common) {
            eprintln!("loadtest sweep: {shards} shard(s): {e:#}");
        }
        rows.push(Row::of(shards, &summary));
        runs.push(summary);
    }
    println!(
        "== sweep: {} per shard count\n{}",
        args.scenario.name(),
        render_table(&rows)
    );
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&SweepJson {
            scenario: args.scenario.name(),
            rows: &rows,
            runs: &runs,
        })?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histo::Percentiles;
    use crate::report::{FanoutFigures, GatewayFigures, StormFigures};
    use crate::storm::RoundFigures;

    #[test]
    fn parses_targets() {
        let t =
            TargetSpec::parse("shards=2,url=ws://127.0.0.1:8080/ws,admin=127.0.0.1:9090,pid=42")
                .expect("parses");
        assert_eq!(
            t,
            TargetSpec {
                shards: 2,
                url: "ws://127.0.0.1:8080/ws".into(),
                admin: Some("http://127.0.0.1:9090".into()),
                pid: Some(42),
            }
        );
        let t = TargetSpec::parse("ws=ws://h:1/ws,shards=1").expect("parses");
        assert_eq!((t.shards, t.admin, t.pid), (1, None, None));
        assert!(TargetSpec::parse("url=ws://h:1/ws").is_err());
        assert!(TargetSpec::parse("shards=1").is_err());
        assert!(TargetSpec::parse("shards=1,url=x,colour=red").is_err());
        assert!(TargetSpec::parse("shards=one,url=x").is_err());
        assert_eq!(
            suffixed(Path::new("/tmp/run.json"), 2),
            PathBuf::from("/tmp/run-shards2.json")
        );
        assert_eq!(
            suffixed(Path::new("plot"), 1),
            PathBuf::from("plot-shards1")
        );
    }

    fn fanout_summary(rate: f64, p99_us: u64) -> Summary {
        let mut s = Summary::default();
        s.connect.connected = 100;
        s.connect.requested = 100;
        s.connect.rate_per_s = 2500.0;
        s.fanout = Some(FanoutFigures {
            deliveries_per_s: rate,
            latency_us: Percentiles {
                p50: 500,
                p99: p99_us,
                p999: p99_us * 2,
                max: p99_us * 3,
                ..Percentiles::default()
            },
            ..FanoutFigures::default()
        });
        s.gateway = Some(GatewayFigures {
            cpu_utilization: Some(0.5),
            deliveries_per_cpu_s: Some(rate * 2.0),
            ..GatewayFigures::default()
        });
        s
    }

    #[test]
    fn table_rows_and_columns() {
        let rows = vec![
            Row::of(1, &fanout_summary(10_000.0, 2_000)),
            Row::of(2, &fanout_summary(18_000.0, 1_500)),
        ];
        assert_eq!(rows[1].p99_ms, Some(1.5));
        assert_eq!(rows[1].deliveries_per_cpu_s, Some(36_000.0));
        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].contains("deliveries/s") && lines[0].contains("p99 ms"));
        // Storm and idle columns are left out when no row has them.
        assert!(!lines[0].contains("reconn") && !lines[0].contains("B/conn"));
        assert!(lines[1].contains("10000") && lines[1].contains("2.00"));
        assert!(lines[2].trim_start().starts_with('2') && lines[2].contains("18000"));
        // Columns line up.
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{table}");

        let mut storm = Summary {
            storm: Some(StormFigures {
                rounds: vec![
                    RoundFigures {
                        p99_ms: 40.0,
                        all_back_s: Some(0.3),
                        ..RoundFigures::default()
                    },
                    RoundFigures {
                        p99_ms: 90.0,
                        all_back_s: Some(0.7),
                        ..RoundFigures::default()
                    },
                ],
                ..StormFigures::default()
            }),
            ..Summary::default()
        };
        let row = Row::of(1, &storm);
        assert_eq!(
            (row.reconnect_p99_ms, row.all_back_s),
            (Some(90.0), Some(0.7))
        );
        if let Some(s) = storm.storm.as_mut() {
            s.rounds[1].all_back_s = None;
        }
        assert_eq!(Row::of(1, &storm).all_back_s, None);
        let table = render_table(&[row]);
        assert!(
            table.contains("reconn p99 ms") && table.contains("90.0"),
            "{table}"
        );
        assert!(!table.contains("deliveries/s"), "{table}");
    }
}
