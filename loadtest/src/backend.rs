//! `loadtest backend`: a trivial application backend for the gateway's HTTP calls
//! (docs/protocol.md §8), to measure what the gateway adds: `/rpc` echoes `d`,
//! `/connect` accepts the token's user (or `anon-<n>` without one), `/subscribe` allows
//! every topic. HTTP/1.1 keep-alive over tokio and httparse, nothing else, so that its
//! own cost stays small beside the gateway's. Bounded by `--duration`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cli::BackendArgs;
use crate::targets::check_loopback;

/// Largest request accepted (head and body).
const MAX_REQUEST: usize = 1024 * 1024;

/// Serves until `--duration` has passed; prints `listening ADDR` first, for scripts.
pub async fn run(args: &BackendArgs) -> anyhow::Result<()> {
    check_loopback("--listen", args.listen.ip(), false)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("listening {}", listener.local_addr()?);
    let calls = Arc::new(AtomicU64::new(0));
    let serve = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                let _ = serve_connection(stream, &calls).await;
            });
        }
    };
    tokio::select! {
        () = serve => {}
        () = tokio::time::sleep(args.duration) => {}
    }
    println!("calls {}", calls.load(Ordering::Relaxed));
    Ok(())
}

async fn serve_connection(mut stream: TcpStream, calls: &AtomicU64) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let (path, body_start, body_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&buf) {
                Ok(httparse::Status::Complete(head)) => {
                    let len = request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                        .unwrap_or(0usize);
                    break (request.path.unwrap_or("/").to_owned(), head, len);
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => {}
                _ => return Ok(()),
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if body_start + body_len > MAX_REQUEST {
            return Ok(());
        }
        while buf.len() < body_start + body_len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let n = calls.fetch_add(1, Ordering::Relaxed);
        let body: Value =
            serde_json::from_slice(&buf[body_start..body_start + body_len]).unwrap_or(Value::Null);
        buf.drain(..body_start + body_len);
        let answer = answer(&path, &body, n).to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        stream.write_all(response.as_bytes()).await?;
    }
}

/// What the trivial backend answers on `path`.
fn answer(path: &str, body: &Value, n: u64) -> Value {
    match path {
        "/connect" => match body["user_id"].as_str() {
            Some(user) => json!({"user_id": user, "data": {}}),
            None => json!({"user_id": format!("anon-{n}"), "data": {}}),
        },
        "/subscribe" => json!({"allow": true}),
        _ => json!({"d": body["d"]}),
    }
}

/// The address `--listen` takes by default: a fixed loopback port, so that the gateway
/// can be started with its URL first.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3900";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_gets_its_trivial_answer() {
        assert_eq!(
            answer("/rpc", &json!({"d": {"n": 1}}), 0),
            json!({"d": {"n": 1}})
        );
        assert_eq!(
            answer("/connect", &json!({"user_id": "lt-3"}), 0)["user_id"],
            "lt-3"
        );
        assert_eq!(answer("/connect", &json!({}), 7)["user_id"], "anon-7");
        assert_eq!(answer("/subscribe", &json!({}), 0), json!({"allow": true}));
    }

    #[test]
    fn the_default_address_is_loopback() {
        let addr: std::net::SocketAddr = DEFAULT_LISTEN.parse().expect("a socket address");
        assert!(addr.ip().is_loopback());
    }
}
