//! The session's WebSocket parser, held only while a frame or a message is open.
//!
//! tungstenite's `WebSocketContext` (its state, limits and frame codec, a few hundred
//! bytes, plus a 128-byte read buffer) is needed only while input is being parsed:
//! between messages it holds nothing but its limits, which the session knows anyway.
//! Most connections are idle most of the time, so the parser is boxed, made when input
//! comes, and dropped again ([`Codec::rest`]) whenever the input seen so far ends on a
//! frame boundary outside a fragmented message. [`FrameBoundary`] tells that from the
//! frame headers alone; tungstenite still does all the parsing and every check.

use std::io::Cursor;

use tungstenite::protocol::frame::coding::OpCode;
use tungstenite::protocol::frame::{CloseFrame, FrameHeader};
use tungstenite::protocol::WebSocketContext;
use tungstenite::Message;

use crate::ws::{self, BufferedIo};

/// The largest client frame header: 2 bytes, a 64-bit length, a 4-byte mask.
const MAX_HEADER: usize = 14;

/// Where the input seen so far ends, in terms of frames: mid-header, mid-payload, or
/// on a boundary, and whether a fragmented message is open (a data frame without FIN
/// and its continuations up to the final one). All zero on a boundary between
/// messages, which is when tungstenite holds no state worth keeping.
#[derive(Debug, Default)]
struct FrameBoundary {
    /// The current frame's header bytes seen so far, while it is incomplete.
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// The current frame's payload bytes still to come.
    payload_left: u64,
    in_message: bool,
    /// A header tungstenite's own parser refused: it refuses the frame too, and the
    /// session keeps the parser from then on; the frames are no longer followed.
    unreadable: bool,
}

impl FrameBoundary {
    /// Follows `input`, the bytes after those seen before. Headers are read with
    /// tungstenite's `FrameHeader::parse`, as its parser reads them.
    fn see(&mut self, mut input: &[u8]) {
        while !input.is_empty() && !self.unreadable {
            if self.payload_left > 0 {
                let skip = usize::try_from(self.payload_left)
                    .map_or(input.len(), |left| left.min(input.len()));
                self.payload_left -= skip as u64;
                input = &input[skip..];
                continue;
            }
            let have = usize::from(self.header_len);
            let take = (MAX_HEADER - have).min(input.len());
            self.header[have..have + take].copy_from_slice(&input[..take]);
            let mut cursor = Cursor::new(&self.header[..have + take]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, payload_len))) => {
                    // What was copied past the header is payload: taken from `input` below.
                    input = &input[cursor.position() as usize - have..];
                    self.header_len = 0;
                    self.payload_left = payload_len;
                    // Data frames (text, binary, continuation) end a message with FIN;
                    // control frames come between a message's fragments.
                    if let OpCode::Data(_) = header.opcode {
                        self.in_message = !header.is_final;
                    }
                }
                Ok(None) => {
                    self.header_len += take as u8;
                    input = &input[take..];
                }
                Err(_) => self.unreadable = true,
            }
        }
    }

    fn at_rest(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0 && !self.in_message && !self.unreadable
    }
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
    fn a_header_tungstenite_refuses_is_never_at_rest() {
        let reserved_opcode = client_frame(3, b"");
        assert!(!seen(&[&reserved_opcode]).at_rest());
        let ping = client_frame(9, b"");
        assert!(
            !seen(&[&reserved_opcode, &ping]).at_rest(),
            "whatever follows"
        );
    }

    #[test]
    fn a_fragmented_message_is_open_until_its_final_continuation() {
        const FIN: u8 = 0x80;
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
