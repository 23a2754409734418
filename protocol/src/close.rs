//! WebSocket close codes and what a client should do about each (PROTOCOL.md §7).

/// Close codes the gateway sends. The 4xxx range is application-defined (RFC 6455 §7.4.2).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// Normal closure.
    Normal = 1000,
    /// The peer broke RFC 6455's framing rules (masking, control frame sizes, …).
    ProtocolError = 1002,
    /// A text frame that is not UTF-8 (RFC 6455 §8.1).
    InvalidPayload = 1007,
    /// A client message (or frame) exceeded `max_message_size`.
    MessageTooBig = 1009,
    /// The node is draining for a restart.
    ServiceRestart = 1012,
    /// The node is overloaded.
    TryAgainLater = 1013,
    /// Unexpected server-side failure.
    UnknownError = 4000,
    /// An op other than `identify`/`ping` arrived before `ready`.
    NotAuthenticated = 4003,
    /// `identify` carried a token that failed verification.
    AuthenticationFailed = 4004,
    /// A second `identify` on an authenticated connection.
    AlreadyAuthenticated = 4005,
    /// The token expired without a `refresh`.
    TokenExpired = 4006,
    /// The connection exceeded its message rate.
    RateLimited = 4008,
    /// No `identify` in time, or no heartbeat for 2 × the interval.
    SessionTimedOut = 4009,
    /// The outbound queue stayed over its byte budget.
    SlowConsumer = 4010,
    /// The user has too many connections.
    TooManyConnections = 4011,
}

/// Reconnect advice attached to a close code (the right-hand column of PROTOCOL.md §7).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reconnect {
    /// Do not reconnect.
    No,
    /// Reconnect (with the usual jittered backoff).
    Yes,
    /// Reconnect after fixing what was sent (e.g. message size).
    AfterFix,
    /// Reconnect after the `retry_after_ms` of the preceding `reconnect`/`error` message.
    AfterRetryAfter,
    /// Reconnect with exponential backoff: the node is overloaded.
    WithBackoff,
    /// Reconnect, then `identify` before anything else.
    AfterIdentify,
    /// Reconnect with a fresh token.
    WithNewToken,
    /// Reconnect and resubscribe with `since` to recover missed events.
    ResubscribeWithSince,
    /// Not until one of the user's other connections closes.
    NotUntilOneCloses,
}

impl Reconnect {
    /// Whether the client should eventually reconnect at all.
    pub fn should_reconnect(self) -> bool {
        !matches!(self, Reconnect::No)
    }
}

impl CloseCode {
    /// Every close code, for exhaustive tests and docs.
    pub const ALL: [CloseCode; 15] = [
        CloseCode::Normal,
        CloseCode::ProtocolError,
        CloseCode::InvalidPayload,
        CloseCode::MessageTooBig,
        CloseCode::ServiceRestart,
        CloseCode::TryAgainLater,
        CloseCode::UnknownError,
        CloseCode::NotAuthenticated,
        CloseCode::AuthenticationFailed,
        CloseCode::AlreadyAuthenticated,
        CloseCode::TokenExpired,
        CloseCode::RateLimited,
        CloseCode::SessionTimedOut,
        CloseCode::SlowConsumer,
        CloseCode::TooManyConnections,
    ];

    /// The numeric code for the close frame.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The close code with this number, if it is one of ours.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Short reason text for the close frame (well under the 123-byte limit of RFC 6455).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal closure",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::InvalidPayload => "invalid payload",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::ServiceRestart => "service restart",
            CloseCode::TryAgainLater => "try again later",
            CloseCode::UnknownError => "unknown error",
            CloseCode::NotAuthenticated => "not authenticated",
            CloseCode::AuthenticationFailed => "authentication failed",
            CloseCode::AlreadyAuthenticated => "already authenticated",
            CloseCode::TokenExpired => "token expired",
            CloseCode::RateLimited => "rate limited",
            CloseCode::SessionTimedOut => "session timed out",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::TooManyConnections => "too many connections",
        }
    }

    /// What the client should do after this close.
    pub fn reconnect(self) -> Reconnect {
        match self {
            CloseCode::Normal => Reconnect::No,
            CloseCode::ProtocolError => Reconnect::AfterFix,
            CloseCode::InvalidPayload => Reconnect::AfterFix,
            CloseCode::MessageTooBig => Reconnect::AfterFix,
            CloseCode::ServiceRestart => Reconnect::AfterRetryAfter,
            CloseCode::TryAgainLater => Reconnect::WithBackoff,
            CloseCode::UnknownError => Reconnect::Yes,
            CloseCode::NotAuthenticated => Reconnect::AfterIdentify,
            CloseCode::AuthenticationFailed => Reconnect::No,
            CloseCode::AlreadyAuthenticated => Reconnect::Yes,
            CloseCode::TokenExpired => Reconnect::WithNewToken,
            CloseCode::RateLimited => Reconnect::AfterRetryAfter,
            CloseCode::SessionTimedOut => Reconnect::Yes,
            CloseCode::SlowConsumer => Reconnect::ResubscribeWithSince,
            CloseCode::TooManyConnections => Reconnect::NotUntilOneCloses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_match_the_table() {
        let table: [(u16, Reconnect); 15] = [
            (1000, Reconnect::No),
            (1002, Reconnect::AfterFix),
            (1007, Reconnect::AfterFix),
            (1009, Reconnect::AfterFix),
            (1012, Reconnect::AfterRetryAfter),
            (1013, Reconnect::WithBackoff),
            (4000, Reconnect::Yes),
            (4003, Reconnect::AfterIdentify),
            (4004, Reconnect::No),
            (4005, Reconnect::Yes),
            (4006, Reconnect::WithNewToken),
            (4008, Reconnect::AfterRetryAfter),
            (4009, Reconnect::Yes),
            (4010, Reconnect::ResubscribeWithSince),
            (4011, Reconnect::NotUntilOneCloses),
        ];
        for (code, reconnect) in table {
            let c = CloseCode::from_code(code).expect("known code");
            assert_eq!(c.code(), code);
            assert_eq!(c.reconnect(), reconnect, "{code}");
            assert!(!c.reason().is_empty() && c.reason().len() <= 123);
        }
        assert_eq!(CloseCode::from_code(1001), None);
        assert_eq!(CloseCode::from_code(4007), None);
        assert!(!CloseCode::AuthenticationFailed
            .reconnect()
            .should_reconnect());
        assert!(CloseCode::SlowConsumer.reconnect().should_reconnect());
    }
}
