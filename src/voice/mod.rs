//! Voice channels: a selective forwarding unit on str0m, signaled over the clients'
//! gateway sockets (PROTOCOL.md §4–§5).
//!
//! The SFU runs off the shards' hot path, on a thread of its own with a current-thread
//! tokio runtime, one UDP socket and the sans-IO [`sfu::Sfu`]. Shards hand it each
//! connection's `voice_*` ops over a bounded queue ([`coregate_shards::SharedVoice`]);
//! it answers each connection through its shard's answers queue
//! ([`coregate_shards::ShardMessage::Voice`]), which lands on the connection's
//! priority lane. The server side is ICE-lite on `--voice-udp` (announced as
//! `--voice-announce` when clients reach it at another address), so a client needs no
//! STUN or TURN server to reach it.
//!
//! - [`sfu`]: rooms, participants, demultiplexing, forwarding (sans-IO);
//! - [`participant`]: one participant's WebRTC session and its negotiation;
//! - [`stun`]: the STUN USERNAME, to tell whose a first datagram is;
//! - [`cluster`]: rooms across nodes, through Redis (one node owns a room's media).

pub mod cluster;
pub mod participant;
pub mod sfu;
#[cfg(test)]
mod sfu_tests;
pub mod stun;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use coregate_shards::stats::LatencyHistogram;
use coregate_shards::{ShardMessage, ShardSender, SharedVoice, VoiceRequest};

use sfu::{Peer, Sfu, SfuConfig, Signal};

/// Voice ops waiting for the SFU; past this a shard answers `voice_error {code:
/// unavailable}` at once rather than queue without bound.
pub const QUEUE: usize = 4096;
/// The largest datagram read: WebRTC keeps packets under the path MTU.
const DATAGRAM_MAX: usize = 2048;

/// What the SFU counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct VoiceStats {
    /// Rooms with someone in them (a gauge).
    pub rooms: AtomicU64,
    /// Participants in every room (a gauge).
    pub participants: AtomicU64,
    pub joins: AtomicU64,
    pub datagrams_in: AtomicU64,
    /// Datagrams from an address and for a ufrag the SFU does not know.
    pub datagrams_unknown: AtomicU64,
    /// RTP packets written to another participant's session.
    pub packets_forwarded: AtomicU64,
    /// From a join to its WebRTC session being up (ICE and DTLS).
    pub connect_time: LatencyHistogram,
}

/// The voice settings, as `--voice-*` gave them.
#[derive(Clone, Debug)]
pub struct VoiceSettings {
    /// Where the UDP socket binds.
    pub bind: SocketAddr,
    /// What clients are told to send to; `None`: the socket's own address.
    pub announce: Option<SocketAddr>,
    pub room_size: usize,
    /// Redis, for rooms across nodes; `None`: this node alone.
    pub cluster: Option<cluster::ClusterSettings>,
}

/// The SFU's socket, bound before anything starts (so that an address it cannot have
/// is a setting's error), and the queue the shards will send on.
pub struct BoundVoice {
    socket: std::net::UdpSocket,
    local: SocketAddr,
    /// What clients are told to send to.
    pub announce: SocketAddr,
    /// What the shards send voice ops with.
    pub shared: SharedVoice,
    requests: flume::Receiver<VoiceRequest>,
    settings: VoiceSettings,
}

/// Binds the UDP socket; the error names the address.
pub fn bind(settings: VoiceSettings) -> std::io::Result<BoundVoice> {
    let socket = std::net::UdpSocket::bind(settings.bind)?;
    socket.set_nonblocking(true)?;
    let local = socket.local_addr()?;
    let announce = settings.announce.unwrap_or_else(|| reachable(local));
    let (requests_tx, requests) = flume::bounded(QUEUE);
    Ok(BoundVoice {
        socket,
        local,
        announce,
        shared: SharedVoice::new(requests_tx),
        requests,
        settings,
    })
}

