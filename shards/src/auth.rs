//! The shard's view of authentication: a verifier checks a token and yields the
//! identity a connection runs as. The JWT implementation lives in the binary
//! (`src/auth.rs`); shards only need this trait, shared read-only by every core.

use coregate_protocol::{Topic, TopicPatterns};

/// Who a connection is, from a verified token.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Boxed strings (16 bytes each, not 24): the session keeps its identity inline
    /// within a 224-byte size class.
    pub user_id: Box<str>,
    pub name: Option<Box<str>>,
    /// Unix seconds after which the connection is closed 4006 unless refreshed.
    pub expires_at: u64,
    /// The topic patterns the `topics` claim allows.
    pub topics: TopicPatterns,
    /// What few identities carry, behind a thin pointer and `None` when there is none
    /// of it: most connections have none, and the session keeps its identity inline
    /// within a 224-byte size class.
    pub extras: Option<Box<IdentityExtras>>,
}

/// The rarer parts of an [`Identity`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IdentityExtras {
    /// The topics of the `presence` claim, where the user's presence transitions are
    /// announced besides `presence:<sub>`.
    pub presence: Vec<Topic>,
    /// The backend's `meta` from the connect call: kept for the connection's life and
    /// handed back to the backend with each of its `rpc` calls (PROTOCOL.md §8),
    /// never sent to the client.
    pub meta: Option<serde_json::Value>,
}

impl IdentityExtras {
    /// `None` when there is nothing to keep.
    pub fn boxed(presence: Vec<Topic>, meta: Option<serde_json::Value>) -> Option<Box<Self>> {
        let meta = meta.filter(|m| !m.is_null());
        (!presence.is_empty() || meta.is_some())
            .then(|| Box::new(IdentityExtras { presence, meta }))
    }
}

impl Identity {
    /// The `presence` claim's topics.
    pub fn presence_claim(&self) -> &[Topic] {
        self.extras.as_ref().map_or(&[], |e| &e.presence)
    }

    /// The connect call's `meta`, if the backend gave one.
    pub fn meta(&self) -> Option<&serde_json::Value> {
        self.extras.as_ref().and_then(|e| e.meta.as_ref())
    }

    /// Where this user's presence transitions are announced: `presence:<sub>`, then
    /// the `presence` claim's topics (without repeats).
    pub fn presence_topics(&self) -> Vec<Topic> {
        let mut topics: Vec<Topic> = Topic::presence(&self.user_id).into_iter().collect();
        for topic in self.presence_claim() {
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
