//! Wire encodings and `Sec-WebSocket-Protocol` negotiation (PROTOCOL.md §1).

use std::fmt;

/// Subprotocol name for JSON: every frame is a text frame of UTF-8 JSON.
pub const SUBPROTOCOL_JSON: &str = "coregate.v1.json";
/// Subprotocol name for MessagePack: every frame is a binary frame of MessagePack.
pub const SUBPROTOCOL_MSGPACK: &str = "coregate.v1.msgpack";

/// The encoding a connection speaks, fixed at upgrade time by [`negotiate`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Newline-delimited JSON in text frames.
    Json,
    /// Concatenated MessagePack values in binary frames.
    MsgPack,
}

impl Encoding {
    /// Every encoding, in [`Encoding::index`] order, so per-encoding arrays
    /// (`[Option<Bytes>; 2]`) can be filled by iterating this.
    pub const ALL: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

    /// The subprotocol name echoed in the 101 response.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => SUBPROTOCOL_JSON,
            Encoding::MsgPack => SUBPROTOCOL_MSGPACK,
        }
    }

    /// The encoding named by a single subprotocol token (exact, case-sensitive match).
    pub fn from_subprotocol(token: &str) -> Option<Encoding> {
        match token {
            SUBPROTOCOL_JSON => Some(Encoding::Json),
            SUBPROTOCOL_MSGPACK => Some(Encoding::MsgPack),
            _ => None,
        }
    }

    /// Dense index (`Json` = 0, `MsgPack` = 1) so callers can keep per-encoding data in
    /// arrays instead of maps on the hot path.
    pub fn index(self) -> usize {
        match self {
            Encoding::Json => 0,
            Encoding::MsgPack => 1,
        }
    }

    /// Whether frames of this encoding go out as binary WebSocket frames (MessagePack) rather
    /// than text frames (JSON).
    pub fn is_binary(self) -> bool {
        matches!(self, Encoding::MsgPack)
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encoding::Json => "json",
            Encoding::MsgPack => "msgpack",
        })
    }
}

/// The outcome of subprotocol negotiation.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The encoding the connection will use.
    pub encoding: Encoding,
    /// The value for the response's `Sec-WebSocket-Protocol` header; `None` when the client
    /// offered nothing (echoing a protocol the client did not offer makes browsers fail).
    pub echo: Option<&'static str>,
}

/// The client offered subprotocols, none of them ours: the upgrade is refused with HTTP 400.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum NegotiationError {
    /// `offered` is the client's list, joined with `, `.
    #[error(
        "unsupported subprotocol(s) offered: {offered}; supported: {SUBPROTOCOL_JSON}, {SUBPROTOCOL_MSGPACK}"
    )]
    Unsupported {
        /// What the client offered.
        offered: String,
    },
}

/// Picks the encoding from the raw `Sec-WebSocket-Protocol` header values.
///
/// Each value may be a comma-separated list and the header may appear several times; tokens
/// are trimmed and empty ones ignored. The first of *our* protocols in the client's order
/// wins (the client lists its preference first). Nothing offered → JSON with no echo; offered
/// but none ours → [`NegotiationError::Unsupported`].
pub fn negotiate<'a>(
    offered: impl IntoIterator<Item = &'a str>,
) -> Result<Negotiated, NegotiationError> {
    let mut seen: Vec<&'a str> = Vec::new();
    for value in offered {
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if let Some(encoding) = Encoding::from_subprotocol(token) {
                return Ok(Negotiated {
                    encoding,
                    echo: Some(encoding.subprotocol()),
                });
            }
            seen.push(token);
        }
    }
    if seen.is_empty() {
        Ok(Negotiated {
            encoding: Encoding::Json,
            echo: None,
        })
    } else {
        Err(NegotiationError::Unsupported {
            offered: seen.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_basics() {
        assert_eq!(Encoding::ALL, [Encoding::Json, Encoding::MsgPack]);
        for (i, e) in Encoding::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
            assert_eq!(Encoding::from_subprotocol(e.subprotocol()), Some(*e));
        }
        assert!(Encoding::MsgPack.is_binary());
        assert!(!Encoding::Json.is_binary());
        assert_eq!(Encoding::from_subprotocol("COREGATE.V1.JSON"), None);
    }

    fn ok(offered: &[&str]) -> Negotiated {
        negotiate(offered.iter().copied()).expect("negotiation should succeed")
    }

    #[test]
    fn nothing_offered_is_json_without_echo() {
        let n = ok(&[]);
        assert_eq!((n.encoding, n.echo), (Encoding::Json, None));
        let n = ok(&["", " , "]);
        assert_eq!((n.encoding, n.echo), (Encoding::Json, None));
    }

    #[test]
    fn single_offers() {
        let n = ok(&["coregate.v1.msgpack"]);
        assert_eq!(n.encoding, Encoding::MsgPack);
        assert_eq!(n.echo, Some(SUBPROTOCOL_MSGPACK));
        let n = ok(&["coregate.v1.json"]);
        assert_eq!(n.encoding, Encoding::Json);
        assert_eq!(n.echo, Some(SUBPROTOCOL_JSON));
    }

    #[test]
    fn client_order_wins_within_and_across_headers() {
        assert_eq!(
            ok(&["foo, coregate.v1.msgpack ,coregate.v1.json"]).encoding,
            Encoding::MsgPack
        );
        assert_eq!(
            ok(&["coregate.v1.json,coregate.v1.msgpack"]).encoding,
            Encoding::Json
        );
        assert_eq!(
            ok(&["chat, superchat", "coregate.v1.msgpack", "coregate.v1.json"]).encoding,
            Encoding::MsgPack
        );
    }

    #[test]
    fn none_of_ours_is_an_error_naming_the_supported_ones() {
        let err = negotiate(["chat, superchat", "coregate.v2.json"]).expect_err("must fail");
        assert_eq!(
            err,
            NegotiationError::Unsupported {
                offered: "chat, superchat, coregate.v2.json".into()
            }
        );
        let msg = err.to_string();
        assert!(msg.contains(SUBPROTOCOL_JSON) && msg.contains(SUBPROTOCOL_MSGPACK));
    }
}
