//! Several messages per WebSocket frame (PROTOCOL.md §2): newline-delimited JSON, or
//! MessagePack values back to back. Splitting never allocates; joining reuses one buffer.

use crate::codec::{decode_client, decode_walked_msgpack};
use crate::error::{DecodeError, DecodeErrorWithRef};
use crate::message::ClientEnvelope;
use crate::msgpack;
use crate::wire;
use crate::Encoding;

/// Iterator over the client messages of one frame; see [`decode_client_frame`].
#[derive(Debug)]
pub struct ClientFrameMessages<'a> {
    encoding: Encoding,
    rest: &'a mut [u8],
    max_message_size: usize,
    done: bool,
}

impl Iterator for ClientFrameMessages<'_> {
    type Item = Result<ClientEnvelope, DecodeErrorWithRef>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.encoding {
            Encoding::Json => loop {
                let rest = std::mem::take(&mut self.rest);
                if rest.is_empty() {
                    self.done = true;
                    return None;
                }
                let (segment, tail) = match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        let (segment, tail) = rest.split_at_mut(i);
                        (segment, &mut tail[1..])
                    }
                    None => (rest, &mut [][..]),
                };
                self.rest = tail;
                // A frame never ends with '\n', but be lenient with blank lines.
                if wire::is_blank(segment) {
                    continue;
                }
                return Some(decode_client(
                    Encoding::Json,
                    segment,
                    self.max_message_size,
                ));
            },
            Encoding::MsgPack => {
                let rest = std::mem::take(&mut self.rest);
                if rest.is_empty() {
                    self.done = true;
                    return None;
                }
                match msgpack::value_len(rest) {
                    Ok(len) => {
                        let (value, tail) = rest.split_at_mut(len);
                        self.rest = tail;
                        if len > self.max_message_size {
                            return Some(Err(DecodeError::TooLarge {
                                size: len,
                                max: self.max_message_size,
                            }
                            .into()));
                        }
                        Some(decode_walked_msgpack(value))
                    }
                    Err(e) => {
                        // Without a boundary the rest of the frame cannot be split.
                        self.done = true;
                        Some(Err(e.into()))
                    }
                }
            }
        }
    }
}

/// Splits one incoming frame into its messages and decodes each with the rules of
/// [`decode_client`] (`max_message_size` applies per message).
///
/// JSON: split on `\n`, blank segments skipped; a bad line yields its error and the next
/// lines are still decoded. MessagePack: each value's boundary is found by walking its
/// structure without allocating; when no boundary can be found (truncated, declared length
/// beyond the input, too deep) that error is yielded and iteration stops.
pub fn decode_client_frame(
    encoding: Encoding,
    frame: &mut [u8],
    max_message_size: usize,
) -> ClientFrameMessages<'_> {
    ClientFrameMessages {
        encoding,
        rest: frame,
        max_message_size,
        done: false,
    }
}

/// Splits a server frame into its messages, as raw slices (client side).
pub fn split_server_frame(encoding: Encoding, frame: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    match encoding {
        Encoding::Json => Ok(frame
            .split(|&b| b == b'\n')
            .filter(|s| !wire::is_blank(s))
            .collect()),
        Encoding::MsgPack => {
            let mut out = Vec::new();
            let mut rest = frame;
            while !rest.is_empty() {
                let len = msgpack::value_len(rest)?;
                let (value, tail) = rest.split_at(len);
                out.push(value);
                rest = tail;
            }
            Ok(out)
        }
    }
}

/// What goes between two messages of one frame (§2): `\n` in JSON, nothing in
/// MessagePack, whose values delimit themselves.
pub fn message_separator(encoding: Encoding) -> &'static [u8] {
    match encoding {
        Encoding::Json => b"\n",
        Encoding::MsgPack => b"",
    }
}

/// [`FrameBuilder::push`] refused a message: the frame is full; send it and start another.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
#[error("frame full")]
pub struct FrameFull;

