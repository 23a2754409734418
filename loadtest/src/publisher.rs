//! Paced publications through `POST /publish` or Redis `PUBLISH` (see [`crate::sink`]):
//! `rate` per second for `duration`, over topics `channel:0..T` (round-robin, or the chat
//! mix's choice). Each carries in `d` its send time (`ts`, unix ns) and a per-topic
//! sequence number (`seq`, from 0, advanced only when the previous one was accepted),
//! padded to about `payload_bytes`. Topics are spread over a few lanes (keep-alive
//! connections); a topic always uses the same one, so its order is kept.
//!
//! Publishing stops at `duration` even when the endpoint could not keep up: what was not
//! sent by then is not sent, and a lane drops what it still holds [`LANE_GRACE`] later.
//! So a saturated run still ends on time and reports what was really published.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::chatmix::ChatMix;
use crate::sink::{Sink, SinkSpec};
use crate::tokens::unix_now;

/// How long after `duration` a lane may still send what it was handed before the end.
const LANE_GRACE: Duration = Duration::from_secs(1);

/// How publication `n` picks its topic.
#[derive(Clone, Debug)]
pub enum TopicPick {
    RoundRobin,
    Chat(ChatMix),
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub sink: SinkSpec,
    pub pick: TopicPick,
    pub rate: f64,
    pub topics: u32,
    pub duration: Duration,
    pub payload_bytes: usize,
    pub op: String,
    pub connections: usize,
}

/// What was published.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Accepted publications per topic.
    pub published: Vec<u64>,
    pub attempted: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn total(&self) -> u64 {
        self.published.iter().sum()
    }
}

/// Publishes according to `plan`; returns when done.
pub async fn run(plan: Plan) -> Outcome {
    let topics = plan.topics.max(1);
    let lanes = plan.connections.clamp(1, topics as usize);
    let start = Instant::now();
    let end = start + plan.duration;
    let mut senders = Vec::with_capacity(lanes);
    let mut handles = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        let (tx, rx) = mpsc::channel::<u32>(64);
        senders.push(tx);
        handles.push(tokio::spawn(lane(
            plan.clone(),
            topics,
            rx,
            end + LANE_GRACE,
        )));
    }
    let total = (plan.rate * plan.duration.as_secs_f64()).round() as u64;
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / plan.rate.max(1e-9));
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due).await;
        } else if now >= end {
            break;
        }
        let topic = match &plan.pick {
            TopicPick::RoundRobin => (i % u64::from(topics)) as u32,
            TopicPick::Chat(mix) => mix.publication_topic(i) % topics,
        };
        if senders[topic as usize % lanes].send(topic).await.is_err() {
            break;
        }
    }
    drop(senders);
    let mut outcome = Outcome {
        published: vec![0; topics as usize],
        ..Outcome::default()
    };
    for handle in handles {
        let Ok(part) = handle.await else { continue };
        for (t, n) in part.published.iter().enumerate() {
            outcome.published[t] += n;
        }
        outcome.attempted += part.attempted;
        for (k, v) in part.errors {
            *outcome.errors.entry(k).or_default() += v;
        }
    }
    outcome.elapsed = start.elapsed();
    outcome
}

/// Publishes the topics it is handed until the channel closes or `stop_at` passes.
async fn lane(plan: Plan, topics: u32, mut jobs: mpsc::Receiver<u32>, stop_at: Instant) -> Outcome {
    let mut sink = Sink::new(&plan.sink).await;
    let mut outcome = Outcome {
        published: vec![0; topics as usize],
        ..Outcome::default()
    };
    let mut body = Vec::with_capacity(plan.payload_bytes + 128);
    while let Some(topic) = jobs.recv().await {
        if Instant::now() >= stop_at {
            break;
        }
        let seq = outcome.published[topic as usize];
        body.clear();
        outcome.attempted += 1;
        let result = match &mut sink {
            Sink::Http(_) => {
                write_body(&mut body, &plan.op, topic, seq, plan.payload_bytes);
                sink.publish(topic, &body).await
            }
            Sink::Redis { .. } | Sink::Broken(_) => {
                write_envelope(&mut body, &plan.op, seq, plan.payload_bytes);
                sink.publish(topic, &body).await
            }
        };
        match result {
            Ok(note) => {
                outcome.published[topic as usize] += 1;
                if let Some(note) = note {
                    *outcome.errors.entry(note.to_owned()).or_default() += 1;
                }
            }
            Err(kind) => *outcome.errors.entry(kind).or_default() += 1,
        }
    }
    outcome
}

