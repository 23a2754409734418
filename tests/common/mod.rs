//! Shared test support: a real gateway process on free ports, real WebSocket
//! clients (tokio-tungstenite), tokens signed like the backend would.
#![allow(dead_code, clippy::unwrap_used)]

pub mod redis;
pub mod voice;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coregate_protocol::{
    decode_server, encode_client, split_server_frame, ClientEnvelope, ClientMessage,
    DecodedServerMessage, Encoding,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-0123456789abcdef";
/// How long any single expected event may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// A running gateway process, killed on drop.
pub struct Gateway {
    child: Child,
    pub ws: SocketAddr,
    pub admin: SocketAddr,
    /// What the process wrote on stderr so far, when [`Launch::capture_stderr`] asked.
    stderr: Option<CapturedStderr>,
}

/// A gateway's stderr, read into memory by a thread of its own (so that the gateway
/// never blocks on a full pipe), whole once the process has ended.
struct CapturedStderr {
    text: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl CapturedStderr {
    fn start(child: &mut Child) -> CapturedStderr {
        let mut pipe = child.stderr.take().expect("stderr piped");
        let text = Arc::new(Mutex::new(Vec::new()));
        let sink = text.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                }
            }
        });
        CapturedStderr {
            text,
            reader: Some(reader),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().unwrap()).into_owned()
    }

    /// Everything, once the writer is gone.
    fn finish(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.text()
    }
}

/// How to start a gateway: [`Gateway::start`]'s defaults (free ports, the test secret,
/// 2 shards, stderr inherited), or exactly the given flags, with extra environment
/// variables and stderr captured.
pub struct Launch {
    args: Vec<String>,
    env: Vec<(String, String)>,
    capture_stderr: bool,
}

