//! `loadtest voice`: what voice rooms cost the gateway's SFU. `--rooms` rooms of
//! `--participants` each; every participant is one WebSocket connection (signaling) and
//! one UDP socket (media) driving a str0m peer ([`VoicePeer`]), which answers the SFU's
//! offers and, unless `--silent`, sends 50 Opus packets a second. Participants join one
//! after another (`--stagger`), so that each joins a room already talking; then the
//! measured phase (`--duration`); then each leaves and joins again `--rejoins` times.
//!
//! Reported: join → first packet heard (from sending `voice_join` to the first packet of
//! anyone else arriving: the signaling round trips, ICE, DTLS and the first forward),
//! packets received per second and per SFU CPU-second (the gateway's `voice` thread, with
//! `--gateway-pid`), and with `--silent` the gateway's RSS per connected participant.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coregate_protocol::{
    decode_server, encode_client, split_server_frame, ClientEnvelope, ClientMessage,
    DecodedServerMessage, Encoding,
};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use loadtest::voice_peer::{VoicePeer, FRAME};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::VoiceArgs;
use crate::connect::{self, Params, Ws};
use crate::histo::{self, Percentiles};
use crate::procfs;
use crate::tokens::Tokens;

/// The figures of one run.
#[derive(Debug, Serialize)]
pub struct VoiceReport {
    pub rooms: u64,
    pub participants: u64,
    pub silent: bool,
    /// Timed joins whose first packet arrived (each room's opening join is not timed:
    /// see `Plan::opens_room`), and joins that never connected.
    pub joins: u64,
    pub joins_failed: u64,
    pub join_to_first_packet_us: Percentiles,
    pub measured_s: f64,
    pub packets_received_per_s: f64,
    pub sfu_cpu_s: Option<f64>,
    pub packets_per_sfu_cpu_s: Option<f64>,
    /// `--silent`: gateway RSS per connected participant.
    pub rss_per_participant_bytes: Option<f64>,
}

/// What the run shares with its participants.
struct Shared {
    /// Packets received by everyone, updated as they arrive.
    received: AtomicU64,
    /// Participants whose session is up now.
    connected: AtomicU64,
    stop: AtomicBool,
}

pub async fn run(args: &VoiceArgs) -> anyhow::Result<()> {
    let report = measure(args).await?;
    println!(
        "voice: {} rooms × {} participants{}; {} joins (failed {}): join → first packet p50 {} µs p99 {} µs max {} µs; {:.0} packets received/s{}{}",
        report.rooms,
        report.participants,
        if report.silent { " (silent)" } else { "" },
        report.joins,
        report.joins_failed,
        report.join_to_first_packet_us.p50,
        report.join_to_first_packet_us.p99,
        report.join_to_first_packet_us.max,
        report.packets_received_per_s,
        report
            .packets_per_sfu_cpu_s
            .map(|r| format!("; {r:.0} packets per SFU CPU-second"))
            .unwrap_or_default(),
        report
            .rss_per_participant_bytes
            .map(|b| format!("; {b:.0} B of gateway RSS per participant"))
            .unwrap_or_default(),
    );
    args.common.write_report(&report)
}

