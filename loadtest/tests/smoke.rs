//! End to end: the harness against a real gateway it starts (`--shards 2`, free ports).
//! `idle` and `fanout` run for a few seconds each with `--json`, and the figures are
//! checked: connections held, bytes per connection measured, every delivery made once.
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
        let mut child = Command::new(gateway_binary())
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
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
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
    let json =
        std::env::temp_dir().join(format!("loadtest-smoke-{name}-{}.json", std::process::id()));
    let pid = gw.child.id().to_string();
    let url = format!("ws://{}/ws", gw.ws);
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .args([
            "--url",
            &url,
            "--secret",
            SECRET,
            "--gateway-pid",
            &pid,
            "--quiet",
        ])
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
    let f = &fanout["fanout"];
    assert_eq!(fanout["connect"]["connected"], 200, "{fanout}");
    assert!(f["publications"].as_u64().unwrap() > 0, "{fanout}");
    assert!(f["deliveries"].as_u64().unwrap() > 0, "{fanout}");
    assert_eq!(f["deliveries"], f["expected_deliveries"], "{fanout}");
    assert_eq!(f["losses"], 0, "{fanout}");
    assert_eq!(f["duplicates"], 0, "{fanout}");
    assert!(f["latency_us"]["p99"].as_u64().unwrap() > 0, "{fanout}");

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
