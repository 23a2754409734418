//! Codec hot paths: publication decode (in one encoding or both), encode and framing,
//! client message decode/encode, large voice signaling payloads, and frame batching.
//! Figures are recorded in BENCHMARKS.md.

use std::hint::black_box;

use coregate_protocol::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// A typical chat event, ~150 bytes as the backend publishes it.
const MESSAGE_NEW: &[u8] = br#"{"op":"message_new","d":{"id":"01HF3K9Z8QW2","channel_id":"1234","author":{"id":"u42","name":"Ann"},"content":"hello there, how are you?","ts":1700000000000}}"#;

fn label(e: Encoding) -> &'static str {
    match e {
        Encoding::Json => "json",
        Encoding::MsgPack => "msgpack",
    }
}

/// The size of a server data frame's WebSocket header for a payload of `len` bytes (RFC 6455
/// §5.2), as the shards' `ws::data_header_len` gives it.
fn ws_header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    }
}

fn publication(c: &mut Criterion) {
    let topic = Topic::parse("channel:1234").expect("topic");
    let mut g = c.benchmark_group("publication_message_new");
    g.throughput(Throughput::Bytes(MESSAGE_NEW.len() as u64));
    // simd-json parses in place, so each iteration restores the input first (a 150-byte
    // copy, included in the figure). `d` is made in the encodings in use only: one of
    // them, or both.
    let mut buf = MESSAGE_NEW.to_vec();
    for (name, forms) in [
        ("json", EncodingSet::JSON),
        ("msgpack", EncodingSet::MSGPACK),
        ("both", EncodingSet::ALL),
    ] {
        g.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| {
                buf.copy_from_slice(MESSAGE_NEW);
                black_box(
                    Publication::from_backend_payload_in(topic.clone(), &mut buf, 64 * 1024, forms)
                        .expect("decode"),
                )
            })
        });
    }
    let decode = |forms| {
        Publication::from_backend_payload_in(
            topic.clone(),
            &mut MESSAGE_NEW.to_vec(),
            64 * 1024,
            forms,
        )
        .expect("decode")
        .with_position(123_456, "e1".into())
    };
    let p = decode(EncodingSet::ALL);
    for e in Encoding::ALL {
        g.bench_function(BenchmarkId::new("encode", label(e)), |b| {
            b.iter(|| black_box(p.encode(e)))
        });
        // What a delivery's framed WireMessage is made of: room for the WebSocket header,
        // then the envelope, in one buffer of exactly the frame's size (the shards write
        // the 2-byte header into the room).
        g.bench_function(BenchmarkId::new("frame", label(e)), |b| {
            b.iter(|| black_box(p.encode_with_headroom(e, ws_header_len)))
        });
        // The slow path: `d` was not made in `e` (a subscriber raced the publication, or
        // a node-born publication with MessagePack in use) and is converted first.
        let other = match e {
            Encoding::Json => EncodingSet::MSGPACK,
            Encoding::MsgPack => EncodingSet::JSON,
        };
        let converted = decode(other);
        g.bench_function(BenchmarkId::new("frame_converted", label(e)), |b| {
            b.iter(|| black_box(converted.encode_with_headroom(e, ws_header_len)))
        });
    }
    g.finish();
}

fn subscribe(c: &mut Criterion) {
    let msg = ClientEnvelope {
        r#ref: Some(42),
        message: ClientMessage::Subscribe {
            topics: (0..10).map(|i| format!("channel:{}", 1000 + i)).collect(),
            since: None,
        },
    };
    let mut g = c.benchmark_group("subscribe_10_topics");
    for e in Encoding::ALL {
        let mut encoded = Vec::new();
        encode_client(e, &msg, &mut encoded);
        let mut buf = encoded.clone();
        g.bench_function(BenchmarkId::new("decode_client", label(e)), |b| {
            b.iter(|| {
                buf.copy_from_slice(&encoded);
                black_box(decode_client(e, &mut buf, DEFAULT_MAX_MESSAGE_SIZE).expect("decode"))
            })
        });
        let mut out = Vec::with_capacity(512);
        g.bench_function(BenchmarkId::new("encode_client", label(e)), |b| {
            b.iter(|| {
                out.clear();
                encode_client(e, black_box(&msg), &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn voice(c: &mut Criterion) {
    let sdp: String = "a=candidate:1 1 udp 2130706431 10.0.0.1 54321 typ host\r\n"
        .repeat(3 * 1024 / 56)
        .chars()
        .take(3 * 1024)
        .collect();
    let offer = ServerMessage::VoiceOffer {
        channel: "voice:77".into(),
        sdp: sdp.clone(),
    };
    let answer = ClientEnvelope {
        r#ref: Some(9),
        message: ClientMessage::VoiceAnswer {
            channel: "voice:77".into(),
            sdp,
        },
    };
    let mut g = c.benchmark_group("voice_3k_sdp");
    for e in Encoding::ALL {
        let mut out = Vec::with_capacity(8 * 1024);
        g.bench_function(BenchmarkId::new("encode_server_offer", label(e)), |b| {
            b.iter(|| {
                out.clear();
                encode_server(e, &ServerEnvelope::new(black_box(&offer)), &mut out);
                black_box(out.len())
            })
        });
        let mut encoded_offer = Vec::new();
        encode_server(e, &ServerEnvelope::new(&offer), &mut encoded_offer);
        g.bench_function(BenchmarkId::new("decode_server_offer", label(e)), |b| {
            b.iter(|| black_box(decode_server(e, black_box(&encoded_offer)).expect("decode")))
        });
        let mut encoded = Vec::new();
        encode_client(e, &answer, &mut encoded);
        let mut buf = encoded.clone();
        g.bench_function(BenchmarkId::new("decode_client_answer", label(e)), |b| {
            b.iter(|| {
                buf.copy_from_slice(&encoded);
                black_box(decode_client(e, &mut buf, DEFAULT_MAX_MESSAGE_SIZE).expect("decode"))
            })
        });
    }
    g.finish();
}

fn frames(c: &mut Criterion) {
    let topic = Topic::parse("channel:1234").expect("topic");
    let p = Publication::from_backend_payload(topic, &mut MESSAGE_NEW.to_vec(), 64 * 1024)
        .expect("decode");
    let mut g = c.benchmark_group("frame_join");
    for e in Encoding::ALL {
        let message = p.encode(e);
        for n in [1usize, 16, 64] {
            // The buffer is reused across frames: no allocation after the first.
            let mut buf = Vec::with_capacity(64 * message.len() + 64);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(BenchmarkId::new(label(e), n), |b| {
                b.iter(|| {
                    let mut fb = FrameBuilder::from_buffer(e, 1 << 20, std::mem::take(&mut buf));
                    for _ in 0..n {
                        fb.push(black_box(&message)).expect("fits");
                    }
                    black_box(fb.len());
                    buf = fb.into_inner();
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, publication, subscribe, voice, frames);
criterion_main!(benches);
