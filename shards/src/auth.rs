//! The shard's view of authentication: a verifier checks a token and yields the
//! identity a connection runs as. The JWT implementation lives in the binary
//! (`src/auth.rs`); shards only need this trait, shared read-only by every core.

use coregate_protocol::TopicPatterns;

/// Who a connection is, from a verified token.
#[derive(Clone, Debug)]
pub struct Identity {
    pub user_id: String,
    pub name: Option<String>,
    /// Unix seconds after which the connection is closed 4006 unless refreshed.
    pub expires_at: u64,
    /// The topic patterns the `topics` claim allows.
    pub topics: TopicPatterns,
}

/// Why a token was refused; the kind is counted, the token itself is never logged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no token was given")]
    Missing,
    #[error("the token is expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token's algorithm is not allowed")]
    AlgorithmNotAllowed,
    #[error("the token's claims are invalid: {0}")]
    BadClaims(String),
    #[error("the token is malformed")]
    Malformed,
}

/// Checks tokens; implemented by the binary with jsonwebtoken.
pub trait TokenVerifier: Send + Sync + 'static {
    fn verify(&self, token: &str) -> Result<Identity, AuthError>;
}
