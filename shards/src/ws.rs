//! WebSocket framing on top of tungstenite, without tungstenite owning the socket.
//!
//! tungstenite's `WebSocketContext` parses client frames (masking, fragmentation,
//! control frames, the close handshake, size limits) from bytes we hand it, and writes
//! its control replies (pong, close) into a byte sink. Data frames that the server
//! sends are formatted here once — server frames are unmasked, so the same bytes go
//! to every subscriber — and the connection writes them itself.

use std::io::{self, Read, Write};

use bytes::{BufMut, Bytes, BytesMut};
use coregate_protocol::Encoding;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

/// One unmasked, final data frame holding `message`: text for JSON, binary for MessagePack.
/// Copies `message`; a message not yet encoded is better written straight after room for
/// its header (see [`crate::WireMessage::from_publication`] and [`write_data_header`]).
pub fn data_frame(encoding: Encoding, message: &[u8]) -> Bytes {
    let header = data_header(encoding);
    let len = message.len() as u64;
    let mut out = BytesMut::with_capacity(header.len(len) + message.len());
    write_header(&header, len, &mut out);
    out.put_slice(message);
    out.freeze()
}

/// Appends a data frame header for a payload of `len` bytes; the payload follows.
pub fn put_data_header(encoding: Encoding, len: usize, out: &mut BytesMut) {
    write_header(&data_header(encoding), len as u64, out);
}

/// The size of a data frame header for a payload of `len` bytes: 2, 4 or (from 64 KiB) 10.
pub fn data_header_len(encoding: Encoding, len: usize) -> usize {
    data_header(encoding).len(len as u64)
}

/// Writes the data frame header for a payload of `len` bytes into `room`, which must be
/// exactly [`data_header_len`] bytes (room left in front of a payload written first).
/// Returns whether it was: a header that does not fit is not written.
pub fn write_data_header(encoding: Encoding, len: usize, room: &mut [u8]) -> bool {
    let header = data_header(encoding);
    if header.len(len as u64) != room.len() {
        return false;
    }
    let mut cursor = room;
    // `room` holds exactly the header, so formatting into it cannot fail.
    header.format(len as u64, &mut cursor).is_ok() && cursor.is_empty()
}

fn data_header(encoding: Encoding) -> FrameHeader {
    FrameHeader {
        opcode: OpCode::Data(if encoding.is_binary() {
            Data::Binary
        } else {
            Data::Text
        }),
        ..FrameHeader::default()
    }
}

fn write_header(header: &FrameHeader, len: u64, out: &mut BytesMut) {
    // Formatting into memory cannot fail.
    let _ = header.format(len, &mut (&mut *out).writer());
}

/// A frame as a client sends it: final and masked (RFC 6455 §5.3), with a fixed mask.
/// The server never sends one; tests, fuzzers and tools that play the client do.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=65_535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}

/// A parser for one client connection, configured so that an idle connection holds
/// only a small read buffer (tungstenite's default is 128 KiB per connection).
pub fn server_context(max_message_size: usize) -> WebSocketContext {
    let config = WebSocketConfig::default()
        // Grown on demand up to the message size; small while idle.
        .read_buffer_size(READ_BUFFER_SIZE)
        // Control replies go straight to the sink; nothing is buffered inside tungstenite.
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_CONTROL_WRITE)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size));
    WebSocketContext::new(Role::Server, Some(config))
}

/// tungstenite's initial read buffer, per connection with a message open: enough for the
/// pings and subscribes of a typical client; a larger frame makes it reserve the frame's
/// length.
pub const READ_BUFFER_SIZE: usize = 128;
/// Bound on what tungstenite may hold unwritten (control frames only).
const MAX_CONTROL_WRITE: usize = 64 * 1024;

/// The byte stream tungstenite sees: reads come from bytes already received (and
/// say `WouldBlock` when they run out), writes are collected for the connection's
/// priority lane.
pub struct BufferedIo<'a> {
    pub input: &'a [u8],
    pub output: &'a mut Vec<u8>,
}

impl Read for BufferedIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.input.read(buf)?;
        Ok(n)
    }
}

impl Write for BufferedIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_text_frame_has_two_byte_header() {
        let frame = data_frame(Encoding::Json, b"{\"op\":\"pong\"}");
        assert_eq!(frame[0], 0x81, "FIN + text");
        assert_eq!(frame[1] as usize, 13, "unmasked, length 13");
        assert_eq!(&frame[2..], b"{\"op\":\"pong\"}");
    }

    #[test]
    fn binary_frame_with_extended_length() {
        let payload = vec![0xc0u8; 300];
        let frame = data_frame(Encoding::MsgPack, &payload);
        assert_eq!(frame[0], 0x82, "FIN + binary");
        assert_eq!(frame[1], 126, "16-bit length follows");
        assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 300);
        assert_eq!(frame.len(), 4 + 300);
        assert_eq!(data_header_len(Encoding::MsgPack, 300), 4);
    }

    #[test]
    fn headers_written_into_room() {
        let cases: [(Encoding, usize, &[u8]); 6] = [
            (Encoding::Json, 125, &[0x81, 125]),
            (Encoding::MsgPack, 0, &[0x82, 0]),
            (Encoding::Json, 126, &[0x81, 126, 0x00, 0x7e]),
            (Encoding::MsgPack, 65_535, &[0x82, 126, 0xff, 0xff]),
            (
                Encoding::Json,
                65_536,
                &[0x81, 127, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00],
            ),
            (
                Encoding::MsgPack,
                (1 << 32) + 5,
                &[0x82, 127, 0, 0, 0, 0x01, 0, 0, 0, 0x05],
            ),
        ];
        for (encoding, len, header) in cases {
            assert_eq!(data_header_len(encoding, len), header.len(), "{len}");
            let mut room = [0xaa; 10];
            assert!(write_data_header(encoding, len, &mut room[..header.len()]));
            assert_eq!(&room[..header.len()], header, "{encoding} {len}");
        }
        assert!(
            !write_data_header(Encoding::Json, 126, &mut [0; 2]),
            "too small"
        );
        assert!(
            !write_data_header(Encoding::Json, 1, &mut [0; 4]),
            "too large"
        );
    }
}