/// Joins already-encoded messages into one outgoing frame payload, bounded by
/// `max_frame_size`. The buffer is reused across frames ([`FrameBuilder::from_buffer`],
/// [`FrameBuilder::clear`]), so batching allocates nothing beyond its output buffer.
#[derive(Debug, Clone)]
pub struct FrameBuilder {
    encoding: Encoding,
    max_frame_size: usize,
    buf: Vec<u8>,
    count: usize,
}

impl FrameBuilder {
    /// An empty builder.
    pub fn new(encoding: Encoding, max_frame_size: usize) -> Self {
        Self::from_buffer(encoding, max_frame_size, Vec::new())
    }

    /// An empty builder writing into `buf` (cleared; its capacity is kept).
    pub fn from_buffer(encoding: Encoding, max_frame_size: usize, mut buf: Vec<u8>) -> Self {
        buf.clear();
        FrameBuilder {
            encoding,
            max_frame_size,
            buf,
            count: 0,
        }
    }

    /// The encoding.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The size bound.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// Appends one message (JSON: a `\n` before every message but the first, so the frame
    /// never ends with one).
    ///
    /// `Err(FrameFull)`, with nothing changed, if the frame already holds a message and this
    /// one would take it past `max_frame_size`. A single message larger than the maximum is
    /// accepted alone: the bound limits batching, not message size.
    pub fn push(&mut self, message: &[u8]) -> Result<(), FrameFull> {
        let sep: &[u8] = if self.count > 0 {
            message_separator(self.encoding)
        } else {
            b""
        };
        if self.count > 0 && self.buf.len() + sep.len() + message.len() > self.max_frame_size {
            return Err(FrameFull);
        }
        self.buf.extend_from_slice(sep);
        self.buf.extend_from_slice(message);
        self.count += 1;
        Ok(())
    }

    /// Messages in the frame.
    pub fn message_count(&self) -> usize {
        self.count
    }

    /// Frame length in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no message has been pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The frame payload.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Empties the frame, keeping the buffer's capacity.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
    }

    /// The frame payload, giving the buffer back.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_join_and_bound() {
        let mut fb = FrameBuilder::new(Encoding::Json, 20);
        assert!(fb.is_empty());
        fb.push(br#"{"op":"a"}"#).expect("first fits");
        assert_eq!(fb.push(br#"{"op":"b"}"#), Err(FrameFull)); // 10 + 1 + 10 > 20
        assert_eq!(fb.as_bytes(), br#"{"op":"a"}"#);
        fb.clear();
        fb.push(b"{}").expect("fits");
        fb.push(b"[]").expect("fits");
        assert_eq!(fb.as_bytes(), b"{}\n[]");
        assert_eq!(fb.message_count(), 2);
        assert_eq!(fb.len(), 5);
        let big = vec![b'1'; 100];
        let mut fb = FrameBuilder::from_buffer(Encoding::Json, 20, fb.into_inner());
        fb.push(&big).expect("a lone oversize message is accepted");
        assert_eq!(fb.push(b"1"), Err(FrameFull));
    }

    #[test]
    fn msgpack_join_has_no_separator() {
        let mut fb = FrameBuilder::new(Encoding::MsgPack, 3);
        fb.push(&[0x01]).expect("fits");
        fb.push(&[0x02, 0x03]).expect("exactly fits");
        assert_eq!(fb.push(&[0x04]), Err(FrameFull));
        assert_eq!(fb.as_bytes(), &[1, 2, 3]);
    }

    #[test]
    fn split_server_frames() {
        let frame = b"{\"op\":\"a\"}\n\n{\"op\":\"b\"}";
        let parts = split_server_frame(Encoding::Json, frame).expect("split");
        assert_eq!(parts, vec![&b"{\"op\":\"a\"}"[..], &b"{\"op\":\"b\"}"[..]]);
        let frame = [0x81, 0xa1, b'a', 0x01, 0x90, 0x02];
        let parts = split_server_frame(Encoding::MsgPack, &frame).expect("split");
        assert_eq!(parts, vec![&frame[..4], &frame[4..5], &frame[5..]]);
        assert_eq!(
            split_server_frame(Encoding::MsgPack, &[0x01, 0x92, 0x01, 0xcd]),
            Err(DecodeError::Truncated)
        );
    }
}
