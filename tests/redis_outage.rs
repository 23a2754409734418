//! Repeated Redis outages under two nodes (issue 18): one private `redis-server`, two
//! gateway nodes, a client on each subscribed to one topic, and a backend that publishes
//! a numbered event every 20 ms straight into Redis. Each round kills Redis (SIGKILL),
//! keeps it down for about a second, starts it again on the same port, and measures, per
//! node, the time from Redis answering again to the first event delivered after the
//! outage, and to `/ready` answering 200. Every round must resume within 2 s on both
//! nodes.
//!
//! `COREGATE_OUTAGE_ROUNDS` sets the number of rounds (20 by default); the figures are
//! printed (`cargo test --test redis_outage -- --nocapture`), and `loadtest/redis-outage.sh`
//! runs the campaign and keeps them.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{token, Client, Gateway, WAIT};
use coregate_protocol::{ClientMessage, Encoding};
use tokio::sync::mpsc;

const TOPIC: &str = "channel:outage";
/// How often the backend publishes.
const PUBLISH_EVERY: Duration = Duration::from_millis(20);
/// The promise: deliveries resume within this after Redis is back.
const RESUME_WITHIN: Duration = Duration::from_secs(2);
/// Give up on a round after this (the figure is then reported as a failure).
const GIVE_UP: Duration = Duration::from_secs(5);

