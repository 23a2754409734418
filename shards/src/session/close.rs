//! Why a connection is closed: every close the server makes is one [`CloseReason`], and
//! this file is the one place that decides, for each reason, the close code, whether a
//! `reconnect` message precedes the close frame, the metric it counts under and the log
//! line it leaves (centrifuge's `disconnect.go` is the model).

use std::sync::atomic::AtomicU64;

use coregate_protocol::CloseCode;

use crate::stats::ShardStats;

/// How long a client told to `reconnect` should wait first.
pub const RECONNECT_AFTER_MS: u64 = 1000;

/// Every reason the server closes a connection for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// No `identify` within `identify_timeout`.
    IdentifyTimeout,
    /// No message for twice the heartbeat interval.
    HeartbeatTimeout,
    /// An op other than `identify`/`ping` before `ready`.
    NotAuthenticated,
    /// `identify` with a token that did not verify.
    AuthenticationFailed,
    /// A second `identify`.
    AlreadyAuthenticated,
    /// The token expired without a `refresh`.
    TokenExpired,
    /// `identify` for a user that holds its maximum of connections.
    TooManyConnections,
    /// Refused events (or pings) in a row past `flood_close_after`.
    Flood,
    /// More than `PRE_READY_INPUT_BYTES` sent before `ready`.
    InputBeforeReady,
    /// A message whose frames took more than `MAX_WIRE_BYTES_PER_MESSAGE_FACTOR` times
    /// `max_message_size` on the wire (a stream of empty continuation frames, which
    /// never complete a message to charge).
    PaddedMessage,
    /// Replies queued past the control budget: the client does not read them.
    ControlOverflow,
    /// The outbound queue stayed over its budget for `slow_client_grace`.
    SlowConsumer,
    /// The outbound queue reached twice its budget: closed at once.
    SlowConsumerOverflow,
    /// A client message over `max_message_size`.
    MessageTooBig,
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// Any other breach of RFC 6455's framing.
    ProtocolViolation,
    /// The node is draining for a restart.
    Drain,
    /// The backend's connect call could not be made (down, slow, unusable answer).
    BackendUnavailable,
}

impl CloseReason {
    /// The close code sent in the close frame.
    pub fn code(self) -> CloseCode {
        match self {
            CloseReason::IdentifyTimeout | CloseReason::HeartbeatTimeout => {
                CloseCode::SessionTimedOut
            }
            CloseReason::NotAuthenticated => CloseCode::NotAuthenticated,
            CloseReason::AuthenticationFailed => CloseCode::AuthenticationFailed,
            CloseReason::AlreadyAuthenticated => CloseCode::AlreadyAuthenticated,
            CloseReason::TokenExpired => CloseCode::TokenExpired,
            CloseReason::TooManyConnections => CloseCode::TooManyConnections,
            CloseReason::Flood | CloseReason::InputBeforeReady | CloseReason::ControlOverflow => {
                CloseCode::RateLimited
            }
            CloseReason::SlowConsumer | CloseReason::SlowConsumerOverflow => {
                CloseCode::SlowConsumer
            }
            CloseReason::MessageTooBig | CloseReason::PaddedMessage => CloseCode::MessageTooBig,
            CloseReason::InvalidUtf8 => CloseCode::InvalidPayload,
            CloseReason::ProtocolViolation => CloseCode::ProtocolError,
            CloseReason::Drain => CloseCode::ServiceRestart,
            CloseReason::BackendUnavailable => CloseCode::UnknownError,
        }
    }

    /// Whether a `reconnect` message goes before the close frame: only for closes made
    /// for the server's own reasons (PROTOCOL.md §5); a client-caused close says why in
    /// its code alone.
    pub fn sends_reconnect(self) -> bool {
        matches!(
            self,
            CloseReason::SlowConsumer
                | CloseReason::SlowConsumerOverflow
                | CloseReason::Drain
                | CloseReason::BackendUnavailable
        )
    }

    /// The per-reason close counter (exported with a `code` label).
    pub fn counter(self, stats: &ShardStats) -> &AtomicU64 {
        match self.code() {
            CloseCode::MessageTooBig => &stats.closes_message_too_big,
            CloseCode::ServiceRestart => &stats.closes_service_restart,
            CloseCode::NotAuthenticated => &stats.closes_not_authenticated,
            CloseCode::AuthenticationFailed => &stats.closes_authentication_failed,
            CloseCode::AlreadyAuthenticated => &stats.closes_already_authenticated,
            CloseCode::TokenExpired => &stats.closes_token_expired,
            CloseCode::RateLimited => &stats.closes_rate_limited,
            CloseCode::SessionTimedOut => &stats.closes_session_timed_out,
            CloseCode::SlowConsumer => &stats.closes_slow_consumer,
            CloseCode::TooManyConnections => &stats.closes_too_many_connections,
            CloseCode::ProtocolError | CloseCode::InvalidPayload => &stats.closes_protocol_error,
            CloseCode::UnknownError => &stats.closes_unknown_error,
            CloseCode::Normal | CloseCode::TryAgainLater => &stats.closes_other,
        }
    }

    /// Counts the close and leaves its log line (debug: one line per closed
    /// connection would flood an operator's log during a storm).
    pub fn record(self, stats: &ShardStats, session_id: &uuid::Uuid) {
        ShardStats::add(&stats.server_closes, 1);
        ShardStats::add(self.counter(stats), 1);
        tracing::debug!(
            session = %session_id,
            code = self.code().code(),
            reason = ?self,
            "closing connection"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_code_and_a_counter_of_its_own_code() {
        let stats = ShardStats::default();
        let reasons = [
            CloseReason::IdentifyTimeout,
            CloseReason::HeartbeatTimeout,
            CloseReason::NotAuthenticated,
            CloseReason::AuthenticationFailed,
            CloseReason::AlreadyAuthenticated,
            CloseReason::TokenExpired,
            CloseReason::TooManyConnections,
            CloseReason::Flood,
            CloseReason::InputBeforeReady,
            CloseReason::PaddedMessage,
            CloseReason::ControlOverflow,
            CloseReason::SlowConsumer,
            CloseReason::SlowConsumerOverflow,
            CloseReason::MessageTooBig,
            CloseReason::InvalidUtf8,
            CloseReason::ProtocolViolation,
            CloseReason::Drain,
            CloseReason::BackendUnavailable,
        ];
        for reason in reasons {
            reason.record(&stats, &uuid::Uuid::nil());
            assert!(!std::ptr::eq(reason.counter(&stats), &stats.closes_other));
        }
        assert_eq!(stats.snapshot().server_closes, reasons.len() as u64);
        assert_eq!(stats.snapshot().closes_session_timed_out, 2);
        assert_eq!(stats.snapshot().closes_slow_consumer, 2);
        assert_eq!(CloseReason::InvalidUtf8.code().code(), 1007);
        assert_eq!(CloseReason::ProtocolViolation.code().code(), 1002);
        assert!(CloseReason::Drain.sends_reconnect());
        assert!(!CloseReason::Flood.sends_reconnect());
    }
}
