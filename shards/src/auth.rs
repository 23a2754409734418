//! The shard's view of authentication: a verifier checks a token and yields the
//! identity a connection runs as. The JWT implementation lives in the binary
//! (`src/auth.rs`); shards only need this trait, shared read-only by every core.

use coregate_protocol::{Topic, TopicPatterns};

/// Who a connection is, from a verified token.
#[derive(Clone, Debug)]
pub struct Identity {
    pub user_id: String,
    pub name: Option<String>,
    /// Unix seconds after which the connection is closed 4006 unless refreshed.
    pub expires_at: u64,
    /// The topic patterns the `topics` claim allows.
    pub topics: TopicPatterns,
    /// The topics of the `presence` claim, where the user's presence transitions are
    /// announced besides `presence:<sub>`. Boxed behind a thin pointer and `None` when
    /// the claim is absent: most tokens have none, and the session keeps its identity
    /// inline within a 640-byte size class.
    #[allow(clippy::box_collection)]
    pub presence: Option<Box<Vec<Topic>>>,
}

impl Identity {
    /// Where this user's presence transitions are announced: `presence:<sub>`, then
    /// the `presence` claim's topics (without repeats).
    pub fn presence_topics(&self) -> Vec<Topic> {
        let mut topics: Vec<Topic> = Topic::presence(&self.user_id).into_iter().collect();
        for topic in self.presence.iter().flat_map(|p| p.iter()) {
            if !topics.contains(topic) {
                topics.push(topic.clone());
            }
        }
        topics
    }
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
