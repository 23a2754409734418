//! What one connection does once it is open: an idle or subscribed connection reads
//! everything (recording latency and sequence gaps of fanout events) and pings every
//! heartbeat; a slow subscriber stops reading until the run ends, then reads briefly to
//! find out how the gateway closed it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coregate_protocol::{encode_client, ClientEnvelope, ClientMessage, Encoding};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::connect::{self, Opened, Ws};
use crate::decode::{self, Seen};
use crate::gaps::{GapStats, SeqTracker};
use crate::histo::Striped;
use crate::tokens::unix_now;

/// What a connection does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Idle,
    Subscriber { topic: u32 },
    Slow { topic: u32 },
}

/// The stop signal: `Some(per-topic publication counts)` once the run is over.
pub type Stop = watch::Receiver<Option<Arc<Vec<u64>>>>;

/// State shared by every connection of a fleet.
pub struct Shared {
    pub encoding: Encoding,
    pub latency: Striped,
    pub deliveries: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Latest delivery time seen (unix ns).
    pub last_delivery_ns: AtomicU64,
    pub heartbeat_override: Option<Duration>,
    pub slow_drain: Duration,
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Still open when the run stopped.
    Open,
    /// The gateway sent a close frame with this code.
    Closed(u16),
    /// The connection ended without a close frame (`eof`, `io_ConnectionReset`, ...).
    Broken(String),
}

/// A finished connection's figures.
pub struct Outcome {
    pub role: Role,
    pub end: End,
    pub gaps: GapStats,
}

/// Runs an opened connection until the stop signal and reports how it went.
pub async fn run(
    index: u64,
    role: Role,
    opened: Opened,
    shared: &Shared,
    mut stop: Stop,
) -> Outcome {
    let Opened {
        mut ws,
        heartbeat,
        pending,
        ..
    } = opened;
    let mut tracker = SeqTracker::default();
    let topic = match role {
        Role::Idle => None,
        Role::Subscriber { topic } | Role::Slow { topic } => Some(topic),
    };
    let mut reader = Reader {
        index,
        topic,
        tracker: &mut tracker,
        shared,
        latencies: Vec::new(),
    };
    reader.handle(pending.into_iter());
    let end = match role {
        Role::Slow { .. } => {
            let _ = stop.wait_for(Option::is_some).await;
            drain_for_close(&mut ws, shared.slow_drain).await
        }
        _ => {
            let heartbeat = shared.heartbeat_override.unwrap_or(heartbeat);
            read_loop(&mut ws, &mut reader, heartbeat, &mut stop).await
        }
    };
    let published = stop
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|v| v.clone());
    let gaps = match (topic, published) {
        (Some(t), Some(counts)) if !matches!(role, Role::Slow { .. }) => {
            tracker.finish(counts.get(t as usize).copied().unwrap_or(0))
        }
        _ => GapStats::default(),
    };
    Outcome { role, end, gaps }
}

struct Reader<'a> {
    index: u64,
    topic: Option<u32>,
    tracker: &'a mut SeqTracker,
    shared: &'a Shared,
    latencies: Vec<u64>,
}

impl Reader<'_> {
    fn handle<'m>(&mut self, messages: impl Iterator<Item = Seen<'m>>) {
        let now = unix_now().as_nanos() as u64;
        for seen in messages {
            note(self.topic, self.tracker, &mut self.latencies, now, &seen);
        }
        self.flush(now);
    }

    fn frame(&mut self, bytes: &[u8]) {
        let now = unix_now().as_nanos() as u64;
        let (topic, tracker, latencies) = (self.topic, &mut *self.tracker, &mut self.latencies);
        let bad = decode::for_each(self.shared.encoding, bytes, |seen| {
            note(topic, tracker, latencies, now, &seen);
        });
        if bad > 0 {
            self.shared.decode_errors.fetch_add(bad, Ordering::Relaxed);
        }
        self.flush(now);
    }

    fn flush(&mut self, now: u64) {
        if self.latencies.is_empty() {
            return;
        }
        let n = self.latencies.len() as u64;
        self.shared
            .latency
            .record_all(self.index, self.latencies.drain(..));
        self.shared.deliveries.fetch_add(n, Ordering::Relaxed);
        self.shared
            .last_delivery_ns
            .fetch_max(now, Ordering::Relaxed);
    }
}

/// Counts a fanout event (one carrying `ts` and `seq`): its latency, and its sequence if it
/// is on the connection's topic.
fn note(
    topic: Option<u32>,
    tracker: &mut SeqTracker,
    latencies: &mut Vec<u64>,
    now: u64,
    seen: &Seen<'_>,
) {
    if let (Some(ts), Some(seq)) = (seen.ts, seen.seq) {
        let on = seen.topic_index();
        if on.is_some() && on == topic {
            tracker.observe(seq);
        }
        latencies.push(now.saturating_sub(ts) / 1000);
    }
}

async fn read_loop(
    ws: &mut Ws,
    reader: &mut Reader<'_>,
    heartbeat: Duration,
    stop: &mut Stop,
) -> End {
    // Spread the pings of many connections over the interval.
    let offset = Duration::from_millis(
        reader.index.wrapping_mul(7919) % heartbeat.as_millis().max(1) as u64,
    );
    let mut ping = tokio::time::interval_at(Instant::now() + offset, heartbeat);
    let ping_bytes = ping_bytes(reader.shared.encoding);
    // Made once, not once per message: at a million deliveries a second, registering
    // and dropping a fresh waiter on the stop signal for every frame was a visible share
    // of the harness's CPU.
    let stop = stopped(stop);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return End::Open,
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => reader.frame(text.as_bytes()),
                Some(Ok(Message::Binary(bytes))) => reader.frame(&bytes),
                Some(Ok(Message::Close(frame))) => {
                    return End::Closed(frame.map_or(1005, |f| u16::from(f.code)))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return End::Broken(connect::ws_error_kind(&e)),
                None => return End::Broken("eof".into()),
            },
            _ = ping.tick() => {
                if let Err(e) = connect::send(ws, reader.shared.encoding, ping_bytes.clone()).await {
                    return End::Broken(connect::ws_error_kind(&e));
                }
            }
        }
    }
}

/// Resolves once the stop signal is given (holding no guard of the value across an
/// await, so the future stays `Send` inside `select!`).
pub async fn stopped(stop: &mut Stop) {
    let _ = stop.wait_for(Option::is_some).await;
}

/// A `ping` message in `encoding`.
pub fn ping_bytes(encoding: Encoding) -> Vec<u8> {
    client_message(encoding, None, ClientMessage::Ping)
}

/// One client message, encoded.
pub fn client_message(encoding: Encoding, r#ref: Option<u64>, message: ClientMessage) -> Vec<u8> {
    let mut out = Vec::new();
    encode_client(encoding, &ClientEnvelope { r#ref, message }, &mut out);
    out
}

/// Reads (discarding) until a close frame, the end of the stream, or `limit`.
async fn drain_for_close(ws: &mut Ws, limit: Duration) -> End {
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return End::Open,
            Ok(Some(Ok(Message::Close(frame)))) => {
                return End::Closed(frame.map_or(1005, |f| u16::from(f.code)))
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return End::Broken(connect::ws_error_kind(&e)),
            Ok(None) => return End::Broken("eof".into()),
        }
    }
}
