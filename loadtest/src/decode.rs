//! Reading server frames on the hot path: each frame is split into messages
//! (`split_server_frame`) and each message is probed for just the fields the harness needs
//! (op, ref, topic, `d.ts`, `d.seq`, `d.heartbeat_interval_ms`) with a borrowing serde
//! struct; anything the probe cannot read falls back to the generic `decode_server`.
//! The harness's own fanout events in JSON, nearly every message of a run, are read first
//! by [`json_event`], a scan of their fixed shape, and go to the probe only if it fails.

use std::borrow::Cow;

use coregate_protocol::{decode_server, split_server_frame, DecodedServerMessage, Encoding};
use serde::Deserialize;

/// What the harness needs of one server message.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Seen<'a> {
    pub op: Cow<'a, str>,
    pub r#ref: Option<u64>,
    pub topic: Option<Cow<'a, str>>,
    /// Publisher's send time (unix ns), for fanout events.
    pub ts: Option<u64>,
    /// Per-topic sequence number, for fanout events.
    pub seq: Option<u64>,
    pub heartbeat_ms: Option<u64>,
    /// The stream position of a publication on a topic with history.
    pub position: Option<(u64, String)>,
    /// `subscribed`: whether every topic asked for with `since` was recovered.
    pub recovered: Option<bool>,
    /// `subscribed`: a position of one of the topics (the harness subscribes to one).
    pub subscribed_position: Option<(u64, String)>,
}

impl Seen<'_> {
    /// The `N` of a `channel:N` topic.
    pub fn topic_index(&self) -> Option<u32> {
        self.topic
            .as_deref()?
            .strip_prefix("channel:")?
            .parse()
            .ok()
    }
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(default, rename = "ref")]
    r#ref: Option<u64>,
    #[serde(default, borrow)]
    topic: Option<Cow<'a, str>>,
    #[serde(default)]
    d: Option<ProbeD>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    epoch: Option<String>,
}

#[derive(Deserialize)]
struct ProbePosition {
    offset: u64,
    epoch: String,
}

#[derive(Deserialize)]
struct ProbeD {
    #[serde(default)]
    ts: Option<u64>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    heartbeat_interval_ms: Option<u64>,
    #[serde(default)]
    recovered: Option<std::collections::BTreeMap<String, bool>>,
    #[serde(default)]
    positions: Option<std::collections::BTreeMap<String, ProbePosition>>,
}

/// `recovered` as one answer: all of them.
fn all_recovered(map: Option<&std::collections::BTreeMap<String, bool>>) -> Option<bool> {
    map.map(|m| m.values().all(|r| *r))
}

/// Calls `f` with each message of `frame`; returns how many messages could not be decoded.
pub fn for_each<'a>(encoding: Encoding, frame: &'a [u8], mut f: impl FnMut(Seen<'a>)) -> u64 {
    let parts = match split_server_frame(encoding, frame) {
        Ok(parts) => parts,
        Err(_) => return 1,
    };
    let mut bad = 0;
    for part in parts {
        let fast = match encoding {
            Encoding::Json => json_event(part),
            Encoding::MsgPack => None,
        };
        match fast.or_else(|| probe(encoding, part)) {
            Some(seen) => f(seen),
            None => match decode_server(encoding, part) {
                Ok(message) => f(from_decoded(&message).into_owned()),
                Err(_) => bad += 1,
            },
        }
    }
    bad
}

