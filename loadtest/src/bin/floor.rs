//! `floor`: the least a server can do for the fan-out the harness measures, so that
//! coregate's cost per delivery can be set beside what the kernel alone asks for
//! (BENCHMARKS.md, "Where a delivery's CPU goes").
//!
//! It speaks just enough of the protocol for `loadtest fanout` to connect, subscribe and
//! measure: the upgrade with the subprotocol the client offers, `hello`, `ready`, and
//! `subscribed` for the first `subscribe`. It checks no token, keeps no topics (every
//! connection gets every publication: the fan-out runs it serves have one topic), answers
//! no ping, and reads nothing after the subscribe. Publications come as the gateway's admin
//! API takes them (`POST /publish`) and are encoded with the gateway's own encoder
//! (`Publication::encode`), so the bytes on the wire are the same.
//!
//! The delivery path is one thread and a plain loop: take every publication that is
//! waiting, pack them into as few WebSocket frames as the gateway would (messages joined
//! into frames of at most the gateway's `max_frame_size`, behind the gateway's own frame
//! header), then one blocking `write` of those bytes per connection, in order. No
//! readiness polling, no per-connection queue, no budget: with clients that read, that is
//! the floor of the same I/O.
//!
//!     floor [--listen 127.0.0.1:0] [--admin 127.0.0.1:0] [--socket-send-buffer 65536]
//!
//! prints `listening ws=ADDR admin=ADDR` like the gateway, then serves until killed.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::{mpsc, LazyLock};
use std::thread;

use anyhow::Context;
use bytes::BytesMut;
use coregate_protocol::{
    decode_client, encode_server, negotiate, ClientMessage, Encoding, FrameBuilder, FrameFull,
    Publication, ServerEnvelope, ServerMessage,
};
use coregate_shards::config::ShardConfig;
use coregate_shards::ws::put_data_header;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::{self, Message};

/// The gateway's defaults, which the floor keeps to: the most bytes of messages in one
/// frame, the largest client message and publication, the heartbeat announced in `hello`
/// (never enforced here) and the socket send buffer.
static GATEWAY: LazyLock<ShardConfig> = LazyLock::new(ShardConfig::default);

/// What the delivery loop is handed.
enum Work {
    /// A connection that subscribed, and the encoding it speaks.
    Subscriber(TcpStream, Encoding),
    /// A publication accepted by `POST /publish`.
    Publication(Publication),
}

/// The floor program: coregate's fan-out as one plain write loop (see the module docs).
#[derive(clap::Parser)]
struct Args {
    /// WebSocket listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Admin API listen address (`POST /publish`, `GET /ready`).
    #[arg(long, default_value = "127.0.0.1:0")]
    admin: String,
    /// `SO_SNDBUF` of each accepted socket, as the gateway's setting of the same name
    /// (its default); 0 leaves it to the kernel's autotuning.
    #[arg(long, default_value_t = GATEWAY.socket_send_buffer)]
    socket_send_buffer: usize,
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let ws = TcpListener::bind(&args.listen).context("--listen")?;
    let admin = TcpListener::bind(&args.admin).context("--admin")?;
    println!(
        "listening ws={} admin={}",
        ws.local_addr()?,
        admin.local_addr()?
    );
    let (work, inbox) = mpsc::channel();
    let to_subscribers = work.clone();
    let send_buffer = args.socket_send_buffer;
    thread::spawn(move || {
        accept_each(&ws, to_subscribers, move |s, w| {
            subscribe(s, w, send_buffer)
        })
    });
    thread::spawn(move || accept_each(&admin, work, serve_admin));
    deliver(&inbox);
    Ok(())
}

/// Accepts connections for ever, each served on a thread of its own by `serve`.
fn accept_each(
    listener: &TcpListener,
    work: mpsc::Sender<Work>,
    serve: impl Fn(TcpStream, mpsc::Sender<Work>) -> io::Result<()> + Copy + Send + 'static,
) {
    for stream in listener.incoming().flatten() {
        let work = work.clone();
        thread::spawn(move || {
            let _ = serve(stream, work);
        });
    }
}

/// The delivery loop: everything waiting, framed once, written to every connection.
fn deliver(inbox: &mpsc::Receiver<Work>) {
    let mut subscribers: Vec<(TcpStream, Encoding)> = Vec::new();
    let mut batch: Vec<Publication> = Vec::new();
    let mut frames: [BytesMut; 2] = Default::default();
    while let Ok(first) = inbox.recv() {
        for item in std::iter::once(first).chain(inbox.try_iter()) {
            match item {
                Work::Subscriber(stream, encoding) => subscribers.push((stream, encoding)),
                Work::Publication(publication) => batch.push(publication),
            }
        }
        if batch.is_empty() {
            continue;
        }
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let out = &mut frames[encoding.index()];
            out.clear();
            if subscribers.iter().any(|(_, e)| *e == encoding) {
                write_frames(encoding, &batch, out);
            }
        }
        batch.clear();
        subscribers
            .retain_mut(|(stream, encoding)| stream.write_all(&frames[encoding.index()]).is_ok());
    }
}

/// Appends `batch` to `out` as WebSocket frames of at most the gateway's `max_frame_size`
/// bytes of messages.
fn write_frames(encoding: Encoding, batch: &[Publication], out: &mut BytesMut) {
    let mut frame = FrameBuilder::new(encoding, GATEWAY.max_frame_size);
    for publication in batch {
        let message = publication.encode(encoding);
        if let Err(FrameFull) = frame.push(&message) {
            close_frame(&mut frame, out);
            // An empty builder takes any message, a larger one alone.
            let _ = frame.push(&message);
        }
    }
    close_frame(&mut frame, out);
}

