//! Just enough STUN (RFC 8489) to tell which participant a datagram is for: the SFU is
//! ICE-lite on one UDP socket, and a client's connectivity checks name the server side's
//! ICE ufrag in their USERNAME (`<server ufrag>:<client ufrag>`). Everything else about
//! STUN (integrity, the answer) is str0m's.

/// The STUN magic cookie (RFC 8489 §5), bytes 4..8 of every STUN message.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// The USERNAME attribute's type.
const USERNAME: u16 = 0x0006;
const HEADER_LEN: usize = 20;

/// Whether `datagram` is a STUN message: RFC 7983's demultiplexing (first byte 0..=3)
/// and the magic cookie.
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN && datagram[0] < 4 && datagram[4..8] == MAGIC_COOKIE
}

/// The local (server-side) ufrag a STUN request's USERNAME names, if it is a
/// well-formed STUN message with one.
pub fn server_ufrag(datagram: &[u8]) -> Option<&str> {
    if !is_stun(datagram) {
        return None;
    }
    let declared = u16::from_be_bytes([datagram[2], datagram[3]]) as usize;
    let attributes = datagram.get(HEADER_LEN..HEADER_LEN + declared)?;
    let mut rest = attributes;
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let value = rest.get(4..4 + len)?;
        if kind == USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next().filter(|u| !u.is_empty());
        }
        // Values are padded to a multiple of 4 bytes.
        let padded = (4 + len).div_ceil(4) * 4;
        rest = rest.get(padded..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binding request with `attributes` (already padded).
    fn stun(attributes: &[u8]) -> Vec<u8> {
        let mut message = vec![0x00, 0x01];
        message.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
        message.extend_from_slice(&MAGIC_COOKIE);
        message.extend_from_slice(&[7; 12]); // transaction id
        message.extend_from_slice(attributes);
        message
    }

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out
    }

    #[test]
    fn the_server_ufrag_is_read_from_the_username_whatever_comes_before_it() {
        let mut attributes = attribute(0x0024, &[0, 0, 0, 1]); // PRIORITY
        attributes.extend(attribute(0x8029, &[1; 8])); // ICE-CONTROLLED
        attributes.extend(attribute(USERNAME, b"srvUfrag:cli"));
        attributes.extend(attribute(0x0008, &[0; 20])); // MESSAGE-INTEGRITY
        let request = stun(&attributes);
        assert!(is_stun(&request));
        assert_eq!(server_ufrag(&request), Some("srvUfrag"));
        // A 5-byte username is padded to 8.
        let request = stun(&attribute(USERNAME, b"abc:d"));
        assert_eq!(server_ufrag(&request), Some("abc"));
    }

    #[test]
    fn anything_else_names_no_one_and_never_panics() {
        assert_eq!(server_ufrag(&stun(&attribute(0x0024, &[0; 4]))), None);
        assert_eq!(server_ufrag(&stun(&attribute(USERNAME, b":x"))), None);
        // DTLS (first byte 20..=63) and RTP (128..=191) are not STUN.
        let mut dtls = stun(&attribute(USERNAME, b"a:b"));
        dtls[0] = 22;
        assert!(!is_stun(&dtls));
        // Truncated and lying lengths.
        let request = stun(&attribute(USERNAME, b"abc:d"));
        for cut in 0..request.len() {
            let _ = server_ufrag(&request[..cut]);
        }
        let mut lying = request.clone();
        lying[22] = 0xff; // the attribute claims 65,280+ bytes
        assert_eq!(server_ufrag(&lying), None);
        let mut lying = request;
        lying[3] = 0xff; // the message claims more attributes than it has
        assert_eq!(server_ufrag(&lying), None);
    }
}
