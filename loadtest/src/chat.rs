//! `chat`, on the connection's side: a user subscribed to its channels (see [`ChatMix`])
//! reads everything, recording the latency of message events; a typing user sends bursts
//! of `typing_start`; a churning user now and then swaps one small channel for another or
//! reconnects. Only stable users (no churn) check per-topic sequences for losses, since a
//! churning one misses publications by design.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use coregate_protocol::ClientMessage;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::chatmix::{ChatMix, ChurnAction};
use crate::client::{client_message, ping_bytes, stopped, End, Shared, Stop};
use crate::connect::{self, Params, Ws};
use crate::decode;
use crate::gaps::{GapStats, SeqTracker};
use crate::histo::lock;
use crate::tokens::unix_now;

/// A fleet's chat counters, shared by its connections.
#[derive(Default)]
pub struct ChatCounters {
    typing_sent: AtomicU64,
    typing_received: AtomicU64,
    resubscribes: AtomicU64,
    reconnects: AtomicU64,
    server_errors: AtomicU64,
    churn_errors: Mutex<BTreeMap<String, u64>>,
}

/// A fleet's chat figures; travels in its report.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ChatReport {
    pub typing_sent: u64,
    pub typing_received: u64,
    pub resubscribes: u64,
    pub reconnects: u64,
    /// `error` messages received.
    pub server_errors: u64,
    /// Failed reconnects or sends of churning users, by kind.
    pub churn_errors: BTreeMap<String, u64>,
}

impl ChatCounters {
    pub fn report(&self) -> ChatReport {
        ChatReport {
            typing_sent: self.typing_sent.load(Ordering::Relaxed),
            typing_received: self.typing_received.load(Ordering::Relaxed),
            resubscribes: self.resubscribes.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            server_errors: self.server_errors.load(Ordering::Relaxed),
            churn_errors: lock(&self.churn_errors).clone(),
        }
    }

    fn churn_error(&self, kind: String) {
        *lock(&self.churn_errors).entry(kind).or_default() += 1;
    }
}

impl ChatReport {
    pub fn add(&mut self, o: &ChatReport) {
        self.typing_sent += o.typing_sent;
        self.typing_received += o.typing_received;
        self.resubscribes += o.resubscribes;
        self.reconnects += o.reconnects;
        self.server_errors += o.server_errors;
        for (k, v) in &o.churn_errors {
            *self.churn_errors.entry(k.clone()).or_default() += v;
        }
    }
}

/// The topic names of topic indexes.
pub fn topic_names(topics: &[u32]) -> Vec<String> {
    topics.iter().map(|t| format!("channel:{t}")).collect()
}

/// What one chat connection needs.
pub struct Conn<'a> {
    pub index: u64,
    pub params: &'a Params,
    pub source: Option<IpAddr>,
    pub token: &'a str,
    pub mix: &'a ChatMix,
    pub shared: &'a Shared,
    pub counters: &'a ChatCounters,
    pub connect_timeout: Duration,
}