/// Moves what `frame` holds to `out`, after its WebSocket header (the gateway's own).
fn close_frame(frame: &mut FrameBuilder, out: &mut BytesMut) {
    if frame.is_empty() {
        return;
    }
    put_data_header(frame.encoding(), frame.len(), out);
    out.extend_from_slice(frame.as_bytes());
    frame.clear();
}

/// Upgrades, greets, waits for the first `subscribe`, answers it, and hands the socket to
/// the delivery loop.
fn subscribe(stream: TcpStream, work: mpsc::Sender<Work>, send_buffer: usize) -> io::Result<()> {
    stream.set_nodelay(true)?;
    if send_buffer > 0 {
        socket2::SockRef::from(&stream).set_send_buffer_size(send_buffer)?;
    }
    // The callback must be `'static`, so the choice comes back through a shared cell.
    let chosen_encoding = Rc::new(Cell::new(Encoding::Json));
    let record_choice = Rc::clone(&chosen_encoding);
    // tungstenite's callback signature, whose error is a whole HTTP response.
    #[allow(clippy::result_large_err)]
    let choose = move |request: &Request, mut response: Response| {
        let offered = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok());
        // The gateway's negotiation, and its answer to offers none of which are ours: 400.
        match negotiate(offered) {
            Ok(negotiated) => {
                record_choice.set(negotiated.encoding);
                if let Some(echo) = negotiated.echo {
                    response
                        .headers_mut()
                        .insert("sec-websocket-protocol", HeaderValue::from_static(echo));
                }
                Ok(response)
            }
            Err(refused) => {
                let mut refusal = ErrorResponse::new(Some(refused.to_string()));
                *refusal.status_mut() = StatusCode::BAD_REQUEST;
                Err(refusal)
            }
        }
    };
    let mut ws = tungstenite::accept_hdr(stream.try_clone()?, choose)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let encoding = chosen_encoding.get();
    send(&mut ws, encoding, None, &hello())?;
    send(&mut ws, encoding, None, &ready())?;
    loop {
        let mut data = match ws.read().map_err(io::Error::other)? {
            Message::Text(text) => text.as_bytes().to_vec(),
            Message::Binary(bytes) => bytes.to_vec(),
            _ => continue,
        };
        let Ok(envelope) = decode_client(encoding, &mut data, GATEWAY.max_message_size) else {
            continue;
        };
        if let ClientMessage::Subscribe { topics, .. } = envelope.message {
            let reply = ServerMessage::Subscribed {
                topics,
                positions: None,
                recovered: None,
            };
            send(&mut ws, encoding, envelope.r#ref, &reply)?;
            break;
        }
    }
    // The handshake's clone of the socket closes here; the original stays open.
    drop(ws);
    work.send(Work::Subscriber(stream, encoding))
        .map_err(io::Error::other)
}

fn hello() -> ServerMessage {
    ServerMessage::Hello {
        session_id: "floor".into(),
        heartbeat_interval_ms: GATEWAY.heartbeat_interval.as_millis() as u64,
    }
}

fn ready() -> ServerMessage {
    ServerMessage::Ready {
        user_id: "floor".into(),
        session_id: "floor".into(),
        topics: Vec::new(),
        data: None,
    }
}

fn send(
    ws: &mut tungstenite::WebSocket<TcpStream>,
    encoding: Encoding,
    r#ref: Option<u64>,
    message: &ServerMessage,
) -> io::Result<()> {
    let mut out = Vec::new();
    let envelope = ServerEnvelope {
        r#ref,
        topic: None,
        offset: None,
        message,
    };
    encode_server(encoding, &envelope, &mut out);
    let message = if encoding.is_binary() {
        Message::Binary(out.into())
    } else {
        Message::Text(String::from_utf8(out).map_err(io::Error::other)?.into())
    };
    ws.send(message).map_err(io::Error::other)
}

/// `POST /publish` (202, or 400 with the reason) and `GET /ready` (200) on a keep-alive
/// connection.
fn serve_admin(mut stream: TcpStream, work: mpsc::Sender<Work>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let Some((method, path, head_len, body_len)) = read_head(&mut stream, &mut buf)? else {
            return Ok(());
        };
        while buf.len() < head_len + body_len {
            read_more(&mut stream, &mut buf)?;
        }
        let mut body = buf[head_len..head_len + body_len].to_vec();
        buf.drain(..head_len + body_len);
        let reply = match (method.as_str(), path.as_str()) {
            ("POST", "/publish") => {
                match Publication::from_admin_body(&mut body, GATEWAY.max_message_size) {
                    Ok(publication) => {
                        let _ = work.send(Work::Publication(publication));
                        "202 Accepted".to_owned()
                    }
                    Err(e) => format!("400 {e}"),
                }
            }
            ("GET", "/ready") => "200 OK".to_owned(),
            _ => "404 Not Found".to_owned(),
        };
        stream.write_all(format!("HTTP/1.1 {reply}\r\ncontent-length: 0\r\n\r\n").as_bytes())?;
    }
}

/// Reads until `buf` holds a whole request head; `None` when the peer closed between
/// requests. Returns the method, path, head length and `content-length`.
fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> io::Result<Option<(String, String, usize, usize)>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head_len) =
            request.parse(buf).map_err(io::Error::other)?
        {
            let body_len = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            let method = request.method.unwrap_or_default().to_owned();
            let path = request.path.unwrap_or_default().to_owned();
            return Ok(Some((method, path, head_len, body_len)));
        }
        if read_more(stream, buf)? == 0 {
            return Ok(None);
        }
    }
}

fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk)?;
    if n == 0 && !buf.is_empty() {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}