fn rounds() -> usize {
    std::env::var("COREGATE_OUTAGE_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20)
}

/// How long Redis stays down in `round`: about a second, spread over 0.8–1.2 s so
/// that the restart falls at a different point of the nodes' backoff each round.
fn outage(round: usize) -> Duration {
    Duration::from_millis(800 + (round as u64 * 170) % 400)
}

/// An event a client on `node` received.
struct Delivery {
    node: usize,
    /// Published through node 0's `POST /publish` rather than straight into Redis.
    via_node: bool,
    at: Instant,
}

/// What `/ready` answered on `node`, when it changed.
struct ReadyChange {
    node: usize,
    status: u16,
    at: Instant,
}

/// `POST /publish` of a `tick_node` event on `gw` every 20 ms (503s while the node
/// has no Redis are expected).
async fn publish_through(gw: Arc<Gateway>) {
    let mut ticks = tokio::time::interval(PUBLISH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 0u64.. {
        ticks.tick().await;
        let body = serde_json::json!({"topic": TOPIC, "op": "tick_node", "d": {"seq": seq}});
        gw.publish(body).await;
    }
}

/// The backend: `PUBLISH channel:outage {"op":"tick","d":{"seq":n}}` every 20 ms,
/// reconnecting as soon as Redis is back.
async fn publish_ticks(url: String) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = None;
    let mut ticks = tokio::time::interval(PUBLISH_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 0u64.. {
        ticks.tick().await;
        if conn.is_none() {
            let connect = client.get_multiplexed_async_connection();
            conn = tokio::time::timeout(PUBLISH_EVERY, connect)
                .await
                .ok()
                .and_then(Result::ok);
        }
        let Some(c) = conn.as_mut() else { continue };
        let payload = format!(r#"{{"op":"tick","d":{{"seq":{seq}}}}}"#);
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(TOPIC).arg(payload);
        let sent = publish.query_async::<i64>(c);
        if !matches!(tokio::time::timeout(PUBLISH_EVERY, sent).await, Ok(Ok(_))) {
            conn = None;
        }
    }
}

/// Reads a client's events, pinging it like a live client would.
async fn read_events(node: usize, mut client: Client, events: mpsc::UnboundedSender<Delivery>) {
    let mut ping = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            message = client.next() => {
                let Some(message) = message else { return };
                if message.op.starts_with("tick") {
                    let via_node = message.op == "tick_node";
                    let delivery = Delivery { node, via_node, at: Instant::now() };
                    if events.send(delivery).is_err() {
                        return;
                    }
                }
            }
            _ = ping.tick() => {
                client.send(ClientMessage::Ping).await;
            }
        }
    }
}

/// Polls `/ready` and reports each change.
async fn watch_ready(node: usize, gw: Arc<Gateway>, changes: mpsc::UnboundedSender<ReadyChange>) {
    let mut last = 0;
    loop {
        let (status, _) = gw.get("/ready").await;
        if status != last {
            last = status;
            let change = ReadyChange {
                node,
                status,
                at: Instant::now(),
            };
            if changes.send(change).is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Per node, per round: from Redis back to the first delivery, and to `/ready` 200.
#[derive(Default, Clone, Copy)]
struct Resume {
    delivery: Option<Duration>,
    via_node: Option<Duration>,
    ready: Option<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("none".into(), |d| format!("{}", d.as_millis()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_redis_outages_resume_within_2s_on_both_nodes() {
    let rounds = rounds();
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let nodes: Vec<Arc<Gateway>> = (0..2)
        .map(|_| Arc::new(Gateway::start(&["--redis-url", &url])))
        .collect();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    for (node, gw) in nodes.iter().enumerate() {
        gw.wait_ready_status(200, WAIT).await;
        let mut client = Client::ready(gw, &token("alice", &["channel:*"]), Encoding::Json).await;
        client.subscribe(&[TOPIC]).await;
        tokio::spawn(read_events(node, client, events_tx.clone()));
        tokio::spawn(watch_ready(node, gw.clone(), ready_tx.clone()));
    }
    redis.wait_numsub(TOPIC, 2).await;
    tokio::spawn(publish_ticks(url.clone()));
    tokio::spawn(publish_through(nodes[0].clone()));

    let mut figures = vec![[Resume::default(); 2]; rounds];
    let started = Instant::now();
    for (round, resumed) in figures.iter_mut().enumerate() {
        // Deliveries flow on both nodes before each outage.
        let mut flowing = [false; 2];
        let deadline = Instant::now() + WAIT;
        while flowing != [true, true] {
            let left = deadline.saturating_duration_since(Instant::now());
            let delivery = tokio::time::timeout(left, events.recv()).await;
            let delivery = delivery
                .expect("deliveries flow before the outage")
                .unwrap();
            flowing[delivery.node] = true;
        }

        redis.kill();
        tokio::time::sleep(outage(round)).await;
        // Nothing can have been delivered while Redis was down; drop what was in flight.
        while events.try_recv().is_ok() {}
        while ready.try_recv().is_ok() {}
        redis.start_again().await;
        let back = Instant::now();

        let deadline = back + GIVE_UP;
        while resumed
            .iter()
            .any(|r| r.delivery.is_none() || r.ready.is_none() || r.via_node.is_none())
        {
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::select! {
                Some(d) = events.recv() => {
                    let r = &mut resumed[d.node];
                    let slot = if d.via_node { &mut r.via_node } else { &mut r.delivery };
                    slot.get_or_insert(d.at.saturating_duration_since(back));
                }
                Some(c) = ready.recv() => {
                    if c.status == 200 {
                        let r = &mut resumed[c.node];
                        r.ready.get_or_insert(c.at.saturating_duration_since(back));
                    }
                }
                _ = tokio::time::sleep(left) => break,
            }
        }
        println!(
            "round {round:2}: down {:4} ms; resumed: node 0 {:>4} ms (ready {:>4}, via node 0 {:>4}), \
             node 1 {:>4} ms (ready {:>4}, via node 0 {:>4})",
            outage(round).as_millis(),
            ms(resumed[0].delivery),
            ms(resumed[0].ready),
            ms(resumed[0].via_node),
            ms(resumed[1].delivery),
            ms(resumed[1].ready),
            ms(resumed[1].via_node),
        );
    }
    println!(
        "{rounds} rounds in {:.1} s; load average {}",
        started.elapsed().as_secs_f64(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let mut slow = Vec::new();
    for (node, gw) in nodes.iter().enumerate() {
        let column = |pick: fn(&Resume) -> Option<Duration>| -> Vec<Option<Duration>> {
            figures.iter().map(|f| pick(&f[node])).collect()
        };
        let direct = column(|r| r.delivery);
        let via_node = column(|r| r.via_node);
        println!("node {node}: resume {}", summary(&direct));
        println!("node {node}: resume via node 0 {}", summary(&via_node));
        println!("node {node}: ready {}", summary(&column(|r| r.ready)));
        for (path, took) in [("", &direct), (" via node 0", &via_node)] {
            for (round, took) in took.iter().enumerate() {
                if took.is_none_or(|d| d > RESUME_WITHIN) {
                    slow.push(format!("round {round} node {node}{path}: {} ms", ms(*took)));
                }
            }
        }
        // One outage per kill: a fresh connection was never dropped again.
        let outages = gw.metric("coregate_redis_outages_total").await;
        assert_eq!(outages, rounds as f64, "node {node}'s outages");
    }
    assert!(
        slow.is_empty(),
        "deliveries did not resume within {RESUME_WITHIN:?}: {slow:?}"
    );
}

/// p50, p90 and max, in milliseconds (a round that never resumed counts as `GIVE_UP`).
fn summary(took: &[Option<Duration>]) -> String {
    let mut sorted: Vec<Duration> = took.iter().map(|d| d.unwrap_or(GIVE_UP)).collect();
    sorted.sort();
    format!(
        "p50 {} ms, p90 {} ms, max {} ms",
        percentile(&sorted, 0.5).as_millis(),
        percentile(&sorted, 0.9).as_millis(),
        percentile(&sorted, 1.0).as_millis(),
    )
}
