//! End-to-end tests of what an operator meets: start-up refusals (exit 2, naming the
//! setting, the address and the environment variable), logs (no colours off a
//! terminal, JSON all the way, no token at any level), development mode's tokens, and
//! the admin API's guards. Each starts real `coregate` processes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{
    free_port, http_with_headers, now, sign, token, Client, Gateway, Launch, TokenIn, SECRET,
};
use coregate_protocol::{ClientMessage, Encoding};
use serde_json::{json, Value};

/// How long a gateway that refuses to start may take to say so.
const REFUSAL: Duration = Duration::from_secs(10);
/// How long a gateway may take to exit after SIGTERM (a short drain window is set).
const EXIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_second_gateway_on_the_same_port_is_refused_unless_it_is_a_successor() {
    let listen = format!("127.0.0.1:{}", free_port());
    let first = Launch::bare(&[
        "--listen",
        &listen,
        "--admin",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
        "--shards",
        "1",
    ])
    .start();
    assert_eq!(first.ws.to_string(), listen);

    let (code, stderr) = Launch::bare(&[
        "--listen",
        &listen,
        "--admin",
        "127.0.0.1:0",
        "--jwt-secret",
        "another-secret-0123456789",
        "--shards",
        "1",
    ])
    .run_to_exit(REFUSAL);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("`listen`"), "{stderr}");
    assert!(stderr.contains(&listen), "names the address: {stderr}");
    assert!(stderr.contains("--reuse-port-with-running"), "{stderr}");

    // The deliberate successor of a zero-downtime restart shares the port.
    let successor = Launch::bare(&[
        "--listen",
        &listen,
        "--admin",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
        "--shards",
        "1",
        "--reuse-port-with-running",
    ])
    .start();
    assert_eq!(successor.ws.to_string(), listen);
    Client::ready(&successor, &token("ann", &[]), Encoding::Json).await;
}

#[tokio::test]
async fn a_node_starts_again_on_its_port_after_serving_and_draining() {
    let listen = format!("127.0.0.1:{}", free_port());
    let args = [
        "--listen",
        &listen,
        "--admin",
        "127.0.0.1:0",
        "--jwt-secret",
        SECRET,
        "--shards",
        "1",
        "--drain-window",
        "100ms",
    ];
    let mut first = Launch::bare(&args).capture_stderr().start();
    let mut client = Client::ready(&first, &token("ann", &[]), Encoding::Json).await;
    let (code, _) = first.stop(EXIT);
    assert_eq!(code, Some(0));
    assert_eq!(client.expect_close().await, 1012);
    // The closed connections linger in TIME_WAIT on the port: no process listens.
    let again = Launch::bare(&args).start();
    assert_eq!(again.ws.to_string(), listen);
    Client::ready(&again, &token("ann", &[]), Encoding::Json).await;
}

#[tokio::test]
async fn a_busy_admin_port_exits_2_naming_the_setting_and_the_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = busy.local_addr().unwrap().to_string();
    let (code, stderr) = Launch::bare(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        &admin,
        "--jwt-secret",
        SECRET,
    ])
    .run_to_exit(REFUSAL);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("`admin`"), "{stderr}");
    assert!(stderr.contains(&admin), "{stderr}");

    // The same from the environment: the variable is named.
    let (code, stderr) = Launch::bare(&["--listen", "127.0.0.1:0", "--jwt-secret", SECRET])
        .env("COREGATE_ADMIN", &admin)
        .run_to_exit(REFUSAL);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("COREGATE_ADMIN"), "{stderr}");
    assert!(stderr.contains(&admin), "{stderr}");
}

