//! A voice client for the end-to-end tests: a real WebSocket connection to the gateway
//! for signaling, a real UDP socket on loopback for media, and the load harness's
//! str0m peer ([`VoicePeer`]) between them, driven by a task of its own. It answers
//! every offer, takes every candidate, starts a new WebRTC session at every
//! `voice_room_state` (a join, or a room taken over by another node), and sends a
//! steady Opus stream while talking. Tests read what it saw through [`VoiceClient`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coregate_protocol::{ClientMessage, DecodedServerMessage};
use loadtest::voice_peer::{Heard, VoicePeer, FRAME};
use tokio::sync::{mpsc, Notify};

use super::Client;

/// What the client saw.
#[derive(Default)]
struct Seen {
    signals: Vec<DecodedServerMessage>,
    /// The current WebRTC session (a new one at each `voice_room_state`).
    peer: Option<VoicePeer>,
    talking: bool,
    /// Sessions started (one per `voice_room_state`).
    sessions: u32,
    /// Answers the client sends for offers; off, offers are left unanswered.
    answering: bool,
    closed: bool,
}

/// See the module docs.
pub struct VoiceClient {
    pub user_id: String,
    to_server: mpsc::UnboundedSender<ClientMessage>,
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for VoiceClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl VoiceClient {
    /// Takes over a ready connection of `user_id`.
    pub async fn new(client: Client, user_id: &str) -> VoiceClient {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (to_server, commands) = mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(Seen {
            answering: true,
            ..Seen::default()
        }));
        let changed = Arc::new(Notify::new());
        let task = tokio::spawn(drive(client, udp, commands, seen.clone(), changed.clone()));
        VoiceClient {
            user_id: user_id.to_owned(),
            to_server,
            seen,
            changed,
            task,
        }
    }

    pub fn send(&self, message: ClientMessage) {
        let _ = self.to_server.send(message);
    }

    pub fn join(&self, channel: &str) {
        self.send(ClientMessage::VoiceJoin {
            channel: channel.to_owned(),
        });
    }

    pub fn talk(&self, talking: bool) {
        self.seen.lock().unwrap().talking = talking;
    }

    /// Whether offers are answered (on by default).
    pub fn answer_offers(&self, answering: bool) {
        self.seen.lock().unwrap().answering = answering;
    }

    /// Every signal so far (voice ops and any other server message).
    pub fn signals(&self) -> Vec<DecodedServerMessage> {
        self.seen.lock().unwrap().signals.clone()
    }

    pub fn ops(&self) -> Vec<String> {
        self.signals().into_iter().map(|m| m.op).collect()
    }

    pub fn sessions(&self) -> u32 {
        self.seen.lock().unwrap().sessions
    }

    pub fn connected(&self) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.peer
            .as_ref()
            .is_some_and(|p| p.connected_at().is_some())
    }

    /// What the current session received from `user_id`.
    pub fn heard_from(&self, user_id: &str) -> Heard {
        let seen = self.seen.lock().unwrap();
        seen.peer
            .as_ref()
            .map(|p| p.heard_from(user_id))
            .unwrap_or_default()
    }

    pub fn is_closed(&self) -> bool {
        self.seen.lock().unwrap().closed
    }

    /// Waits until `ready` holds of what the client saw, within `limit`.
    pub async fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        ready: impl Fn(&VoiceClient) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.changed.notified();
            if ready(self) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                assert!(
                    ready(self),
                    "{}: no {what} within {limit:?}: {:?}",
                    self.user_id,
                    self.ops()
                );
                return;
            }
        }
    }

    /// Waits for the `n`th signal with `op` (counting from 1); that signal.
    pub async fn wait_op(&self, op: &str, n: usize) -> DecodedServerMessage {
        let count = |c: &VoiceClient| c.ops().iter().filter(|o| *o == op).count();
        self.wait_for(super::WAIT, op, |c| count(c) >= n).await;
        self.signals()
            .into_iter()
            .filter(|m| m.op == op)
            .nth(n - 1)
            .unwrap()
    }

    /// Waits until this client has received `packets` from `user_id`.
    pub async fn wait_heard(&self, user_id: &str, packets: u64, limit: Duration) {
        let what = format!("{packets} packets from {user_id}");
        self.wait_for(limit, &what, |c| c.heard_from(user_id).packets >= packets)
            .await;
    }
}

/// The client's task: signaling, media and timers until the connection closes.
async fn drive(
    mut client: Client,
    udp: tokio::net::UdpSocket,
    mut commands: mpsc::UnboundedReceiver<ClientMessage>,
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
) {
    let local = udp.local_addr().unwrap();
    let mut buf = vec![0u8; 2048];
    let mut next_frame = Instant::now();
    let mut wake_at = Instant::now() + Duration::from_millis(20);
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { return };
                client.send(command).await;
            }
            message = client.recv() => {
                let Some(message) = message else {
                    seen.lock().unwrap().closed = true;
                    changed.notify_waiters();
                    return;
                };
                let reply = handle_signal(&seen, &message, local);
                seen.lock().unwrap().signals.push(message);
                if let Some(reply) = reply {
                    client.send(reply).await;
                }
            }
            received = udp.recv_from(&mut buf) => {
                if let Ok((len, from)) = received {
                    if let Some(peer) = seen.lock().unwrap().peer.as_mut() {
                        peer.handle_datagram(from, &buf[..len], Instant::now());
                    }
                }
            }
            _ = tokio::time::sleep_until(wake_at.into()) => {}
        }
        let now = Instant::now();
        let datagrams = {
            let mut seen = seen.lock().unwrap();
            let talking = seen.talking;
            let Some(peer) = seen.peer.as_mut() else {
                wake_at = now + Duration::from_millis(20);
                changed.notify_waiters();
                continue;
            };
            peer.handle_timeout(now);
            while talking && next_frame <= now {
                peer.send_audio(now);
                next_frame += FRAME;
            }
            if !talking {
                next_frame = now;
            }
            let (datagrams, timeout) = peer.poll(now);
            wake_at = timeout.min(if talking { next_frame } else { timeout });
            wake_at = wake_at.max(now + Duration::from_millis(1));
            datagrams
        };
        for (destination, contents) in datagrams {
            let _ = udp.send_to(&contents, destination).await;
        }
        changed.notify_waiters();
    }
}

/// What a signal does to the client's WebRTC side; the reply to send, if any.
fn handle_signal(
    seen: &Mutex<Seen>,
    message: &DecodedServerMessage,
    local: SocketAddr,
) -> Option<ClientMessage> {
    let mut seen = seen.lock().unwrap();
    let channel = || message.d["channel"].as_str().unwrap_or_default().to_owned();
    match message.op.as_str() {
        "voice_room_state" => {
            seen.peer = Some(VoicePeer::new(local, Instant::now()));
            seen.sessions += 1;
            None
        }
        "voice_offer" if seen.answering => {
            let sdp = message.d["sdp"].as_str().unwrap_or_default();
            let answer = seen.peer.as_mut()?.answer(sdp).expect("a usable offer");
            Some(ClientMessage::VoiceAnswer {
                channel: channel(),
                sdp: answer,
            })
        }
        "voice_ice_candidate" => {
            let candidate = message.d["candidate"].as_str().unwrap_or_default();
            seen.peer.as_mut()?.add_remote_candidate(candidate);
            None
        }
        _ => None,
    }
}
