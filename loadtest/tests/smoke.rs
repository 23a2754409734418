//! End to end: the harness against a real gateway it starts (`--shards 2`, free ports).
//! `idle`, `fanout`, `storm` and `chat` run for a few seconds each with `--json`, and the
//! figures are checked: connections held, bytes per connection measured, every delivery
//! made once, everyone back after a storm, chat deliveries and typing seen. `sweep` starts
//! its own gateways; fanout through Redis runs against a private `redis-server`; `fanout`
//! also runs against the floor program, which stands in for the gateway in BENCHMARKS.md.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const SECRET: &str = "smoke-secret-0123456789abcdef";

/// Builds `coregate` into the loadtest binary's target dir and returns its path.
fn gateway_binary() -> PathBuf {
    let harness = Path::new(env!("CARGO_BIN_EXE_loadtest"));
    let profile_dir = harness.parent().unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "-p", "coregate", "--bin", "coregate"])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    if release {
        build.arg("--release");
    }
    assert!(build.status().unwrap().success(), "building coregate");
    profile_dir.join("coregate")
}

struct Gateway {
    child: Child,
    ws: String,
    admin: String,
}

impl Gateway {
    fn start() -> Gateway {
        Gateway::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Gateway {
        let mut command = Command::new(gateway_binary());
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--shards",
                "2",
                "--jwt-secret",
                SECRET,
            ])
            .args(extra)
            .env("RUST_LOG", "warn");
        Gateway::spawn(command)
    }

    /// The floor program (`src/bin/floor.rs`) in the gateway's place.
    fn floor() -> Gateway {
        Gateway::spawn(Command::new(env!("CARGO_BIN_EXE_floor")))
    }

    /// Starts `command` and reads the addresses from its `listening ws=.. admin=..` line.
    fn spawn(mut command: Command) -> Gateway {
        let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                .to_owned()
        };
        Gateway {
            ws: field("ws="),
            admin: field("admin="),
            child,
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the harness with `args` and returns its JSON summary.
fn harness(gw: &Gateway, name: &str, args: &[&str]) -> Value {
    let pid = gw.child.id().to_string();
    let url = format!("ws://{}/ws", gw.ws);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--url", &url, "--gateway-pid", &pid]);
    run_harness(name, &all)
}

/// Runs the harness with `args` (plus the secret, --quiet and --json) and returns the JSON.
fn run_harness(name: &str, args: &[&str]) -> Value {
    let json =
        std::env::temp_dir().join(format!("loadtest-smoke-{name}-{}.json", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .args(["--secret", SECRET, "--quiet"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "loadtest {name} failed");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(json);
    summary
}

/// A `fanout` run's summary: every subscriber connected, something was published, and
/// every delivery it should have made was made, once, and decoded.
fn assert_every_delivery_once(run: &Value, subscribers: u64) {
    let f = &run["fanout"];
    assert_eq!(run["connect"]["connected"], subscribers, "{run}");
    assert!(f["publications"].as_u64().unwrap() > 0, "{run}");
    assert!(f["deliveries"].as_u64().unwrap() > 0, "{run}");
    assert_eq!(f["deliveries"], f["expected_deliveries"], "{run}");
    assert_eq!(f["losses"], 0, "{run}");
    assert_eq!(f["duplicates"], 0, "{run}");
    assert_eq!(f["decode_errors"], 0, "{run}");
}

#[test]
fn idle_and_fanout_against_a_real_gateway() {
    let gw = Gateway::start();

    let idle = harness(
        &gw,
        "idle",
        &[
            "idle",
            "-n",
            "200",
            "--duration",
            "2s",
            "--settle",
            "1s",
            "--source-addrs",
            "127.0.0.1,127.0.0.2",
            "--processes",
            "2",
        ],
    );
    assert_eq!(idle["connect"]["connected"], 200, "{idle}");
    assert_eq!(idle["ends"]["open"], 200, "{idle}");
    assert!(
        idle["gateway"]["bytes_per_connection"].as_f64().unwrap() > 0.0,
        "{idle}"
    );
    assert!(idle["gateway"]["cpu_s"].as_f64().is_some(), "{idle}");

    let admin = format!("http://{}", gw.admin);
    let fanout = harness(
        &gw,
        "fanout",
        &[
            "fanout",
            "--admin",
            &admin,
            "-s",
            "200",
            "-t",
            "4",
            "-r",
            "100",
            "--duration",
            "3s",
        ],
    );
    assert_every_delivery_once(&fanout, 200);
    assert!(
        fanout["fanout"]["latency_us"]["p99"].as_u64().unwrap() > 0,
        "{fanout}"
    );

    let msgpack = harness(
        &gw,
        "msgpack",
        &[
            "fanout",
            "--admin",
            &admin,
            "-s",
            "50",
            "-t",
            "2",
            "-r",
            "50",
            "--duration",
            "2s",
            "--encoding",
            "msgpack",
        ],
    );
    assert_eq!(msgpack["fanout"]["losses"], 0, "{msgpack}");
    assert!(
        msgpack["fanout"]["deliveries"].as_u64().unwrap() > 0,
        "{msgpack}"
    );
}

/// The floor program speaks enough of the protocol for `fanout`, in both encodings, and
/// delivers every publication once: its figures in BENCHMARKS.md are of complete runs.
#[test]
fn fanout_against_the_floor_program() {
    let floor = Gateway::floor();
    let admin = format!("http://{}", floor.admin);
    for encoding in ["json", "msgpack"] {
        let run = harness(
            &floor,
            encoding,
            &[
                "fanout",
                "--admin",
                &admin,
                "-s",
                "100",
                "-t",
                "1",
                "-r",
                "50",
                "--duration",
                "2s",
                "--encoding",
                encoding,
            ],
        );
        assert_every_delivery_once(&run, 100);
    }
}

#[test]
fn storm_and_chat_against_a_real_gateway() {
    let gw = Gateway::start();

    let storm = harness(
        &gw,
        "storm",
        &[
            "storm",
            "-n",
            "300",
            "-t",
            "3",
            "--rounds",
            "2",
            "--settle",
            "500ms",
            "--reconnect-timeout",
            "15s",
            "--source-addrs",
            "127.0.0.1,127.0.0.2",
        ],
    );
    assert_eq!(storm["connect"]["connected"], 300, "{storm}");
    let rounds = storm["storm"]["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{storm}");
    for r in rounds {
        assert_eq!(r["dropped"], 300, "{storm}");
        assert_eq!(r["back"], 300, "{storm}");
        assert_eq!(r["gave_up"], 0, "{storm}");
        assert!(r["all_back_s"].as_f64().unwrap() > 0.0, "{storm}");
        assert!(r["p99_ms"].as_f64().unwrap() > 0.0, "{storm}");
        assert!(r["max_ms"].as_f64().unwrap() >= r["p50_ms"].as_f64().unwrap());
    }
    assert_eq!(storm["ends"]["open"], 300, "{storm}");

    let admin = format!("http://{}", gw.admin);
    let plot = std::env::temp_dir().join(format!("loadtest-smoke-chat-{}.svg", std::process::id()));
    let plot_arg = plot.display().to_string();
    let chat = harness(
        &gw,
        "chat",
        &[
            "chat",
            "--admin",
            &admin,
            "-n",
            "200",
            "--large-channels",
            "2",
            "--small-channels",
            "40",
            "-r",
            "100",
            "--duration",
            "4s",
            "--churn-fraction",
            "0.2",
            "--churn-period",
            "1s",
            "--typing-fraction",
            "0.3",
            "--typing-period",
            "1s",
            "--plot",
            &plot_arg,
        ],
    );
    let f = &chat["fanout"];
    let c = &chat["chat"];
    assert_eq!(chat["connect"]["connected"], 200, "{chat}");
    assert!(f["publications"].as_u64().unwrap() > 0, "{chat}");
    assert!(f["deliveries"].as_u64().unwrap() > 0, "{chat}");
    assert!(f["latency_us"]["p99"].as_u64().unwrap() > 0, "{chat}");
    // Stable users miss nothing; churners are not checked.
    assert_eq!(c["stable_users"], 160, "{chat}");
    assert_eq!(c["stable_received"], c["stable_expected"], "{chat}");
    assert_eq!(f["losses"], 0, "{chat}");
    assert_eq!(f["duplicates"], 0, "{chat}");
    assert!(c["typing_sent"].as_u64().unwrap() > 0, "{chat}");
    assert!(c["typing_received"].as_u64().unwrap() > 0, "{chat}");
    let churned = c["resubscribes"].as_u64().unwrap() + c["reconnects"].as_u64().unwrap();
    assert!(churned > 0, "{chat}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    let _ = std::fs::remove_file(&plot);
    assert!(
        svg.contains("<svg") && svg.contains("p99"),
        "not an SVG plot"
    );
}

#[test]
fn sweep_starts_gateways_per_shard_count() {
    let bin = gateway_binary();
    let json =
        std::env::temp_dir().join(format!("loadtest-smoke-sweep-{}.json", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("sweep")
        .arg("--gateway-bin")
        .arg(&bin)
        .args(["--shards", "1,2", "--pause", "100ms", "--json"])
        .arg(&json)
        .args([
            "fanout",
            "-s",
            "100",
            "-t",
            "2",
            "-r",
            "50",
            "--duration",
            "1s",
            "--drain",
            "2s",
            "--secret",
            SECRET,
            "--quiet",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "loadtest sweep failed");
    assert!(
        stdout.contains("== sweep: fanout per shard count"),
        "{stdout}"
    );
    let sweep: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(json);
    let rows = sweep["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{sweep}");
    for (row, shards) in rows.iter().zip([1, 2]) {
        assert_eq!(row["shards"], shards, "{sweep}");
        assert_eq!(row["connected"], 100, "{sweep}");
        assert_eq!(row["losses"], 0, "{sweep}");
        assert!(row["deliveries_per_s"].as_f64().unwrap() > 0.0, "{sweep}");
        assert!(row["gateway_cpu"].as_f64().is_some(), "{sweep}");
    }
    assert_eq!(sweep["runs"].as_array().unwrap().len(), 2, "{sweep}");
}

/// A private `redis-server` on a free port, without persistence; killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for this test");
        // Ready once it answers PING.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            use std::io::{Read, Write};
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    break;
                }
            }
            assert!(std::time::Instant::now() < deadline, "redis-server not up");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Redis { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn fanout_through_redis() {
    let redis = Redis::start();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let gw = Gateway::start_with(&["--redis-url", &url, "--redis-prefix", "coregate:"]);
    let fanout = harness(
        &gw,
        "redis",
        &[
            "fanout",
            "--redis-url",
            &url,
            "--redis-prefix",
            "coregate:",
            "-s",
            "100",
            "-t",
            "2",
            "-r",
            "50",
            "--duration",
            "2s",
        ],
    );
    assert_every_delivery_once(&fanout, 100);
}

#[test]
fn voice_rooms_against_a_real_gateway() {
    let gw = Gateway::start();
    let voice = harness(
        &gw,
        "voice",
        &[
            "voice",
            "--rooms",
            "2",
            "-p",
            "3",
            "--duration",
            "2s",
            "--rejoins",
            "1",
        ],
    );
    // 12 joins (6 participants, once and once again), each hearing its room; each room's
    // opening join is not timed (it hears nobody until the next one joins): 10 timed.
    assert_eq!(voice["joins"], 10, "{voice}");
    assert_eq!(voice["joins_failed"], 0, "{voice}");
    // 3 participants a room, each hearing 2 others at 50 packets/s: ~600/s in all.
    let rate = voice["packets_received_per_s"].as_f64().unwrap();
    assert!((450.0..=750.0).contains(&rate), "{voice}");
    assert!(voice["sfu_cpu_s"].as_f64().is_some(), "{voice}");
}
