//! The session's WebSocket parser, held only while a frame or a message is open.
//!
//! tungstenite's `WebSocketContext` (its state, limits and frame codec, a few hundred
//! bytes, plus a 128-byte read buffer) is needed only while input is being parsed:
//! between messages it holds nothing but its limits, which the session knows anyway.
//! Most connections are idle most of the time, so the parser is boxed, made when input
//! comes, and dropped again ([`Codec::rest`]) whenever the input seen so far ends on a
//! frame boundary outside a fragmented message. [`FrameBoundary`] tells that from the
//! frame headers alone; tungstenite still does all the parsing and every check.

use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::WebSocketContext;
use tungstenite::Message;

use crate::ws::{self, BufferedIo};

/// The largest client frame header: 2 bytes, a 64-bit length, a 4-byte mask.
const MAX_HEADER: usize = 14;
const FIN: u8 = 0x80;
const OPCODE: u8 = 0x0f;
const MASKED: u8 = 0x80;
const LENGTH: u8 = 0x7f;

/// Where the input seen so far ends, in terms of frames: mid-header, mid-payload, or
/// on a boundary, and whether a fragmented message is open (a data frame without FIN
/// and its continuations up to the final one). All zero on a boundary between
/// messages, which is when tungstenite holds no state worth keeping.
#[derive(Debug, Default)]
struct FrameBoundary {
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// The current frame's payload bytes still to come.
    payload_left: u64,
    in_message: bool,
}

impl FrameBoundary {
    /// Follows `input`, the bytes after those seen before.
    fn see(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            if self.payload_left > 0 {
                let skip = usize::try_from(self.payload_left)
                    .map_or(input.len(), |left| left.min(input.len()));
                self.payload_left -= skip as u64;
                input = &input[skip..];
                continue;
            }
            let have = usize::from(self.header_len);
            let want = if have < 2 {
                2
            } else {
                header_size(self.header[1])
            };
            let take = (want - have).min(input.len());
            self.header[have..have + take].copy_from_slice(&input[..take]);
            self.header_len += take as u8;
            input = &input[take..];
            let have = usize::from(self.header_len);
            if have >= 2 && have == header_size(self.header[1]) {
                self.end_header();
            }
        }
    }

    /// The header is complete: what follows is its payload.
    fn end_header(&mut self) {
        let header = &self.header[..usize::from(self.header_len)];
        let (first, second) = (header[0], header[1]);
        self.payload_left = match second & LENGTH {
            126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
            127 => u64::from_be_bytes(header[2..10].try_into().unwrap_or_default()),
            len => u64::from(len),
        };
        // Text, binary and continuation frames end a message with FIN; control frames
        // come between a message's fragments and change nothing.
        if first & OPCODE <= 2 {
            self.in_message = first & FIN == 0;
        }
        self.header_len = 0;
    }

    fn at_rest(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0 && !self.in_message
    }
}