#[tokio::test]
async fn a_missing_or_garbage_public_key_exits_2_naming_the_setting_and_the_file() {
    let dir = std::env::temp_dir().join(format!("coregate-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.pem");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN PUBLIC KEY-----\nnot a key\n").unwrap();
    for key in [&missing, &garbage] {
        let key = key.to_str().unwrap();
        let (code, stderr) = Launch::bare(&[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--jwt-public-key",
            key,
        ])
        .run_to_exit(REFUSAL);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("`jwt_public_key`"), "{stderr}");
        assert!(stderr.contains(key), "names the file: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_bad_value_from_the_environment_names_the_variable() {
    // Refused while parsing (clap would name the flag the operator did not use).
    let (code, stderr) = Launch::new(&[])
        .env("COREGATE_HEARTBEAT_INTERVAL", "soon")
        .run_to_exit(REFUSAL);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("COREGATE_HEARTBEAT_INTERVAL"), "{stderr}");
    assert!(stderr.contains("'soon'"), "{stderr}");
    // Refused by validation.
    let (code, stderr) = Launch::bare(&["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("COREGATE_JWT_SECRET", "short")
        .run_to_exit(REFUSAL);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("COREGATE_JWT_SECRET"), "{stderr}");
    assert!(
        !stderr.contains("short"),
        "a secret is never echoed: {stderr}"
    );
    // The flag, when the flag was given.
    let (code, stderr) = Launch::new(&["--heartbeat-interval", "soon"]).run_to_exit(REFUSAL);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--heartbeat-interval"), "{stderr}");
    assert!(!stderr.contains("COREGATE_"), "{stderr}");
}

#[tokio::test]
async fn text_logs_have_no_colours_when_stderr_is_not_a_terminal() {
    let mut gw = Launch::new(&["--drain-window", "100ms"])
        .env("RUST_LOG", "debug")
        .capture_stderr()
        .start();
    Client::ready(&gw, &token("ann", &[]), Encoding::Json).await;
    let (_, stderr) = gw.stop(EXIT);
    assert!(stderr.contains("coregate listening"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "ANSI escapes in {stderr:?}");
}

/// The `coregate token …` command development mode prints, run as a shell would.
fn run_mint_command(command: &str) -> String {
    let output = std::process::Command::new("sh")
        .args(["-c", command])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The secret file a mint command names (`--jwt-secret-file FILE`).
fn secret_file_of(command: &str) -> std::path::PathBuf {
    let words: Vec<&str> = command.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "--jwt-secret-file")
        .expect("--jwt-secret-file in the command");
    words[at + 1].trim_matches('\'').into()
}

fn assert_owner_only(file: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", file.display());
}

#[tokio::test]
async fn development_mode_prints_a_command_that_mints_tokens_for_this_run() {
    let mut gw = Launch::bare(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--drain-window",
        "100ms",
    ])
    .capture_stderr()
    .start();
    let stderr = gw.wait_for_stderr("--ttl 24h", EXIT).await;
    let mut lines = stderr.lines().map(str::trim);
    lines
        .find(|l| l.contains("sample token"))
        .unwrap_or_else(|| panic!("a sample token in {stderr}"));
    let sample = lines.next().unwrap().to_owned();
    lines
        .find(|l| l.starts_with("mint another"))
        .unwrap_or_else(|| panic!("a mint command in {stderr}"));
    let command = lines.next().unwrap().to_owned();
    assert!(command.contains(" token "), "{command}");
    assert!(
        !command.contains("--jwt-secret "),
        "the secret stays in its file: {command}"
    );
    let file = secret_file_of(&command);
    assert_owner_only(&file);

    let minted = run_mint_command(&command);
    assert_ne!(minted, sample);
    Client::ready(&gw, &sample, Encoding::Json).await;
    let mut client = Client::ready(&gw, &minted, Encoding::Json).await;
    client.subscribe(&["channel:1"]).await;

    let (code, _) = gw.stop(EXIT);
    assert_eq!(code, Some(0));
    assert!(!file.exists(), "the run's secret is removed at exit");
}

#[tokio::test]
async fn json_logs_are_json_development_banner_included() {
    let mut gw = Launch::bare(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--log-format",
        "json",
        "--drain-window",
        "100ms",
    ])
    .env("RUST_LOG", "info")
    .capture_stderr()
    .start();
    let stderr = gw.wait_for_stderr("coregate listening", EXIT).await;
    let events: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    let field = |name: &str| {
        events
            .iter()
            .find_map(|e| e["fields"][name].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("no `{name}` in {stderr}"))
    };
    let sample = field("sample_token");
    let command = field("command");
    assert_owner_only(&secret_file_of(&command));
    Client::ready(&gw, &sample, Encoding::Json).await;
    Client::ready(&gw, &run_mint_command(&command), Encoding::Json).await;
    let (code, stderr) = gw.stop(EXIT);
    assert_eq!(code, Some(0));
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    }
}

