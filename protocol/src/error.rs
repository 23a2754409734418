//! Decode errors for peer input. Every variant is something a peer can cause; none of them
//! is fatal to the connection by itself (the gateway answers `error` and counts it).

use crate::message::ErrorCode;

/// Why a message could not be decoded.
#[derive(thiserror::Error, Debug, PartialEq, Eq, Clone)]
pub enum DecodeError {
    /// Larger than the configured maximum; rejected before parsing.
    #[error("message is {size} bytes, the maximum is {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The maximum.
        max: usize,
    },
    /// Nested deeper than the maximum.
    #[error("message is nested deeper than {max} levels")]
    TooDeep {
        /// The maximum depth.
        max: usize,
    },
    /// A string (or a JSON document) that is not UTF-8.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// MessagePack that ends in the middle of a value.
    #[error("truncated MessagePack value")]
    Truncated,
    /// A MessagePack str/bin/ext length or array/map count larger than the bytes left; caught
    /// before anything of that size is allocated.
    #[error("declared length {declared} exceeds the {available} bytes available")]
    DeclaredLengthExceedsInput {
        /// The declared byte length (str/bin/ext) or element count (array/map).
        declared: usize,
        /// Bytes left in the input.
        available: usize,
    },
    /// A field of the wrong type.
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// The field (`message` for the top level).
        field: &'static str,
        /// What it should have been.
        expected: &'static str,
    },
    /// A field of the right type with a value outside its domain (an unknown status).
    #[error("field `{field}` must be {expected}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// The allowed values.
        expected: &'static str,
    },
    /// A required field is absent.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// The `op` is not known (truncated to 64 bytes so it can be echoed safely).
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    /// A syntax error.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes after the end of a message that should stand alone.
    #[error("{count} trailing bytes after the message")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// Nothing (or only whitespace) to decode.
    #[error("empty message")]
    Empty,
}

impl DecodeError {
    /// The `code` of the `error` reply this deserves.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            DecodeError::UnknownOp(_) => ErrorCode::UnknownOp,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// A [`DecodeError`] with the message's `ref` when it could still be read, so the gateway
/// can correlate its `error` reply (best effort: `None` when the envelope was unreadable).
#[derive(thiserror::Error, Debug, PartialEq, Eq, Clone)]
#[error("{error}")]
pub struct DecodeErrorWithRef {
    /// What went wrong.
    pub error: DecodeError,
    /// The message's `ref`, if readable.
    pub r#ref: Option<u64>,
}

impl From<DecodeError> for DecodeErrorWithRef {
    fn from(error: DecodeError) -> Self {
        DecodeErrorWithRef { error, r#ref: None }
    }
}

/// Truncates peer text that goes back into an error message, on a char boundary.
pub(crate) fn truncate_for_echo(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