/// A frame header's size from its second byte: the length's extension and the mask.
fn header_size(second: u8) -> usize {
    let extension = match second & LENGTH {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + extension + if second & MASKED != 0 { 4 } else { 0 }
}

/// tungstenite's parser with the frame boundary it has reached.
struct Parsing {
    context: WebSocketContext,
    boundary: FrameBoundary,
}

/// The session's parser; see the module docs.
#[derive(Default)]
pub(super) struct Codec {
    parsing: Option<Box<Parsing>>,
}

impl Codec {
    /// The parser, made with `max_message_size` if there is none.
    fn parsing(&mut self, max_message_size: usize) -> &mut Parsing {
        self.parsing.get_or_insert_with(|| {
            Box::new(Parsing {
                context: ws::server_context(max_message_size),
                boundary: FrameBoundary::default(),
            })
        })
    }

    /// Shows the parser the bytes about to be read, so that it knows where they end.
    pub(super) fn see_input(&mut self, input: &[u8], max_message_size: usize) {
        self.parsing(max_message_size).boundary.see(input);
    }

    /// The next message from `io`'s input, as tungstenite's `read` gives it.
    pub(super) fn read(
        &mut self,
        io: &mut BufferedIo,
        max_message_size: usize,
    ) -> tungstenite::Result<Message> {
        self.parsing(max_message_size).context.read(io)
    }

    /// Writes the replies tungstenite owes (pong, the close echo) to `io`.
    pub(super) fn flush(&mut self, io: &mut BufferedIo) {
        if let Some(parsing) = &mut self.parsing {
            let _ = parsing.context.flush(io);
        }
    }

    /// Writes a close frame to `io`; the parser stays, to see the peer's answer.
    pub(super) fn close(
        &mut self,
        io: &mut BufferedIo,
        frame: CloseFrame,
        max_message_size: usize,
    ) {
        let context = &mut self.parsing(max_message_size).context;
        let _ = context.close(io, Some(frame));
        let _ = context.flush(io);
    }

    /// Applies a new message size limit; a parser made later gets it when made.
    pub(super) fn set_max_message_size(&mut self, max: usize) {
        if let Some(parsing) = &mut self.parsing {
            parsing.context.set_config(|c| {
                c.max_message_size = Some(max);
                c.max_frame_size = Some(max);
            });
        }
    }

    /// Drops the parser if all the input it was shown ended a message: it holds
    /// nothing then that a new one would not. The caller keeps it while closing (its
    /// close handshake is state) and after a parse error.
    pub(super) fn rest(&mut self) {
        if self.parsing.as_ref().is_some_and(|p| p.boundary.at_rest()) {
            self.parsing = None;
        }
    }

    /// Whether a parser is held; for tests.
    #[cfg(test)]
    pub(super) fn is_held(&self) -> bool {
        self.parsing.is_some()
    }
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("held", &self.parsing.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ws::client_frame;

    fn seen(chunks: &[&[u8]]) -> FrameBoundary {
        let mut boundary = FrameBoundary::default();
        for chunk in chunks {
            boundary.see(chunk);
        }
        boundary
    }

    #[test]
    fn a_whole_frame_ends_at_rest() {
        assert!(seen(&[&client_frame(1, b"{\"op\":\"ping\"}")]).at_rest());
        assert!(seen(&[&client_frame(9, b"")]).at_rest(), "an empty ping");
        assert!(
            seen(&[&client_frame(2, &[7; 300])]).at_rest(),
            "a 16-bit length"
        );
        assert!(
            seen(&[&client_frame(2, &[7; 70_000])]).at_rest(),
            "a 64-bit length"
        );
        assert!(seen(&[]).at_rest());
    }

    #[test]
    fn a_frame_cut_anywhere_is_not_at_rest_until_its_last_byte() {
        for payload_len in [0, 5, 125, 126, 300, 70_000] {
            let frame = client_frame(1, &vec![b'x'; payload_len]);
            for cut in 1..frame.len() {
                let (head, tail) = frame.split_at(cut);
                assert!(
                    !seen(&[head]).at_rest(),
                    "{payload_len} bytes, cut at {cut}"
                );
                assert!(
                    seen(&[head, tail]).at_rest(),
                    "{payload_len} bytes, cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn byte_by_byte_input_follows_the_frames() {
        let mut input = client_frame(1, b"hello");
        input.extend(client_frame(10, b""));
        input.extend(client_frame(2, &[0; 200]));
        let mut boundary = FrameBoundary::default();
        for byte in &input {
            boundary.see(std::slice::from_ref(byte));
        }
        assert!(boundary.at_rest());
    }

    #[test]
    fn a_fragmented_message_is_open_until_its_final_continuation() {
        let mut first = client_frame(1, b"hel");
        first[0] &= !FIN;
        let mut middle = client_frame(0, b"l");
        middle[0] &= !FIN;
        let ping = client_frame(9, b"");
        let last = client_frame(0, b"o");
        assert!(!seen(&[&first]).at_rest());
        assert!(
            !seen(&[&first, &middle, &ping]).at_rest(),
            "a ping between fragments"
        );
        assert!(seen(&[&first, &middle, &ping, &last]).at_rest());
    }

    #[test]
    fn the_parser_is_dropped_between_messages_and_kept_inside_one() {
        let mut codec = Codec::default();
        let frame = client_frame(1, b"{\"op\":\"ping\"}");
        let (head, tail) = frame.split_at(5);
        let mut out = Vec::new();
        let mut read = |codec: &mut Codec, input: &[u8]| {
            codec.see_input(input, 1024);
            let mut io = BufferedIo {
                input,
                output: &mut out,
            };
            let mut texts = Vec::new();
            while let Ok(message) = codec.read(&mut io, 1024) {
                texts.push(message.into_text().unwrap().to_string());
            }
            codec.rest();
            texts
        };
        assert!(read(&mut codec, head).is_empty());
        assert!(codec.is_held(), "half a frame keeps the parser");
        assert_eq!(read(&mut codec, tail), ["{\"op\":\"ping\"}"]);
        assert!(!codec.is_held(), "a whole message lets it go");
        assert_eq!(
            read(&mut codec, &frame),
            ["{\"op\":\"ping\"}"],
            "a new one parses"
        );
    }
}