/// `token` as tungstenite's trace logging would show it: the frame payload in hex.
fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn no_token_reaches_the_log_even_at_trace_level() {
    let admin_token = "admin-token-0123456789-abcdef";
    let mut gw = Launch::new(&["--admin-token", admin_token, "--drain-window", "100ms"])
        .env("RUST_LOG", "trace")
        .capture_stderr()
        .start();
    let in_query = token("query-user", &["channel:*"]);
    let in_header = token("header-user", &[]);
    let identified = token("band-user", &[]);
    let refreshed = sign(json!({"sub": "band-user", "exp": now() + 7200}), SECRET);
    let bad_refresh = sign(
        json!({"sub": "band-user", "exp": now() + 60}),
        "wrong-secret-0123456789",
    );

    let mut by_query = Client::ready(&gw, &in_query, Encoding::Json).await;
    by_query.subscribe(&["channel:1"]).await;
    let mut by_header =
        Client::try_connect(&gw, Some(&in_header), TokenIn::Header, Encoding::MsgPack)
            .await
            .unwrap();
    by_header.expect_op("hello").await;
    by_header.expect_op("ready").await;
    for encoding in [Encoding::Json, Encoding::MsgPack] {
        let mut in_band = Client::connect_anonymous(&gw, encoding).await;
        in_band.expect_op("hello").await;
        in_band
            .send(ClientMessage::Identify {
                token: identified.clone(),
            })
            .await;
        in_band.expect_op("ready").await;
        in_band
            .send(ClientMessage::Refresh {
                token: refreshed.clone(),
            })
            .await;
        in_band.expect_op("refreshed").await;
        in_band
            .send(ClientMessage::Refresh {
                token: bad_refresh.clone(),
            })
            .await;
        assert_eq!(
            in_band.expect_op("error").await.d["code"],
            json!("invalid_token")
        );
    }
    let bearer = format!("Bearer {admin_token}");
    let published = http_with_headers(
        gw.admin,
        "POST",
        "/publish",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &bearer),
        ],
        r#"{"topic":"channel:1","op":"message_new","d":{}}"#,
    )
    .await;
    assert_eq!(published.0, 202);
    by_query.expect_op("message_new").await;

    let (_, log) = gw.stop(EXIT);
    assert_not_logged(
        &log,
        &[
            ("query token", in_query.as_str()),
            ("header token", in_header.as_str()),
            ("identify token", identified.as_str()),
            ("refresh token", refreshed.as_str()),
            ("refused refresh token", bad_refresh.as_str()),
            ("admin token", admin_token),
        ],
    );

    // With `--proxy-forward-token` the token travels on, in the backend's connect call
    // (an HTTP request of the node's own client): not into the log either.
    let (connect_url, forwarded) = connect_backend().await;
    let mut gw = Launch::new(&[
        "--proxy-connect-url",
        &connect_url,
        "--proxy-forward-token",
        "true",
        "--drain-window",
        "100ms",
    ])
    .env("RUST_LOG", "trace")
    .capture_stderr()
    .start();
    let proxied_query = token("proxied-query-user", &[]);
    let proxied_header = token("proxied-header-user", &[]);
    let mut by_query = Client::connect(&gw, &proxied_query, Encoding::Json).await;
    by_query.expect_op("hello").await;
    by_query.expect_op("ready").await;
    let mut by_header = Client::try_connect(
        &gw,
        Some(&proxied_header),
        TokenIn::Header,
        Encoding::MsgPack,
    )
    .await
    .unwrap();
    by_header.expect_op("hello").await;
    by_header.expect_op("ready").await;
    let mut seen = forwarded.lock().unwrap().clone();
    seen.sort();
    let mut sent = vec![proxied_header.clone(), proxied_query.clone()];
    sent.sort();
    assert_eq!(seen, sent, "the connect calls carried the tokens");
    let (_, log) = gw.stop(EXIT);
    assert_not_logged(
        &log,
        &[
            ("forwarded query token", proxied_query.as_str()),
            ("forwarded header token", proxied_header.as_str()),
        ],
    );
}