/// A fanout event of the harness's own publisher as the gateway writes it in JSON,
/// `{"op":OP,"d":{"ts":TS,"seq":SEQ,…},"topic":TOPIC}`, read by scanning for its fixed
/// shape: at a million deliveries a second the serde probe was a quarter of the harness's
/// CPU, enough to make the harness the slowest part of the run. `None` for anything of
/// another shape (an escape in `op` or `topic`, a `ref`, an `offset`, keys in another
/// order), which the probe then reads. `,"topic":"` can only be a key, never inside a
/// string (its quotes would be escaped there), and `}` right before it closes `d`. What
/// `d` holds after `seq`'s number is not read, so not checked either: the gateway
/// writes JSON.
fn json_event(part: &[u8]) -> Option<Seen<'_>> {
    let rest = part.strip_prefix(b"{\"op\":\"")?;
    let (op, rest) = plain_string(rest)?;
    let rest = rest.strip_prefix(b",\"d\":{\"ts\":")?;
    let (ts, rest) = leading_u64(rest)?;
    let rest = rest.strip_prefix(b",\"seq\":")?;
    let (seq, rest) = leading_u64(rest)?;
    if !matches!(rest.first(), Some(b',' | b'}')) {
        return None; // `2.5`, `2e3`: not the publisher's, and not a u64 to the probe
    }
    const TOPIC_KEY: &[u8] = b"},\"topic\":\"";
    let at = rest
        .windows(TOPIC_KEY.len())
        .rposition(|w| w == TOPIC_KEY)?;
    let (topic, rest) = plain_string(&rest[at + TOPIC_KEY.len()..])?;
    if rest != b"}" {
        return None;
    }
    Some(Seen {
        op: Cow::Borrowed(op),
        topic: Some(Cow::Borrowed(topic)),
        ts: Some(ts),
        seq: Some(seq),
        ..Seen::default()
    })
}

/// A JSON string's text up to its closing quote (the opening one already read) and what
/// follows that quote; `None` if it has an escape or is not UTF-8.
fn plain_string(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let end = bytes.iter().position(|&b| b == b'"' || b == b'\\')?;
    if bytes[end] != b'"' {
        return None;
    }
    Some((std::str::from_utf8(&bytes[..end]).ok()?, &bytes[end + 1..]))
}

/// The unsigned integer `bytes` begin with, and what follows it.
fn leading_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let value = bytes[..digits].iter().try_fold(0u64, |value, digit| {
        value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })?;
    Some((value, &bytes[digits..]))
}

fn probe(encoding: Encoding, part: &[u8]) -> Option<Seen<'_>> {
    let p: Probe<'_> = match encoding {
        Encoding::Json => serde_json::from_slice(part).ok()?,
        Encoding::MsgPack => rmp_serde::from_slice(part).ok()?,
    };
    let d = p.d.as_ref();
    Some(Seen {
        op: p.op,
        r#ref: p.r#ref,
        topic: p.topic,
        ts: d.and_then(|d| d.ts),
        seq: d.and_then(|d| d.seq),
        heartbeat_ms: d.and_then(|d| d.heartbeat_interval_ms),
        position: p.offset.zip(p.epoch),
        recovered: all_recovered(d.and_then(|d| d.recovered.as_ref())),
        subscribed_position: d
            .and_then(|d| d.positions.as_ref())
            .and_then(|m| m.values().next())
            .map(|p| (p.offset, p.epoch.clone())),
    })
}

/// The same view of a generically decoded message.
pub fn from_decoded(m: &DecodedServerMessage) -> Seen<'_> {
    let field = |k: &str| m.d.get(k).and_then(serde_json::Value::as_u64);
    let recovered: Option<std::collections::BTreeMap<String, bool>> =
        m.d.get("recovered")
            .and_then(|r| serde_json::from_value(r.clone()).ok());
    let subscribed_position =
        m.d.get("positions")
            .and_then(|p| p.as_object())
            .and_then(|p| p.values().next())
            .and_then(|p| Some((p["offset"].as_u64()?, p["epoch"].as_str()?.to_owned())));
    Seen {
        op: Cow::Borrowed(&m.op),
        r#ref: m.r#ref,
        topic: m.topic.as_deref().map(Cow::Borrowed),
        ts: field("ts"),
        seq: field("seq"),
        heartbeat_ms: field("heartbeat_interval_ms"),
        position: m.offset.zip(m.epoch.clone()),
        recovered: all_recovered(recovered.as_ref()),
        subscribed_position,
    }
}

