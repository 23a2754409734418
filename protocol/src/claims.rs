//! JWT claims as PROTOCOL.md §1 defines them. Signature and time validation happen in the
//! gateway (with `jsonwebtoken`); this module only fixes the shape and interprets `topics`.

use crate::topic::{TopicError, TopicPatterns};

/// The claims of a coregate token.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Claims {
    /// The user id (≤ [`Claims::MAX_SUB_LEN`] bytes).
    pub sub: String,
    /// Expiry (seconds since the epoch); past it, without `refresh`, the server closes 4006.
    pub exp: u64,
    /// Not before (validated if present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at (validated if present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Issuer (validated if configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience (validated if configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Display name, carried into typing/presence/voice events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Allowed topic patterns, e.g. `["channel:*", "server:42"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
}

impl Claims {
    /// The longest `sub` accepted, in bytes (it becomes part of the `user:<sub>` topic, whose
    /// own limit is 128 bytes too; a longer `sub` cannot have a user topic).
    pub const MAX_SUB_LEN: usize = 128;

    /// The `topics` claim parsed into patterns; a bad pattern is an error rather than being
    /// skipped, so a misissued token is noticed.
    pub fn topic_patterns(&self) -> Result<TopicPatterns, TopicError> {
        TopicPatterns::parse_list(self.topics.iter().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::Topic;

    #[test]
    fn minimal_and_full_claims() {
        let c: Claims = serde_json::from_str(r#"{"sub":"u1","exp":10}"#).expect("minimal");
        assert_eq!(c.sub, "u1");
        assert_eq!(c.exp, 10);
        assert!(c.topics.is_empty() && c.name.is_none() && c.nbf.is_none());
        assert_eq!(
            serde_json::to_string(&c).expect("ser"),
            r#"{"sub":"u1","exp":10}"#
        );

        let c: Claims = serde_json::from_str(
            r#"{"sub":"u1","exp":10,"nbf":1,"iat":2,"iss":"me","aud":"gw","name":"Ann",
                "topics":["channel:*","server:42"],"extra":true}"#,
        )
        .expect("full");
        let patterns = c.topic_patterns().expect("patterns");
        assert!(patterns.allows(&Topic::parse("channel:5").expect("topic")));
        assert!(!patterns.allows(&Topic::parse("server:5").expect("topic")));
        assert!(serde_json::from_str::<Claims>(r#"{"exp":10}"#).is_err());
    }

    #[test]
    fn bad_pattern_is_an_error() {
        let c = Claims {
            sub: "u".into(),
            exp: 1,
            nbf: None,
            iat: None,
            iss: None,
            aud: None,
            name: None,
            topics: vec!["nope".into()],
        };
        assert!(c.topic_patterns().is_err());
    }
}