/// The address to announce for a socket bound at `local`: itself, or, bound to an
/// unspecified address, the one this host's default route leaves from (no packet is
/// sent to find it), else loopback.
fn reachable(local: SocketAddr) -> SocketAddr {
    if !local.ip().is_unspecified() {
        return local;
    }
    let probe = std::net::UdpSocket::bind((local.ip(), 0))
        .and_then(|probe| probe.connect("192.0.2.1:9").map(|()| probe))
        .and_then(|probe| probe.local_addr());
    let ip = match probe {
        Ok(addr) => addr.ip(),
        Err(_) => std::net::Ipv4Addr::LOCALHOST.into(),
    };
    tracing::warn!(
        %ip,
        "voice: the UDP socket is bound to an unspecified address; announcing {ip} \
         (set --voice-announce to the address clients reach)"
    );
    SocketAddr::new(ip, local.port())
}

impl BoundVoice {
    /// Starts the SFU's thread; it ends once every shard has let go of its queue.
    pub fn spawn(
        self,
        shards: Vec<ShardSender>,
        stats: Arc<VoiceStats>,
    ) -> anyhow::Result<std::thread::JoinHandle<()>> {
        let BoundVoice {
            socket,
            local,
            announce,
            shared: _,
            requests,
            settings,
        } = self;
        let config = SfuConfig {
            announce,
            local,
            room_size: settings.room_size,
        };
        let cluster = settings.cluster;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("voice".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let socket = match tokio::net::UdpSocket::from_std(socket) {
                        Ok(socket) => socket,
                        Err(error) => {
                            tracing::error!(%error, "voice: the UDP socket failed; voice is off");
                            return;
                        }
                    };
                    let sfu = Sfu::new(config, stats);
                    run(sfu, socket, requests, shards, cluster).await;
                });
            })?;
        tracing::info!(udp = %local, %announce, "voice: SFU listening");
        Ok(thread)
    }
}

/// The SFU's loop: requests from the shards (and, across nodes, from Redis), datagrams
/// from the socket, the sessions' timers; after each, what the SFU has to send.
async fn run(
    mut sfu: Sfu,
    socket: tokio::net::UdpSocket,
    requests: flume::Receiver<VoiceRequest>,
    shards: Vec<ShardSender>,
    cluster: Option<cluster::ClusterSettings>,
) {
    let mut cluster = match cluster {
        Some(settings) => Some(cluster::Cluster::start(settings).await),
        None => None,
    };
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let deadline = sfu
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + std::time::Duration::from_secs(3600));
        let cluster_event = async {
            match cluster.as_mut() {
                Some(cluster) => cluster.next_event().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            request = requests.recv_async() => {
                let Ok(request) = request else { break };
                let now = Instant::now();
                let local = Peer { node: None, shard_id: request.shard_id, conn: request.conn };
                match cluster.as_mut() {
                    Some(cluster) => {
                        for (peer, request) in cluster.route_local(local, request).await {
                            sfu.handle_request(peer, request, now);
                        }
                    }
                    None => sfu.handle_request(local, request, now),
                }
            }
            received = socket.recv_from(&mut buf) => {
                if let Ok((len, source)) = received {
                    sfu.handle_datagram(source, &buf[..len], Instant::now());
                }
            }
            event = cluster_event => {
                let now = Instant::now();
                for (peer, request) in event.requests {
                    sfu.handle_request(peer, request, now);
                }
                for signal in event.signals {
                    deliver_local(&shards, signal);
                }
            }
            _ = tokio::time::sleep_until(deadline) => sfu.handle_timeout(Instant::now()),
        }
        let output = sfu.take_output();
        for datagram in output.datagrams {
            // UDP: a datagram the kernel cannot take now is lost, as on the network.
            let _ = socket.try_send_to(&datagram.contents, datagram.destination);
        }
        for signal in output.signals {
            match (&signal.to.node, cluster.as_mut()) {
                (Some(_), Some(cluster)) => cluster.send_signal(signal).await,
                _ => deliver_local(&shards, signal),
            }
        }
        if let Some(cluster) = cluster.as_mut() {
            cluster.keep_rooms(sfu.room_sizes()).await;
        }
    }
    tracing::debug!("voice: SFU ended");
}

/// Hands a signal to the connection's shard (answers queue: never refused for space).
fn deliver_local(shards: &[ShardSender], signal: Signal) {
    if let Some(shard) = shards.get(signal.to.shard_id) {
        let _ = shard.answer(ShardMessage::Voice {
            conn: signal.to.conn,
            message: signal.message,
            r#ref: signal.r#ref,
            left: signal.left,
        });
    }
}