impl Seen<'_> {
    pub fn into_owned(self) -> Seen<'static> {
        Seen {
            op: Cow::Owned(self.op.into_owned()),
            r#ref: self.r#ref,
            topic: self.topic.map(|t| Cow::Owned(t.into_owned())),
            ts: self.ts,
            seq: self.seq,
            heartbeat_ms: self.heartbeat_ms,
            position: self.position,
            recovered: self.recovered,
            subscribed_position: self.subscribed_position,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(encoding: Encoding, frame: &[u8]) -> (Vec<Seen<'static>>, u64) {
        let mut out = Vec::new();
        let bad = for_each(encoding, frame, |s| out.push(s.into_owned()));
        (out, bad)
    }

    #[test]
    fn json_batched_frame() {
        let frame = br#"{"op":"hello","d":{"session_id":"x","heartbeat_interval_ms":30000}}
{"op":"message_new","topic":"channel:3","d":{"ts":5,"seq":7,"pad":"xx"}}
{"op":"pong"}
{"op":"weird","d":"a string payload"}"#;
        let (seen, bad) = collect(Encoding::Json, frame);
        assert_eq!(bad, 0);
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[0].heartbeat_ms, Some(30000));
        assert_eq!(seen[1].topic_index(), Some(3));
        assert_eq!((seen[1].ts, seen[1].seq), (Some(5), Some(7)));
        assert_eq!(seen[2].op, "pong");
        assert_eq!(seen[3].op, "weird");
        let (_, bad) = collect(Encoding::Json, b"{\"nope\":1}");
        assert_eq!(bad, 1);
    }

    #[test]
    fn fanout_events_read_by_scanning_are_what_the_probe_reads() {
        let events: [&[u8]; 4] = [
            br#"{"op":"message_new","d":{"ts":1733000000123456789,"seq":42,"pad":"xxxx"},"topic":"channel:7"}"#,
            br#"{"op":"e","d":{"ts":0,"seq":0},"topic":"channel:0"}"#,
            // `d` with a nested object, and a string holding what looks like the key.
            br#"{"op":"e","d":{"ts":5,"seq":6,"n":{"a":1},"s":"},\"topic\":\"x"},"topic":"channel:1"}"#,
            br#"{"op":"e","d":{"ts":5,"seq":6,"topic":"inner"},"topic":"channel:2"}"#,
        ];
        for event in events {
            let fast = json_event(event).expect("the fanout shape");
            assert_eq!(Some(fast), probe(Encoding::Json, event), "{event:?}");
        }
    }

    #[test]
    fn other_shapes_are_left_to_the_probe() {
        let others: [&[u8]; 9] = [
            br#"{"op":"message_new","d":{"ts":1,"seq":2},"ref":3,"topic":"channel:1"}"#,
            br#"{"op":"message_new","d":{"ts":1,"seq":2},"topic":"channel:1","offset":4,"epoch":"e"}"#,
            br#"{"op":"message_new","d":{"seq":2,"ts":1},"topic":"channel:1"}"#,
            br#"{"op":"m\"x","d":{"ts":1,"seq":2},"topic":"channel:1"}"#,
            br#"{"op":"message_new","d":{"ts":1,"seq":2,"topic":"channel:1"}}"#,
            br#"{"op":"message_new","d":{"ts":-1,"seq":2},"topic":"channel:1"}"#,
            br#"{"op":"message_new","d":{"ts":99999999999999999999,"seq":2},"topic":"channel:1"}"#,
            br#"{"op":"message_new","d":{"ts":1,"seq":2.5},"topic":"channel:1"}"#,
            br#"{"op":"hello","d":{"session_id":"x","heartbeat_interval_ms":30000}}"#,
        ];
        for other in others {
            assert_eq!(
                json_event(other),
                None,
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
        // …which reads them as before: the offset and epoch are kept.
        let (seen, bad) = collect(Encoding::Json, others[1]);
        assert_eq!(bad, 0);
        assert_eq!(seen[0].position, Some((4, "e".into())));
        assert_eq!((seen[0].ts, seen[0].seq), (Some(1), Some(2)));
    }

    #[test]
    fn msgpack_concatenated_frame() {
        #[derive(serde::Serialize)]
        struct D {
            ts: u64,
            seq: u64,
        }
        #[derive(serde::Serialize)]
        struct M {
            op: &'static str,
            topic: &'static str,
            d: D,
        }
        let mut frame = Vec::new();
        for seq in 0..3 {
            let m = M {
                op: "message_new",
                topic: "channel:0",
                d: D { ts: 9, seq },
            };
            frame.extend(rmp_serde::to_vec_named(&m).expect("encode"));
        }
        let (seen, bad) = collect(Encoding::MsgPack, &frame);
        assert_eq!(bad, 0);
        assert_eq!(
            seen.iter().map(|s| s.seq).collect::<Vec<_>>(),
            vec![Some(0), Some(1), Some(2)]
        );
    }
}
