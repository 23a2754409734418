//! JWT claims as PROTOCOL.md §1 defines them. Signature and time validation happen in the
//! gateway (with `jsonwebtoken`); this module only fixes the shape and interprets `topics`.
//!
//! The shape is RFC 7519's, not only the one `coregate token` mints: `aud` may be one
//! string or an array of them (§4.1.3), and `exp`, `nbf` and `iat` are NumericDates,
//! which may have a fraction (§2). Identity providers issue both.

use serde::{Deserialize, Deserializer};

/// The claims of a coregate token.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Claims {
    /// The user id (≤ [`Claims::MAX_SUB_LEN`] bytes).
    pub sub: String,
    /// Expiry (seconds since the epoch); past it, without `refresh`, the server closes 4006.
    /// A fraction is dropped (the token expires at the start of its last second).
    #[serde(deserialize_with = "numeric_date")]
    pub exp: u64,
    /// Not before (validated if present). A fraction is dropped.
    #[serde(
        default,
        deserialize_with = "optional_numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
    pub nbf: Option<u64>,
    /// Issued at (validated if present: not in the future beyond a leeway). A fraction
    /// is dropped.
    #[serde(
        default,
        deserialize_with = "optional_numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
    pub iat: Option<u64>,
    /// Issuer (validated if configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience, one or several (validated if configured: one of them must match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Display name, carried into typing/presence/voice events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Allowed topic patterns, e.g. `["channel:*", "server:42"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
}

impl Claims {
    /// The longest `sub` accepted, in bytes (PROTOCOL.md §1). It becomes part of the
    /// `user:<sub>` and `presence:<sub>` topics, which the topic limit
    /// ([`crate::MAX_TOPIC_LEN`], 160) leaves room for.
    pub const MAX_SUB_LEN: usize = 128;
}

/// The `aud` claim: one audience or several (RFC 7519 §4.1.3).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "chat"`.
    One(String),
    /// `"aud": ["chat", "api"]`.
    Many(Vec<String>),
}

impl Audience {
    /// Every audience named.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self {
            Audience::One(one) => (Some(one.as_str()), &[][..]),
            Audience::Many(many) => (None, many.as_slice()),
        };
        one.into_iter().chain(many.iter().map(String::as_str))
    }

    /// Whether `audience` is one of those named.
    pub fn contains(&self, audience: &str) -> bool {
        self.iter().any(|a| a == audience)
    }
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, an integer or not. Read as
/// whole seconds, the fraction dropped; negative, infinite or NaN values are refused.
struct NumericDate(u64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NumericDate, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = NumericDate;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a NumericDate (non-negative seconds since the epoch)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<NumericDate, E> {
                Ok(NumericDate(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<NumericDate, E> {
                u64::try_from(v)
                    .map(NumericDate)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<NumericDate, E> {
                // 2^64 is exactly representable; every finite value below it fits.
                if v.is_finite() && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                    Ok(NumericDate(v.floor() as u64))
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    NumericDate::deserialize(d).map(|n| n.0)
}

fn optional_numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<NumericDate>::deserialize(d).map(|n| n.map(|n| n.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::{Topic, TopicPatterns};

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
        assert_eq!(c.aud, Some(Audience::One("gw".into())));
        let patterns =
            TopicPatterns::parse_list(c.topics.iter().map(String::as_str)).expect("patterns");
        assert!(patterns.allows(&Topic::parse("channel:5").expect("topic")));
        assert!(!patterns.allows(&Topic::parse("server:5").expect("topic")));
        assert!(serde_json::from_str::<Claims>(r#"{"exp":10}"#).is_err());
    }

    #[test]
    fn aud_may_be_an_array() {
        let c: Claims =
            serde_json::from_str(r#"{"sub":"u1","exp":10,"aud":["api","chat"]}"#).expect("array");
        let aud = c.aud.expect("aud");
        assert_eq!(aud, Audience::Many(vec!["api".into(), "chat".into()]));
        assert!(aud.contains("chat") && aud.contains("api") && !aud.contains("gw"));
        assert_eq!(aud.iter().collect::<Vec<_>>(), ["api", "chat"]);
        let c: Claims = serde_json::from_str(r#"{"sub":"u1","exp":10,"aud":[]}"#).expect("empty");
        assert!(!c.aud.expect("aud").contains("chat"));
        let one = Audience::One("chat".into());
        assert!(one.contains("chat") && !one.contains("api"));
        // Minted tokens keep the single-string form.
        assert_eq!(serde_json::to_string(&one).expect("ser"), r#""chat""#);
        assert!(serde_json::from_str::<Claims>(r#"{"sub":"u1","exp":10,"aud":5}"#).is_err());
    }

    #[test]
    fn numeric_dates_may_have_a_fraction() {
        let c: Claims = serde_json::from_str(
            r#"{"sub":"u1","exp":1700000100.75,"nbf":1700000000.5,"iat":1.6e9}"#,
        )
        .expect("fractions");
        assert_eq!(c.exp, 1_700_000_100);
        assert_eq!(c.nbf, Some(1_700_000_000));
        assert_eq!(c.iat, Some(1_600_000_000));
        let c: Claims =
            serde_json::from_str(r#"{"sub":"u1","exp":10,"nbf":null}"#).expect("null nbf");
        assert_eq!(c.nbf, None);
        for bad in [
            r#"{"sub":"u1","exp":-1}"#,
            r#"{"sub":"u1","exp":-0.5}"#,
            r#"{"sub":"u1","exp":"10"}"#,
            r#"{"sub":"u1","exp":10,"iat":-3}"#,
            r#"{"sub":"u1","exp":1e300}"#,
        ] {
            assert!(serde_json::from_str::<Claims>(bad).is_err(), "{bad}");
        }
    }
}
