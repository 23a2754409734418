//! The server's read path on arbitrary client bytes: a real `LocalHub` (WebSocket
//! framing through tungstenite, the session's limits and decoding, the hub's events),
//! fed the input in a few chunks as a socket would deliver it. Must never panic.
//!
//! Input: byte 0 picks the encoding (bit 0) and whether the upgrade carried a valid
//! token (bit 1); byte 1 picks the number of chunks (bits 0-1, 1 to 4) and the time
//! between them (bits 2-7, in 100 ms steps); the rest is what the client sent.
#![no_main]

mod common;

use std::time::Duration;

use coregate_protocol::Encoding;
use coregate_shards::ShardConfig;
use libfuzzer_sys::fuzz_target;

use common::Rig;

fuzz_target!(|data: &[u8]| {
    let [mode, split, bytes @ ..] = data else {
        return;
    };
    let encoding = if mode & 1 == 0 {
        Encoding::Json
    } else {
        Encoding::MsgPack
    };
    let mut rig = Rig::new(ShardConfig::default(), encoding, mode & 2 != 0, false);
    rig.drain();
    let chunks = usize::from(split & 3) + 1;
    let step = Duration::from_millis(100 * u64::from(split >> 2));
    let size = bytes.len().div_ceil(chunks).max(1);
    for chunk in bytes.chunks(size) {
        rig.input(chunk);
        rig.drain();
        rig.advance(step);
    }
    // Past every deadline: identify, heartbeat, slow-client grace, the close's linger.
    rig.advance(Duration::from_secs(61));
    rig.drain();
    rig.finish();
});
