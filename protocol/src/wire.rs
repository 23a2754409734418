//! Low-level helpers shared by the codecs: the simd-json front end and the envelope writers.

use std::cell::RefCell;

use simd_json::{BorrowedValue, Buffers};

use crate::error::DecodeError;
use crate::{Encoding, MAX_NESTING_DEPTH};

/// Inputs above this size are parsed with one-off buffers, so that a rare large message does
/// not leave every thread holding buffers of its size forever.
const REUSE_BUFFERS_UP_TO: usize = 128 * 1024;

thread_local! {
    /// simd-json's scratch buffers, reused across messages on this thread (they are sized by
    /// the input, so allocating them per message would cost three allocations each time).
    /// The depth limit is simd-json's own (0.19 has one), set to ours.
    static BUFFERS: RefCell<Buffers> =
        RefCell::new(Buffers::with_max_depth(4096, MAX_NESTING_DEPTH));
}

/// JSON whitespace (RFC 8259 §2).
pub(crate) fn is_blank(input: &[u8]) -> bool {
    input
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// Maps a simd-json error to ours.
fn json_error(e: &simd_json::Error) -> DecodeError {
    match e.error() {
        simd_json::ErrorType::InvalidUtf8 => DecodeError::InvalidUtf8,
        simd_json::ErrorType::DepthLimitExceeded => DecodeError::TooDeep {
            max: MAX_NESTING_DEPTH,
        },
        _ => DecodeError::Malformed(e.to_string()),
    }
}

/// Parses JSON in place with simd-json, nesting bounded by [`MAX_NESTING_DEPTH`].
/// The caller has already checked size and blankness.
pub(crate) fn parse_json(input: &mut [u8]) -> Result<BorrowedValue<'_>, DecodeError> {
    if input.len() > REUSE_BUFFERS_UP_TO {
        let mut buffers = Buffers::with_max_depth(input.len(), MAX_NESTING_DEPTH);
        return simd_json::to_borrowed_value_with_buffers(input, &mut buffers)
            .map_err(|e| json_error(&e));
    }
    BUFFERS
        .with(|cell| match cell.try_borrow_mut() {
            Ok(mut buffers) => simd_json::to_borrowed_value_with_buffers(input, &mut buffers),
            Err(_) => {
                let mut buffers = Buffers::with_max_depth(input.len(), MAX_NESTING_DEPTH);
                simd_json::to_borrowed_value_with_buffers(input, &mut buffers)
            }
        })
        .map_err(|e| json_error(&e))
}

/// Maps an rmp-serde decode error (after the structure walk has passed) to ours.
pub(crate) fn rmp_error(e: &rmp_serde::decode::Error) -> DecodeError {
    use rmp_serde::decode::Error as E;
    match e {
        E::Utf8Error(_) => DecodeError::InvalidUtf8,
        E::InvalidMarkerRead(_) | E::InvalidDataRead(_) => DecodeError::Truncated,
        E::DepthLimitExceeded => DecodeError::TooDeep {
            max: MAX_NESTING_DEPTH,
        },
        other => DecodeError::Malformed(other.to_string()),
    }
}

/// Writes to a `Vec` cannot fail, and our own types always serialize; this keeps that
/// assumption visible (and loud in debug builds) without an `unwrap`.
#[inline]
pub(crate) fn infallible<T, E: std::fmt::Debug>(r: Result<T, E>) {
    if let Err(e) = r {
        debug_assert!(false, "infallible write failed: {e:?}");
    }
}

/// Appends `n` in decimal.
#[inline]
pub(crate) fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends `s` as a JSON string. Topics and ops almost never need escaping, so that case is
/// a plain copy; anything else goes through serde_json's escaper.
#[inline]
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        infallible(serde_json::to_writer(&mut *out, s));
    }
}

/// The envelope keys around a payload. `d` is written by the caller between
/// [`Envelope::head`] and [`Envelope::tail`], so it can come from serde or from bytes
/// encoded earlier (publications).
pub(crate) struct Envelope<'a> {
    pub encoding: Encoding,
    pub op: &'a str,
    pub has_d: bool,
    pub r#ref: Option<u64>,
    pub topic: Option<&'a str>,
    pub offset: Option<u64>,
    /// The stream's epoch, beside `offset`.
    pub epoch: Option<&'a str>,
}

impl Envelope<'_> {
    /// Writes the map header, `op`, and the `d` key when there is one.
    #[inline]
    pub fn head(&self, out: &mut Vec<u8>) {
        match self.encoding {
            Encoding::Json => {
                out.extend_from_slice(b"{\"op\":");
                write_json_str(out, self.op);
                if self.has_d {
                    out.extend_from_slice(b",\"d\":");
                }
            }
            Encoding::MsgPack => {
                let n = 1
                    + u32::from(self.has_d)
                    + u32::from(self.r#ref.is_some())
                    + u32::from(self.topic.is_some())
                    + u32::from(self.offset.is_some())
                    + u32::from(self.epoch.is_some());
                infallible(rmp::encode::write_map_len(out, n));
                infallible(rmp::encode::write_str(out, "op"));
                infallible(rmp::encode::write_str(out, self.op));
                if self.has_d {
                    infallible(rmp::encode::write_str(out, "d"));
                }
            }
        }
    }

    /// Writes `ref`, `topic`, `offset`, `epoch` and closes the map.
    #[inline]
    pub fn tail(&self, out: &mut Vec<u8>) {
        match self.encoding {
            Encoding::Json => {
                if let Some(r) = self.r#ref {
                    out.extend_from_slice(b",\"ref\":");
                    write_u64(out, r);
                }
                if let Some(t) = self.topic {
                    out.extend_from_slice(b",\"topic\":");
                    write_json_str(out, t);
                }
                if let Some(o) = self.offset {
                    out.extend_from_slice(b",\"offset\":");
                    write_u64(out, o);
                }
                if let Some(e) = self.epoch {
                    out.extend_from_slice(b",\"epoch\":");
                    write_json_str(out, e);
                }
                out.push(b'}');
            }
            Encoding::MsgPack => {
                if let Some(r) = self.r#ref {
                    infallible(rmp::encode::write_str(out, "ref"));
                    infallible(rmp::encode::write_uint(out, r));
                }
                if let Some(t) = self.topic {
                    infallible(rmp::encode::write_str(out, "topic"));
                    infallible(rmp::encode::write_str(out, t));
                }
                if let Some(o) = self.offset {
                    infallible(rmp::encode::write_str(out, "offset"));
                    infallible(rmp::encode::write_uint(out, o));
                }
                if let Some(e) = self.epoch {
                    infallible(rmp::encode::write_str(out, "epoch"));
                    infallible(rmp::encode::write_str(out, e));
                }
            }
        }
    }

    /// Writes the whole message with `d` serialized by serde.
    pub fn write_with<P: serde::Serialize + ?Sized>(&self, d: &P, out: &mut Vec<u8>) {
        self.head(out);
        if self.has_d {
            match self.encoding {
                Encoding::Json => infallible(serde_json::to_writer(&mut *out, d)),
                Encoding::MsgPack => infallible(rmp_serde::encode::write_named(out, d)),
            }
        }
        self.tail(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_and_strings() {
        let mut out = Vec::new();
        for n in [0, 7, 10, 12345, u64::MAX] {
            out.clear();
            write_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        out.clear();
        write_json_str(&mut out, "channel:1");
        assert_eq!(out, br#""channel:1""#);
        out.clear();
        write_json_str(&mut out, "a\"b\\c\n");
        assert_eq!(out, br#""a\"b\\c\n""#);
    }
}