async fn measure(args: &VoiceArgs) -> anyhow::Result<VoiceReport> {
    let common = &args.common;
    let params = Params::for_gateway(common).await?;
    let tokens = Tokens::new(&common.token_source()?)?;
    let total = args.rooms * args.participants;
    let mut opened = Vec::new();
    for i in 0..total {
        let conn = connect::open(&params, None, &tokens.get(i)?, Vec::new())
            .await
            .map_err(|kind| anyhow::anyhow!("connection {i}: {kind}"))?;
        opened.push(conn.ws);
    }
    let pid = common.gateway_pid;
    let rss_before = pid.and_then(procfs::rss_bytes);
    let shared = Arc::new(Shared {
        received: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let start = Instant::now();
    let joined_by = start + args.stagger * total as u32;
    let mut tasks = Vec::new();
    for (i, ws) in opened.into_iter().enumerate() {
        let i = i as u64;
        let plan = Plan {
            channel: format!("lt-{}", i % args.rooms),
            join_at: start + args.stagger * i as u32,
            opens_room: i < args.rooms,
            talk: !args.silent,
            // After the measured phase, the i-th participant's rejoins, one every
            // `stagger` across all participants and rounds.
            rejoin_at: (0..args.rejoins)
                .map(|round| {
                    let slot = (u64::from(round) * total + i) as u32;
                    joined_by + Duration::from_secs(2) + common.duration + args.stagger * slot
                })
                .collect(),
        };
        tasks.push(tokio::spawn(participant(
            ws,
            params.encoding,
            plan,
            shared.clone(),
        )));
    }
    // Everyone in, sessions up, and 2 s more for the rooms' renegotiations to settle.
    let deadline = joined_by + Duration::from_secs(20);
    while shared.connected.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep_until((joined_by.max(Instant::now()) + Duration::from_secs(2)).into()).await;
    let rss_after = pid.and_then(procfs::rss_bytes);
    let cpu_before = pid.and_then(|p| procfs::thread_cpu_seconds(p, "voice"));
    let received_before = shared.received.load(Ordering::Relaxed);
    let measured_from = Instant::now();
    tokio::time::sleep(common.duration).await;
    let measured = measured_from.elapsed().as_secs_f64();
    let received = shared.received.load(Ordering::Relaxed) - received_before;
    let cpu_after = pid.and_then(|p| procfs::thread_cpu_seconds(p, "voice"));
    let rejoins_end = joined_by
        + Duration::from_secs(2)
        + common.duration
        + args.stagger * (u64::from(args.rejoins) * total) as u32
        + Duration::from_secs(3);
    tokio::time::sleep_until(rejoins_end.max(Instant::now()).into()).await;
    shared.stop.store(true, Ordering::Relaxed);
    let mut joins = histo::new();
    let mut failed = 0;
    for task in tasks {
        if let Ok(outcome) = task.await {
            let _ = joins.add(&outcome.join_to_first);
            failed += outcome.failed_joins;
        }
    }
    let sfu_cpu_s = cpu_before.zip(cpu_after).map(|(b, a)| a - b);
    let connected = shared.connected.load(Ordering::Relaxed);
    Ok(VoiceReport {
        rooms: args.rooms,
        participants: args.participants,
        silent: args.silent,
        joins: joins.len(),
        joins_failed: failed,
        join_to_first_packet_us: Percentiles::of(&joins),
        measured_s: measured,
        packets_received_per_s: received as f64 / measured,
        sfu_cpu_s,
        packets_per_sfu_cpu_s: sfu_cpu_s
            .filter(|cpu| *cpu > 0.0)
            .map(|cpu| received as f64 / cpu),
        rss_per_participant_bytes: match (rss_before, rss_after) {
            (Some(before), Some(after)) if args.silent && connected > 0 => {
                Some((after as f64 - before as f64) / connected as f64)
            }
            _ => None,
        },
    })
}

/// What one participant does, when.
struct Plan {
    channel: String,
    join_at: Instant,
    /// The room's first participant: its first join hears nobody until the next one
    /// joins (`--stagger` later), so that wait is not a join's latency and is not timed.
    opens_room: bool,
    talk: bool,
    rejoin_at: Vec<Instant>,
}

struct Outcome {
    join_to_first: Histogram<u64>,
    failed_joins: u64,
}

/// One participant's session in progress.
struct Session {
    /// Made at the join's `voice_room_state`: signals of an earlier session still on
    /// their way (a renegotiation of the session being replaced) find none.
    peer: Option<VoicePeer>,
    joined_at: Instant,
    /// Whether join → first packet is recorded for this session (see [`Plan::opens_room`]).
    timed: bool,
    first_recorded: bool,
    connected_counted: bool,
    /// Packets received so far, as last added to the shared count.
    reported: u64,
}

/// One participant: its signaling, its media and its timers, until the run stops.
async fn participant(mut ws: Ws, encoding: Encoding, plan: Plan, shared: Arc<Shared>) -> Outcome {
    let mut outcome = Outcome {
        join_to_first: histo::new(),
        failed_joins: 0,
    };
    let Ok(udp) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
        outcome.failed_joins += 1;
        return outcome;
    };
    let Ok(local) = udp.local_addr() else {
        return outcome;
    };
    let mut session: Option<Session> = None;
    let mut joins = std::iter::once(plan.join_at)
        .chain(plan.rejoin_at.iter().copied())
        .collect::<std::collections::VecDeque<_>>();
    let mut next_frame = Instant::now();
    let mut wake_at = Instant::now();
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let join_due = joins.front().copied();
        let wake = join_due
            .map_or(wake_at, |j| j.min(wake_at))
            .max(Instant::now());
        tokio::select! {
            frame = ws.next() => {
                let bytes = match frame {
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(_)) => continue,
                    _ => break,
                };
                for message in decode_all(encoding, &bytes) {
                    if let Some(reply) = signal(&mut session, &message, local) {
                        out.clear();
                        encode_client(encoding, &ClientEnvelope { r#ref: None, message: reply }, &mut out);
                        if connect::send(&mut ws, encoding, out.clone()).await.is_err() {
                            return outcome;
                        }
                    }
                }
            }
            received = udp.recv_from(&mut buf) => {
                let peer = session.as_mut().and_then(|s| s.peer.as_mut());
                if let (Ok((len, from)), Some(peer)) = (received, peer) {
                    peer.handle_datagram(from, &buf[..len], Instant::now());
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        let now = Instant::now();
        if joins.front().is_some_and(|j| *j <= now) {
            let first_join = joins.len() == plan.rejoin_at.len() + 1;
            joins.pop_front();
            if let Some(old) = session.take() {
                if old.connected_counted {
                    shared.connected.fetch_sub(1, Ordering::Relaxed);
                }
                if !old.first_recorded {
                    outcome.failed_joins += 1;
                }
            }
            session = Some(Session {
                peer: None,
                joined_at: now,
                timed: !(first_join && plan.opens_room),
                first_recorded: false,
                connected_counted: false,
                reported: 0,
            });
            out.clear();
            let join = ClientMessage::VoiceJoin {
                channel: plan.channel.clone(),
            };
            encode_client(
                encoding,
                &ClientEnvelope {
                    r#ref: None,
                    message: join,
                },
                &mut out,
            );
            if connect::send(&mut ws, encoding, out.clone()).await.is_err() {
                return outcome;
            }
            next_frame = now;
        }
        let Some(s) = session.as_mut().filter(|s| s.peer.is_some()) else {
            wake_at = now + Duration::from_millis(20);
            continue;
        };
        let peer = s.peer.as_mut().expect("filtered above");
        peer.handle_timeout(now);
        while plan.talk && next_frame <= now {
            peer.send_audio(now);
            next_frame += FRAME;
        }
        let (datagrams, timeout) = peer.poll(now);
        for (destination, contents) in datagrams {
            let _ = udp.send_to(&contents, destination).await;
        }
        if !s.connected_counted && peer.connected_at().is_some() {
            s.connected_counted = true;
            shared.connected.fetch_add(1, Ordering::Relaxed);
        }
        if !s.first_recorded {
            if let Some(first) = peer.first_heard_at() {
                s.first_recorded = true;
                if s.timed {
                    let waited = first.saturating_duration_since(s.joined_at);
                    histo::record(&mut outcome.join_to_first, waited.as_micros() as u64);
                }
            }
        }
        let received = peer.packets_received();
        shared
            .received
            .fetch_add(received - s.reported, Ordering::Relaxed);
        s.reported = received;
        wake_at = if plan.talk {
            timeout.min(next_frame)
        } else {
            timeout
        };
        wake_at = wake_at.max(now + Duration::from_millis(1));
    }
    if session.is_some_and(|s| !s.first_recorded && plan.talk) {
        outcome.failed_joins += 1;
    }
    outcome
}

/// Every message of a frame, decoded whole (voice messages carry SDP).
fn decode_all(encoding: Encoding, frame: &[u8]) -> Vec<DecodedServerMessage> {
    split_server_frame(encoding, frame)
        .map(|parts| {
            parts
                .into_iter()
                .filter_map(|part| decode_server(encoding, part).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What a signal does to the session; the reply to send, if any. Every
/// `voice_room_state` starts a new WebRTC session (after a join, or a room that moved to
/// another node).
fn signal(
    session: &mut Option<Session>,
    message: &DecodedServerMessage,
    local: std::net::SocketAddr,
) -> Option<ClientMessage> {
    let s = session.as_mut()?;
    let channel = message.d["channel"].as_str().unwrap_or_default().to_owned();
    if message.op == "voice_room_state" {
        s.peer = Some(VoicePeer::new(local, Instant::now()));
        return None;
    }
    let peer = s.peer.as_mut()?;
    match message.op.as_str() {
        "voice_offer" => {
            let sdp = message.d["sdp"].as_str()?;
            let answer = peer.answer(sdp).ok()?;
            Some(ClientMessage::VoiceAnswer {
                channel,
                sdp: answer,
            })
        }
        "voice_ice_candidate" => {
            peer.add_remote_candidate(message.d["candidate"].as_str().unwrap_or_default());
            None
        }
        _ => None,
    }
}
