//! Opening one authenticated WebSocket connection: bind to a source address, connect,
//! upgrade with the token and subprotocol, wait for `hello` and `ready`, and optionally
//! subscribe. Failures are reduced to a short kind (`http_401`, `io_ConnectionRefused`,
//! `close_4004`, `timeout`, ...) for the error tally.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use coregate_protocol::{encode_client, ClientEnvelope, ClientMessage, Encoding};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::decode::{self, Seen};
use crate::targets::Target;

pub type Ws = WebSocketStream<TcpStream>;

/// The default heartbeat when `hello` does not say.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// How to reach the gateway.
#[derive(Clone, Debug)]
pub struct Params {
    pub target: Target,
    pub encoding: Encoding,
    pub read_buffer: usize,
    /// SO_RCVBUF of the socket; the kernel's default when `None`.
    pub recv_buffer: Option<u32>,
}

impl Params {
    /// The gateway at `--url` (loopback unless `--allow-remote`), in `--encoding`, with the
    /// kernel's default receive buffer: how the single-process scenarios (`rpc`, `voice`,
    /// `storm --recover`) reach it.
    pub async fn for_gateway(common: &crate::cli::Common) -> anyhow::Result<Params> {
        let target = crate::targets::parse(&common.url, "ws").await?;
        crate::targets::check_loopback("--url", target.addr.ip(), common.allow_remote)?;
        Ok(Params {
            target,
            encoding: common.encoding.into(),
            read_buffer: common.read_buffer,
            recv_buffer: None,
        })
    }
}

/// An open, ready (and possibly subscribed) connection.
pub struct Opened {
    pub ws: Ws,
    pub heartbeat: Duration,
    /// Messages that arrived after the last one the handshake needed.
    pub pending: Vec<Seen<'static>>,
    /// The `subscribed` reply, when it subscribed.
    pub subscribed: Option<Seen<'static>>,
}

/// Opens a connection from `source` with `token`; subscribes to `topics` if there are any.
pub async fn open(
    params: &Params,
    source: Option<IpAddr>,
    token: &str,
    topics: Vec<String>,
) -> Result<Opened, String> {
    open_since(params, source, token, topics, None).await
}

/// [`open`], subscribing with `since` (recovery).
pub async fn open_since(
    params: &Params,
    source: Option<IpAddr>,
    token: &str,
    topics: Vec<String>,
    since: Option<std::collections::BTreeMap<String, coregate_protocol::StreamPosition>>,
) -> Result<Opened, String> {
    let stream = tcp(params.target.addr, source, params.recv_buffer).await?;
    let sep = if params.target.path.contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!(
        "ws://{}{}{sep}token={token}",
        params.target.authority, params.target.path
    );
    let mut request = url
        .into_client_request()
        .map_err(|_| "bad_request_url".to_owned())?;
    let protocol = params
        .encoding
        .subprotocol()
        .parse()
        .map_err(|_| "bad_header".to_owned())?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol);
    let config = WebSocketConfig::default()
        .read_buffer_size(params.read_buffer.max(1024))
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| ws_error_kind(&e))?;

    let mut queue = VecDeque::new();
    let mut heartbeat = DEFAULT_HEARTBEAT;
    loop {
        let seen = next(&mut ws, params.encoding, &mut queue).await?;
        match &*seen.op {
            "hello" => {
                if let Some(ms) = seen.heartbeat_ms.filter(|&ms| ms > 0) {
                    heartbeat = Duration::from_millis(ms);
                }
            }
            "ready" => break,
            "error" => return Err("error_before_ready".into()),
            _ => {}
        }
    }
    let mut subscribed = None;
    if !topics.is_empty() {
        let mut out = Vec::new();
        encode_client(
            params.encoding,
            &ClientEnvelope {
                r#ref: Some(1),
                message: ClientMessage::Subscribe { topics, since },
            },
            &mut out,
        );
        send(&mut ws, params.encoding, out)
            .await
            .map_err(|e| ws_error_kind(&e))?;
        loop {
            let seen = next(&mut ws, params.encoding, &mut queue).await?;
            match (&*seen.op, seen.r#ref) {
                ("subscribed", Some(1)) => {
                    subscribed = Some(seen);
                    break;
                }
                ("error", Some(1)) => return Err("subscribe_refused".into()),
                _ => {}
            }
        }
    }
    Ok(Opened {
        ws,
        heartbeat,
        pending: queue.into(),
        subscribed,
    })
}