/// Fails if any of `secrets` (whole, its last `.`-separated part, or either in hex) is in
/// `log`, which must be a trace-level one.
fn assert_not_logged(log: &str, secrets: &[(&str, &str)]) {
    assert!(log.contains("TRACE"), "the run logged at trace level");
    for (what, secret) in secrets {
        // Any part of a JWT is enough to matter (its payload, its signature).
        let signature = secret.rsplit('.').next().unwrap();
        for form in [
            secret.to_string(),
            signature.to_owned(),
            hex(secret),
            hex(signature),
        ] {
            assert!(!log.contains(&form), "the {what} is in the log");
        }
    }
}

/// A backend whose connect call accepts every token's user as they are; its URL, and
/// the tokens its calls carried.
async fn connect_backend() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let forwarded = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = forwarded.clone();
    let app = axum::Router::new().route(
        "/connect",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let seen = seen.clone();
            async move {
                if let Some(token) = body["token"].as_str() {
                    seen.lock().unwrap().push(token.to_owned());
                }
                axum::Json(json!({ "user_id": body["user_id"] }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/connect"), forwarded)
}

#[tokio::test]
async fn publish_requires_a_json_body_and_the_admin_token_when_one_is_set() {
    let body = r#"{"topic":"channel:1","op":"message_new","d":{}}"#;
    let gw = Gateway::start(&[]);
    // A page can POST text/plain (or a form) to any origin without a preflight.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (status, _) = http_with_headers(
            gw.admin,
            "POST",
            "/publish",
            &[("Content-Type", content_type)],
            body,
        )
        .await;
        assert_eq!(status, 415, "{content_type}");
    }
    let (status, _) = http_with_headers(gw.admin, "POST", "/publish", &[], body).await;
    assert_eq!(status, 415, "no Content-Type");
    let (status, _) = http_with_headers(
        gw.admin,
        "POST",
        "/publish",
        &[("Content-Type", "application/json; charset=utf-8")],
        body,
    )
    .await;
    assert_eq!(status, 202);

    let admin_token = "admin-token-0123456789-abcdef";
    let gw = Gateway::start(&["--admin-token", admin_token]);
    let json = ("Content-Type", "application/json");
    let bearer = format!("Bearer {admin_token}");
    let cases: [(&[(&str, &str)], u16); 5] = [
        (&[json], 401),
        (
            &[
                json,
                ("Authorization", "Bearer admin-token-0123456789-abcdeF"),
            ],
            401,
        ),
        (&[json, ("Authorization", admin_token)], 401),
        (
            &[("Content-Type", "text/plain"), ("Authorization", &bearer)],
            415,
        ),
        (&[json, ("Authorization", &bearer)], 202),
    ];
    for (headers, expected) in cases {
        let (status, _) = http_with_headers(gw.admin, "POST", "/publish", headers, body).await;
        assert_eq!(status, expected, "{headers:?}");
    }
    // Reading routes stay open: probes and scrapers carry no token.
    for path in ["/health", "/ready", "/metrics"] {
        assert_eq!(gw.get(path).await.0, 200, "{path}");
    }
    // A bad admin token is a bad setting.
    let (code, stderr) = Launch::new(&["--admin-token", "short"]).run_to_exit(REFUSAL);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("`admin_token`"), "{stderr}");
}

#[tokio::test]
async fn a_drain_ends_every_part_at_once_whatever_is_configured() {
    let backend = "http://127.0.0.1:9/backend";
    for extra in [
        &["--voice", "true"][..],
        &["--proxy-rpc-url", backend][..],
        &["--proxy-connect-url", backend][..],
        &["--authorizer", "proxy", "--proxy-subscribe-url", backend][..],
    ] {
        let mut args = vec!["--drain-window", "100ms"];
        args.extend_from_slice(extra);
        let mut gw = Gateway::start(&args);
        gw.signal_term();
        // Not after the 5 s shutdown margin that a thread still held by a shard costs.
        assert_eq!(gw.wait_exit(Duration::from_secs(2)), Some(0), "{extra:?}");
    }
}