impl Launch {
    /// `serve` on free loopback ports with the test secret, `extra` flags, and 2 shards
    /// unless `extra` says otherwise.
    pub fn new(extra: &[&str]) -> Launch {
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET,
        ];
        if !extra.contains(&"--shards") {
            args.extend_from_slice(&["--shards", "2"]);
        }
        args.extend_from_slice(extra);
        Launch::bare(&args)
    }

    /// `serve` with exactly `args`.
    pub fn bare(args: &[&str]) -> Launch {
        Launch {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: Vec::new(),
            capture_stderr: false,
        }
    }

    /// Sets an environment variable of the process (`RUST_LOG` too, which is otherwise
    /// `$GATEWAY_LOG` or `warn`).
    pub fn env(mut self, name: &str, value: &str) -> Launch {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Collects stderr instead of passing it through: see [`Gateway::stderr`].
    pub fn capture_stderr(mut self) -> Launch {
        self.capture_stderr = true;
        self
    }

    fn spawn(&self) -> Child {
        let mut command = Command::new(gateway_binary());
        command
            .arg("serve")
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(if self.capture_stderr {
                Stdio::piped()
            } else {
                Stdio::inherit()
            });
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command.spawn().expect("coregate starts")
    }

    /// Starts the gateway and waits for its readiness line; panics (with what it
    /// wrote on stderr, if captured) if it exits first.
    pub fn start(self) -> Gateway {
        let mut child = self.spawn();
        let mut stderr = self
            .capture_stderr
            .then(|| CapturedStderr::start(&mut child));
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        if read.is_err() || line.is_empty() {
            let status = child.wait().unwrap();
            let text = stderr.as_mut().map(|s| s.finish()).unwrap_or_default();
            panic!("coregate exited ({status}) before listening: {text}");
        }
        let addr = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                .parse()
                .unwrap()
        };
        Gateway {
            ws: addr("ws="),
            admin: addr("admin="),
            child,
            stderr,
        }
    }

    /// Runs a gateway that is expected to refuse to start: its exit code and stderr.
    /// Panics if it is still running after `limit` (it is killed then).
    pub fn run_to_exit(mut self, limit: Duration) -> (Option<i32>, String) {
        self.capture_stderr = true;
        let mut child = self.spawn();
        let mut stderr = CapturedStderr::start(&mut child);
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.code(), stderr.finish());
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "coregate still running after {limit:?}: {}",
                    stderr.finish()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A TCP port that was free a moment ago on 127.0.0.1 (for tests that need a fixed
/// `--listen`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Gateway {
    /// Starts `coregate` with the test secret, `extra` flags, and 2 shards unless
    /// `extra` says otherwise.
    pub fn start(extra: &[&str]) -> Gateway {
        Launch::new(extra).start()
    }

    /// What the gateway wrote on stderr so far (it must have been started with
    /// [`Launch::capture_stderr`]).
    pub fn stderr(&self) -> String {
        self.stderr.as_ref().expect("stderr captured").text()
    }

    /// Waits until the captured stderr contains `needle`; all of it so far.
    pub async fn wait_for_stderr(&self, needle: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let text = self.stderr();
            if text.contains(needle) {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} on stderr after {limit:?}: {text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM, waits for the process to exit, and returns all it wrote on
    /// stderr (captured) and its exit code.
    pub fn stop(&mut self, limit: Duration) -> (Option<i32>, String) {
        self.signal_term();
        let code = self.wait_exit(limit);
        assert!(code.is_some(), "still running {limit:?} after SIGTERM");
        let text = self.stderr.as_mut().expect("stderr captured").finish();
        (code, text)
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/ws{query}", self.ws)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `POST /publish`.
    pub async fn publish(&self, body: Value) -> u16 {
        http(self.admin, "POST", "/publish", &body.to_string())
            .await
            .0
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http(self.admin, "GET", path, "").await
    }

    /// Waits until `/ready` answers `status`.
    pub async fn wait_ready_status(&self, status: u16, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let (now, _) = self.get("/ready").await;
            if now == status {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "/ready is {now}, not {status}, after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the sum of metric `name`'s samples is `value`, at most `limit`.
    pub async fn wait_metric(&self, name: &str, value: f64, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let now = self.metric(name).await;
            if now == value {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} is {now}, not {value}, after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sum of a metric's samples in `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        metric_samples(&text, name).iter().map(|(_, v)| v).sum()
    }

    /// The samples of metric `name` whose labels are exactly `labels` (`reason="x"`).
    pub async fn metric_labelled(&self, name: &str, labels: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        metric_samples(&text, name)
            .iter()
            .filter(|(l, _)| l == labels)
            .map(|(_, v)| v)
            .sum()
    }
}

impl Gateway {
    /// Sends SIGTERM.
    pub fn signal_term(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Checks every line of a Prometheus text exposition: comments are `# HELP`/`# TYPE`,
/// samples are `name{labels} value` with a valid name and a numeric value.
pub fn assert_prometheus_text(text: &str) {
    assert!(!text.is_empty());
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok(), "value of {line}");
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "name of {line}"
        );
        if let Some(labels) = series.split_once('{').map(|(_, l)| l) {
            assert!(labels.ends_with('}'), "labels of {line}");
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(labels, value)` of each sample of `name` in Prometheus text.
pub fn metric_samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}').to_owned()),
                None => (series, String::new()),
            };
            if metric != name {
                return None;
            }
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// A minimal HTTP/1.1 request over a real socket, with a JSON body: `(status, body)`.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with_headers(
        addr,
        method,
        path,
        &[("Content-Type", "application/json")],
        body,
    )
    .await
}

/// A minimal HTTP/1.1 request with exactly `headers` (besides `Host`,
/// `Content-Length` and `Connection`): `(status, body)`.
pub async fn http_with_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("admin reachable");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs claims with `secret` (HS256).
pub fn sign(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A valid token for `sub`, allowed `topics`, expiring in an hour.
pub fn token(sub: &str, topics: &[&str]) -> String {
    sign(
        json!({"sub": sub, "exp": now() + 3600, "name": sub.to_uppercase(), "topics": topics}),
        SECRET,
    )
}

/// How a client presents its token.
#[derive(Clone, Copy, Debug)]
pub enum TokenIn {
    Query,
    Header,
}

/// A WebSocket client speaking one encoding.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub encoding: Encoding,
    pending: VecDeque<DecodedServerMessage>,
    /// Data frames received so far (to observe batching).
    pub frames: usize,
    next_ref: u64,
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    Http(u16),
    Other(String),
}

impl Client {
    /// Connects with no token (identify in-band).
    pub async fn connect_anonymous(gw: &Gateway, encoding: Encoding) -> Client {
        Self::try_connect(gw, None, TokenIn::Query, encoding)
            .await
            .unwrap()
    }

    /// Connects with `token`; panics on failure.
    pub async fn connect(gw: &Gateway, token: &str, encoding: Encoding) -> Client {
        Self::try_connect(gw, Some(token), TokenIn::Query, encoding)
            .await
            .unwrap()
    }

    /// Connects and waits for `hello` and `ready`.
    pub async fn ready(gw: &Gateway, token: &str, encoding: Encoding) -> Client {
        let mut client = Self::connect(gw, token, encoding).await;
        client.expect_op("hello").await;
        client.expect_op("ready").await;
        client
    }

    /// Like `ready`, with a 4 KiB socket receive buffer, so that a client that stops
    /// reading backs up the server quickly.
    pub async fn ready_with_small_receive_buffer(
        gw: &Gateway,
        token: &str,
        encoding: Encoding,
    ) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(gw.ws).await.unwrap();
        let mut request = gw
            .url(&format!("?token={token}"))
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            encoding.subprotocol().parse().unwrap(),
        );
        let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
        let mut client = Client {
            ws,
            encoding,
            pending: VecDeque::new(),
            frames: 0,
            next_ref: 1,
        };
        client.expect_op("hello").await;
        client.expect_op("ready").await;
        client
    }

    pub async fn try_connect(
        gw: &Gateway,
        token: Option<&str>,
        how: TokenIn,
        encoding: Encoding,
    ) -> Result<Client, ConnectError> {
        let query = match (token, how) {
            (Some(t), TokenIn::Query) => format!("?token={t}"),
            _ => String::new(),
        };
        let mut request = gw.url(&query).into_client_request().unwrap();
        let headers = request.headers_mut();
        headers.insert(
            "Sec-WebSocket-Protocol",
            encoding.subprotocol().parse().unwrap(),
        );
        if let (Some(t), TokenIn::Header) = (token, how) {
            headers.insert("Authorization", format!("Bearer {t}").parse().unwrap());
        }
        Self::connect_request(request, encoding).await
    }

    pub async fn connect_request(
        request: tungstenite::handshake::client::Request,
        encoding: Encoding,
    ) -> Result<Client, ConnectError> {
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(Client {
                ws,
                encoding,
                pending: VecDeque::new(),
                frames: 0,
                next_ref: 1,
            }),
            Err(tungstenite::Error::Http(response)) => {
                Err(ConnectError::Http(response.status().as_u16()))
            }
            Err(e) => Err(ConnectError::Other(e.to_string())),
        }
    }

    /// Sends one message with a fresh `ref`, returned.
    pub async fn send(&mut self, message: ClientMessage) -> u64 {
        let r#ref = self.next_ref;
        self.next_ref += 1;
        let mut out = Vec::new();
        encode_client(
            self.encoding,
            &ClientEnvelope {
                r#ref: Some(r#ref),
                message,
            },
            &mut out,
        );
        self.send_raw(out).await;
        r#ref
    }

    /// Sends raw bytes as a frame of the connection's type.
    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        let message = match self.encoding {
            Encoding::Json => Message::Text(String::from_utf8_lossy(&bytes).into_owned().into()),
            Encoding::MsgPack => Message::Binary(bytes.into()),
        };
        futures_util_send(&mut self.ws, message).await;
    }

    pub async fn send_message(&mut self, message: Message) {
        futures_util_send(&mut self.ws, message).await;
    }

    /// The next server message, or `None` if the connection closed.
    pub async fn next(&mut self) -> Option<DecodedServerMessage> {
        match tokio::time::timeout(WAIT, self.recv()).await {
            Ok(message) => message,
            Err(_) => panic!("no message within {WAIT:?}"),
        }
    }

    /// The next server message, however long it takes (`None`: closed). Cancel-safe:
    /// for clients that wait on their socket and on something else at once.
    pub async fn recv(&mut self) -> Option<DecodedServerMessage> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                return Some(message);
            }
            let frame = match self.ws.next().await {
                Some(Ok(frame)) => frame,
                _ => return None,
            };
            let bytes: Vec<u8> = match frame {
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
                Message::Close(_) => return None,
                _ => continue,
            };
            self.frames += 1;
            for part in split_server_frame(self.encoding, &bytes).expect("well-framed") {
                self.pending
                    .push_back(decode_server(self.encoding, part).expect("decodable"));
            }
        }
    }

    /// The next message, which must have `op`.
    pub async fn expect_op(&mut self, op: &str) -> DecodedServerMessage {
        let message = self
            .next()
            .await
            .unwrap_or_else(|| panic!("closed while waiting for {op}"));
        assert_eq!(message.op, op, "expected {op}, got {message:?}");
        message
    }

    /// Skips messages until one with `op`.
    pub async fn wait_op(&mut self, op: &str) -> DecodedServerMessage {
        loop {
            let message = self
                .next()
                .await
                .unwrap_or_else(|| panic!("closed while waiting for {op}"));
            if message.op == op {
                return message;
            }
        }
    }

    /// Reads until the server closes; returns the close code (skipping messages).
    pub async fn expect_close(&mut self) -> u16 {
        self.expect_close_within(WAIT).await
    }

    pub async fn expect_close_within(&mut self, limit: Duration) -> u16 {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return frame.map_or(1005, |f| u16::from(f.code));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => panic!("connection failed instead of closing: {e}"),
                Ok(None) => panic!("connection ended without a close frame"),
                Err(_) => panic!("no close within {limit:?}"),
            }
        }
    }

    /// Subscribes and returns the `subscribed` reply plus any error replies.
    pub async fn subscribe(&mut self, topics: &[&str]) -> DecodedServerMessage {
        let r#ref = self
            .send(ClientMessage::Subscribe {
                topics: topics.iter().map(|t| t.to_string()).collect(),
                since: None,
            })
            .await;
        let reply = self.wait_op("subscribed").await;
        assert_eq!(reply.r#ref, Some(r#ref));
        reply
    }

    /// Asserts that nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(message) = self.pending.pop_front() {
            panic!("unexpected {message:?}");
        }
        if let Ok(Some(Ok(frame))) = tokio::time::timeout(quiet, self.ws.next()).await {
            panic!("unexpected frame {frame:?}");
        }
    }

    pub fn close_code(code: CloseCode) -> u16 {
        u16::from(code)
    }
}

async fn futures_util_send(ws: &mut WebSocketStream<MaybeTlsStream<TcpStream>>, message: Message) {
    ws.send(message).await.expect("send");
}

/// The gateway the tests start: this build's, or `COREGATE_BIN` (e.g. a release build,
/// to measure what a test observes at production speed).
pub fn gateway_binary() -> std::path::PathBuf {
    std::env::var_os("COREGATE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_coregate").into())
}
