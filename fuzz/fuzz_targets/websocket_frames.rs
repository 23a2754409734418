//! The read path past tungstenite's frame checks: the input is a script of well-formed,
//! masked client frames (with a few deliberate violations), reads of them in any
//! chunking, the client reading or not, the clock moving, and publications routed to
//! the connection, all against a real `LocalHub`. Most inputs reach the protocol
//! decoders and the session's handling of every op. Must never panic, and a client that
//! never reads must never make the server hold more than its budgets allow.
//!
//! Input: byte 0 is the mode (see `MODE_*`); byte 1 the membership store's verdicts
//! (bit i for the i-th topic of a question; 0: the store is unavailable); then records:
//!
//! - `0b0vrunooo len payload`: a frame. `ooo`: 0-2 the connection's data opcode (text
//!   for JSON, binary for MessagePack), 3 the other one, 4 continuation, 5 ping,
//!   6 pong, 7 close; `n`: not final (a fragment); `u`: unmasked and `r`: RSV1 set
//!   (violations); `v`: `len` is two bytes, big-endian, else one. The payload is the
//!   next `len` bytes (fewer at the end of the input), masked here.
//! - `0b1000aaaa [arg]`: an action. 0: the client's pending bytes arrive (one read);
//!   1 `n`: only their first `n` arrive; 2: the connection writes what it has; 3 `n`:
//!   the clock moves `n` × 50 ms; 4 `n`, 5 `n`, 6 `n`: a publication of about `n` × 8
//!   bytes is routed to `channel:1`, `user:fuzz`, or as `typing_start` (ephemeral) to
//!   `channel:1`; 7 `n`: the verdicts become `n`; others: as 0.
#![no_main]

mod common;

use std::sync::Arc;
use std::time::Duration;

use coregate_protocol::{Encoding, Publication, Topic};
use coregate_shards::{ShardConfig, SharedDelivery};
use libfuzzer_sys::fuzz_target;

use common::{client_frame, Rig};

/// MessagePack, else JSON.
const MODE_MSGPACK: u8 = 1;
/// The upgrade carried a valid token: ready at once (else `identify` in-band).
const MODE_IDENTIFIED: u8 = 2;
/// Small limits, so that every one of them is reachable from a short input.
const MODE_SMALL: u8 = 4;
/// With the `redis` authorizer: `channel:`, `server:` and `presence:` are gated.
const MODE_MEMBERSHIP: u8 = 8;
/// `batch_delay` of 20 ms.
const MODE_BATCH: u8 = 16;
/// The client never reads: what is queued must stay within the budgets.
const MODE_NEVER_READS: u8 = 32;

fn config(mode: u8) -> ShardConfig {
    let mut config = ShardConfig::default();
    if mode & MODE_SMALL != 0 {
        config.max_message_size = 256;
        config.max_frame_size = 1024;
        config.outbound_budget = 2048;
        config.control_budget = 4096;
        config.max_subscriptions = 4;
        config.rate_limit_burst = 5;
        config.heartbeat_interval = Duration::from_secs(2);
        config.identify_timeout = Duration::from_secs(1);
        config.slow_client_grace = Duration::from_secs(1);
    }
    if mode & MODE_BATCH != 0 {
        config.batch_delay = Duration::from_millis(20);
    }
    config.validate().expect("a valid configuration");
    config
}

struct Script<'a>(&'a [u8]);

impl<'a> Script<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

fn publication(topic: &str, op: &str, size: u8) -> Arc<SharedDelivery> {
    let topic = Topic::parse(topic).expect("a valid topic");
    let text = "x".repeat(usize::from(size) * 8);
    let publication = Publication::new(topic, op, serde_json::json!({ "text": text }), None);
    Arc::new(SharedDelivery::new(
        publication,
        common::now(Duration::ZERO).instant,
    ))
}

fuzz_target!(|data: &[u8]| {
    let [mode, verdicts, records @ ..] = data else {
        return;
    };
    let (mode, mut script) = (*mode, Script(records));
    let encoding = if mode & MODE_MSGPACK != 0 {
        Encoding::MsgPack
    } else {
        Encoding::Json
    };
    let reads = mode & MODE_NEVER_READS == 0;
    let mut rig = Rig::new(
        config(mode),
        encoding,
        mode & MODE_IDENTIFIED != 0,
        mode & MODE_MEMBERSHIP != 0,
    );
    rig.verdict_bits = *verdicts;
    let (data_op, other_op) = if encoding.is_binary() { (2, 1) } else { (1, 2) };
    let mut pending = Vec::new();
    while let Some(tag) = script.byte() {
        if tag & 0x80 == 0 {
            let opcode = match tag & 7 {
                0..=2 => data_op,
                3 => other_op,
                4 => 0x0,
                5 => 0x9,
                6 => 0xA,
                _ => 0x8,
            };
            let fin = if tag & 0x08 == 0 { 0x80 } else { 0 };
            let rsv1 = if tag & 0x20 != 0 { 0x40 } else { 0 };
            let len = if tag & 0x40 != 0 {
                let hi = script.byte().unwrap_or(0);
                let lo = script.byte().unwrap_or(0);
                usize::from(u16::from_be_bytes([hi, lo]))
            } else {
                usize::from(script.byte().unwrap_or(0))
            };
            let payload = script.bytes(len);
            client_frame(fin | rsv1 | opcode, payload, tag & 0x10 != 0, &mut pending);
            continue;
        }
        match tag & 0x0f {
            1 => {
                let n = usize::from(script.byte().unwrap_or(0)).min(pending.len());
                rig.input(&pending[..n]);
                pending.drain(..n);
            }
            2 if reads => rig.drain(),
            2 => {}
            3 => {
                let n = script.byte().unwrap_or(0);
                rig.advance(Duration::from_millis(50 * u64::from(n)));
            }
            4..=6 => {
                let size = script.byte().unwrap_or(0);
                let delivery = match tag & 0x0f {
                    4 => publication("channel:1", "message", size),
                    5 => publication("user:fuzz", "notification", size),
                    _ => publication("channel:1", "typing_start", size),
                };
                let now = rig.now().instant;
                rig.hub.route(delivery, now);
                rig.hub.wake_deferred();
            }
            7 => rig.verdict_bits = script.byte().unwrap_or(0),
            _ => {
                rig.input(&pending);
                pending.clear();
            }
        }
        if !reads {
            rig.assert_bounded();
        }
    }
    rig.input(&pending);
    if reads {
        rig.drain();
    } else {
        rig.assert_bounded();
    }
    rig.advance(Duration::from_secs(61));
    if reads {
        rig.drain();
    }
    rig.finish();
});