/// Binding to a source address with port 0 makes the kernel pick a free port at `bind`,
/// without knowing the destination: with thousands of sockets (and TIME_WAITs) from one
/// address that search is linear per socket, and a reconnect storm spent seconds in it
/// (the harness, not the gateway, was then the bottleneck). With
/// `IP_BIND_ADDRESS_NO_PORT` the port is chosen at `connect`, per 4-tuple, as an
/// unbound socket's would be. Best effort: without it the harness is only slower.
fn defer_port_choice(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and an option value that is a live c_int of the
    // length given.
    let _ = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of_val(&on) as libc::socklen_t,
        )
    };
}

async fn tcp(
    addr: SocketAddr,
    source: Option<IpAddr>,
    recv_buffer: Option<u32>,
) -> Result<TcpStream, String> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| io_kind("socket", &e))?;
    if let Some(bytes) = recv_buffer {
        // Before connect, so that the window offered in the handshake is small too.
        socket
            .set_recv_buffer_size(bytes)
            .map_err(|e| io_kind("socket", &e))?;
    }
    if let Some(ip) = source {
        let _ = socket.set_reuseaddr(true);
        defer_port_choice(&socket);
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| io_kind("bind", &e))?;
    }
    let stream = socket.connect(addr).await.map_err(|e| io_kind("io", &e))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Sends one encoded client message as a frame of the encoding's type.
pub async fn send(
    ws: &mut Ws,
    encoding: Encoding,
    bytes: Vec<u8>,
) -> Result<(), tungstenite::Error> {
    let message = match encoding {
        Encoding::Json => match String::from_utf8(bytes) {
            Ok(text) => Message::Text(text.into()),
            Err(e) => Message::Binary(e.into_bytes().into()),
        },
        Encoding::MsgPack => Message::Binary(bytes.into()),
    };
    ws.send(message).await
}

/// The next server message during the handshake phase.
async fn next(
    ws: &mut Ws,
    encoding: Encoding,
    queue: &mut VecDeque<Seen<'static>>,
) -> Result<Seen<'static>, String> {
    loop {
        if let Some(seen) = queue.pop_front() {
            return Ok(seen);
        }
        let bytes = match ws.next().await {
            Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
            Some(Ok(Message::Binary(b))) => b.to_vec(),
            Some(Ok(Message::Close(frame))) => {
                return Err(format!(
                    "close_{}",
                    frame.map_or(1005, |f| u16::from(f.code))
                ))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(ws_error_kind(&e)),
            None => return Err("eof_before_ready".into()),
        };
        let bad = decode::for_each(encoding, &bytes, |s| queue.push_back(s.into_owned()));
        if bad > 0 && queue.is_empty() {
            return Err("undecodable".into());
        }
    }
}

/// A short name for a WebSocket error.
pub fn ws_error_kind(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(response) => format!("http_{}", response.status().as_u16()),
        tungstenite::Error::Io(io) => io_kind("io", io),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed".into(),
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => "eof_without_close_frame".into(),
        tungstenite::Error::Protocol(p) => {
            let name = format!("{p:?}");
            let name = name.split(['(', ' ', '{']).next().unwrap_or("");
            format!("protocol_{name}")
        }
        tungstenite::Error::Capacity(_) => "capacity".into(),
        _ => "ws_other".into(),
    }
}

fn io_kind(what: &str, e: &std::io::Error) -> String {
    format!("{what}_{:?}", e.kind())
}