/// Runs user `conn.index` from its opened connection until the stop signal.
pub async fn run(conn: Conn<'_>, opened: connect::Opened, mut stop: Stop) -> (End, GapStats) {
    let i = conn.index;
    let mix = conn.mix;
    let encoding = conn.params.encoding;
    let churner = mix.is_churner(i);
    let typist = mix.is_typist(i);
    let mut topics = mix.topics_of(i);
    let mut trackers: HashMap<u32, SeqTracker> = if churner {
        HashMap::new()
    } else {
        topics.iter().map(|&t| (t, SeqTracker::default())).collect()
    };
    let mut reader = Reader {
        conn: &conn,
        trackers: &mut trackers,
        latencies: Vec::new(),
    };
    reader.messages(opened.pending);
    let mut ws = Some(opened.ws);
    let heartbeat = conn.shared.heartbeat_override.unwrap_or(opened.heartbeat);
    let offset = Duration::from_millis(i.wrapping_mul(7919) % heartbeat.as_millis().max(1) as u64);
    let mut ping = tokio::time::interval_at(Instant::now() + offset, heartbeat);
    let ping = &mut ping;
    let ping_msg = ping_bytes(encoding);
    let start = Instant::now();
    let (mut churn_k, mut typing_k) = (0u64, 0u64);
    let far = start + Duration::from_secs(86_400 * 365);
    let mut next_churn = if churner {
        start + Duration::from_millis(mix.delay_ms(i, 0, mix.churn_period_ms))
    } else {
        far
    };
    let mut next_typing = if typist {
        start + Duration::from_millis(mix.delay_ms(i ^ 1, 0, mix.typing_period_ms))
    } else {
        far
    };
    let (mut burst_left, mut burst_topic) = (0u32, 0u32);
    let mut next_ref = 10u64;
    let mut end = End::Open;
    loop {
        let Some(socket) = ws.as_mut() else {
            // Down (the gateway closed it, or a reconnect failed): retry each second.
            tokio::select! {
                _ = stopped(&mut stop) => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            ws = reopen(&conn, &topics).await;
            continue;
        };
        let mut send: Option<Vec<u8>> = None;
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => reader.frame(text.as_bytes()),
                Some(Ok(Message::Binary(bytes))) => reader.frame(&bytes),
                Some(Ok(Message::Close(frame))) => {
                    end = End::Closed(frame.map_or(1005, |f| u16::from(f.code)));
                    ws = None;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    end = End::Broken(connect::ws_error_kind(&e));
                    ws = None;
                }
                None => {
                    end = End::Broken("eof".into());
                    ws = None;
                }
            },
            _ = ping.tick() => send = Some(ping_msg.clone()),
            _ = tokio::time::sleep_until(next_typing) => {
                if burst_left == 0 {
                    burst_left = mix.typing_burst.max(1);
                    let pick = crate::chatmix::mix64(i ^ typing_k) % topics.len().max(1) as u64;
                    burst_topic = topics.get(pick as usize).copied().unwrap_or(0);
                }
                burst_left -= 1;
                next_typing = if burst_left > 0 {
                    Instant::now() + Duration::from_secs(1)
                } else {
                    typing_k += 1;
                    Instant::now() + Duration::from_millis(mix.delay_ms(i ^ 1, typing_k, mix.typing_period_ms))
                };
                conn.counters.typing_sent.fetch_add(1, Ordering::Relaxed);
                send = Some(client_message(encoding, None, ClientMessage::TypingStart {
                    topic: format!("channel:{burst_topic}"),
                }));
            },
            _ = tokio::time::sleep_until(next_churn) => {
                let small_held = topics.len().saturating_sub(usize::from(mix.large_channels > 0)) as u32;
                let action = mix.churn_action(i, churn_k, small_held);
                churn_k += 1;
                next_churn = Instant::now() + Duration::from_millis(mix.delay_ms(i, churn_k, mix.churn_period_ms));
                match action {
                    ChurnAction::Resubscribe { slot, to } => {
                        let at = slot as usize + usize::from(mix.large_channels > 0);
                        if !topics.contains(&to) {
                            if let Some(old) = topics.get_mut(at) {
                                let from = std::mem::replace(old, to);
                                conn.counters.resubscribes.fetch_add(1, Ordering::Relaxed);
                                let mut out = client_message(encoding, Some(next_ref), ClientMessage::Unsubscribe {
                                    topics: topic_names(&[from]),
                                });
                                if let Err(e) = connect::send(socket, encoding, out).await {
                                    conn.counters.churn_error(connect::ws_error_kind(&e));
                                }
                                out = client_message(encoding, Some(next_ref + 1), ClientMessage::Subscribe {
                                    topics: topic_names(&[to]),
                                    since: None,
                                });
                                next_ref += 2;
                                send = Some(out);
                            }
                        }
                    }
                    ChurnAction::Reconnect => {
                        let frame = CloseFrame { code: CloseCode::Normal, reason: "churn".into() };
                        let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(Some(frame))).await;
                        conn.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                        ws = reopen(&conn, &topics).await;
                        continue;
                    }
                }
            },
        }
        if let (Some(bytes), Some(socket)) = (send, ws.as_mut()) {
            if let Err(e) = connect::send(socket, encoding, bytes).await {
                end = End::Broken(connect::ws_error_kind(&e));
                ws = None;
            }
        }
    }
    let end = if ws.is_some() { End::Open } else { end };
    let published = stop.borrow().clone().unwrap_or_default();
    let mut gaps = GapStats::default();
    for (topic, tracker) in &trackers {
        gaps += tracker.finish(published.get(*topic as usize).copied().unwrap_or(0));
    }
    (end, gaps)
}

/// Opens a new connection with `topics`, counting a failure as a churn error.
async fn reopen(conn: &Conn<'_>, topics: &[u32]) -> Option<Ws> {
    let opened = tokio::time::timeout(
        conn.connect_timeout,
        connect::open(conn.params, conn.source, conn.token, topic_names(topics)),
    )
    .await
    .unwrap_or_else(|_| Err("timeout".into()));
    match opened {
        Ok(opened) => Some(opened.ws),
        Err(kind) => {
            conn.counters.churn_error(kind);
            None
        }
    }
}

struct Reader<'a, 'c> {
    conn: &'a Conn<'c>,
    trackers: &'a mut HashMap<u32, SeqTracker>,
    latencies: Vec<u64>,
}

impl Reader<'_, '_> {
    fn frame(&mut self, bytes: &[u8]) {
        let mut seen = Vec::new();
        let bad = decode::for_each(self.conn.shared.encoding, bytes, |s| {
            seen.push(s.into_owned())
        });
        if bad > 0 {
            self.conn
                .shared
                .decode_errors
                .fetch_add(bad, Ordering::Relaxed);
        }
        self.messages(seen);
    }

    fn messages(&mut self, messages: Vec<decode::Seen<'_>>) {
        let now = unix_now().as_nanos() as u64;
        for seen in messages {
            match &*seen.op {
                "typing_start" => {
                    self.conn
                        .counters
                        .typing_received
                        .fetch_add(1, Ordering::Relaxed);
                }
                "error" => {
                    self.conn
                        .counters
                        .server_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            if let (Some(ts), Some(seq)) = (seen.ts, seen.seq) {
                if let Some(tracker) = seen.topic_index().and_then(|t| self.trackers.get_mut(&t)) {
                    tracker.observe(seq);
                }
                self.latencies.push(now.saturating_sub(ts) / 1000);
            }
        }
        if !self.latencies.is_empty() {
            let shared = self.conn.shared;
            let n = self.latencies.len() as u64;
            shared
                .latency
                .record_all(self.conn.index, self.latencies.drain(..));
            shared.deliveries.fetch_add(n, Ordering::Relaxed);
            shared.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
        }
    }
}