/// `{"topic":"channel:T","op":OP,"d":{"ts":NOW,"seq":SEQ,"pad":"xxx"}}` with `d` about
/// `payload_bytes` long: the admin API's body.
pub fn write_body(out: &mut Vec<u8>, op: &str, topic: u32, seq: u64, payload_bytes: usize) {
    out.extend_from_slice(b"{\"topic\":\"channel:");
    out.extend_from_slice(topic.to_string().as_bytes());
    out.extend_from_slice(b"\",");
    write_op_and_d(out, op, seq, payload_bytes);
}

/// `{"op":OP,"d":{"ts":NOW,"seq":SEQ,"pad":"xxx"}}`: the Redis payload of PROTOCOL.md §6
/// (the topic is the channel name, less the prefix).
pub fn write_envelope(out: &mut Vec<u8>, op: &str, seq: u64, payload_bytes: usize) {
    out.push(b'{');
    write_op_and_d(out, op, seq, payload_bytes);
}

fn write_op_and_d(out: &mut Vec<u8>, op: &str, seq: u64, payload_bytes: usize) {
    let ts = unix_now().as_nanos() as u64;
    let d = format!("{{\"ts\":{ts},\"seq\":{seq},\"pad\":\"");
    let pad = payload_bytes.saturating_sub(d.len() + 2);
    out.extend_from_slice(b"\"op\":");
    out.extend_from_slice(serde_json::Value::from(op).to_string().as_bytes());
    out.extend_from_slice(b",\"d\":");
    out.extend_from_slice(d.as_bytes());
    out.extend(std::iter::repeat_n(b'x', pad));
    out.extend_from_slice(b"\"}}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An admin endpoint that takes `delay` to accept each publication.
    async fn slow_endpoint(delay: Duration) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    if matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                        tokio::time::sleep(delay).await;
                        let reply =
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                        let _ = stream.write_all(reply).await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_publisher_that_falls_behind_stops_at_its_duration() {
        let admin = slow_endpoint(Duration::from_millis(200)).await;
        let plan = Plan {
            sink: SinkSpec::Http {
                admin,
                host: "test".into(),
            },
            pick: TopicPick::RoundRobin,
            rate: 200.0,
            topics: 1,
            duration: Duration::from_millis(300),
            payload_bytes: 50,
            op: "message_new".into(),
            connections: 1,
        };
        // 60 publications due within 300 ms, at 5 per second: sending them all would take
        // 12 s. The publisher stops handing them out at 300 ms and the lane at 1.3 s.
        let outcome = run(plan).await;
        assert!(
            outcome.elapsed < Duration::from_secs(3),
            "took {:?}",
            outcome.elapsed
        );
        assert!(
            (2..60).contains(&outcome.total()),
            "published {}",
            outcome.total()
        );
        assert_eq!(outcome.attempted, outcome.total(), "{:?}", outcome.errors);
    }

    #[test]
    fn body_shape_and_size() {
        let mut out = Vec::new();
        write_body(&mut out, "message_new", 3, 17, 100);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["topic"], "channel:3");
        assert_eq!(v["op"], "message_new");
        assert_eq!(v["d"]["seq"], 17);
        assert!(v["d"]["ts"].as_u64().is_some_and(|t| t > 0));
        assert_eq!(v["d"].to_string().len(), 100);

        out.clear();
        write_envelope(&mut out, "message_new", 5, 80);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["op"], "message_new");
        assert!(v.get("topic").is_none());
        assert_eq!(v["d"]["seq"], 5);
        assert_eq!(v["d"].to_string().len(), 80);
    }
}
