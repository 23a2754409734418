//! JWT verification (jsonwebtoken) and token minting for development and the load
//! harness. The accepted algorithm is fixed by the key: HS256 with a shared secret,
//! RS256 or ES256 with a public key; any other algorithm named by a token,
//! `none` included, is refused.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coregate_protocol::claims::Audience;
use coregate_protocol::{Claims, Topic, TopicError, TopicPatterns};
use coregate_shards::{AuthError, Identity, IdentityExtras, TokenVerifier};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::config::{Config, ConfigError};

/// Checks tokens for every shard (read-only, shared).
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    /// How far in the future `iat` may be: the issuer's clock may run ahead of ours.
    iat_leeway: u64,
}

impl JwtVerifier {
    /// A verifier for HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8], config: &Config) -> JwtVerifier {
        Self::new(DecodingKey::from_secret(secret), Algorithm::HS256, config)
    }

    /// A verifier for the configured public key (RS256 or ES256, from the PEM).
    pub fn from_public_key(pem: &[u8], config: &Config) -> Result<JwtVerifier, ConfigError> {
        let bad = |e: jsonwebtoken::errors::Error| {
            ConfigError::new(
                "jwt_public_key",
                format!("not an RSA or EC public key in PEM: {e}"),
            )
        };
        let text = String::from_utf8_lossy(pem);
        let (key, algorithm) = if text.contains("BEGIN RSA PUBLIC KEY") {
            (
                DecodingKey::from_rsa_pem(pem).map_err(bad)?,
                Algorithm::RS256,
            )
        } else {
            match DecodingKey::from_ec_pem(pem) {
                Ok(key) => (key, Algorithm::ES256),
                Err(_) => (
                    DecodingKey::from_rsa_pem(pem).map_err(bad)?,
                    Algorithm::RS256,
                ),
            }
        };
        Ok(Self::new(key, algorithm, config))
    }

    fn new(key: DecodingKey, algorithm: Algorithm, config: &Config) -> JwtVerifier {
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        // A configured issuer or audience must be present, not only right when present.
        let mut required = vec!["exp", "sub"];
        required.extend(config.jwt_issuer.as_ref().map(|_| "iss"));
        required.extend(config.jwt_audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        // `exp` and `nbf` are checked by `check_times`, not by jsonwebtoken: it rounds a
        // fractional NumericDate to the nearest second where the gateway drops the
        // fraction (docs/protocol.md §1), so the two disagreed (an `nbf` 0.5–1 s ahead
        // was refused by one and accepted by the other), and it reads its own clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.validate_aud = config.jwt_audience.is_some();
        // With an audience configured, a token's `aud` (a string or an array, RFC 7519
        // §4.1.3) must name it, among others or alone. Without one, `aud` is not looked
        // at: the gateway does not claim to be any audience.
        if let Some(aud) = &config.jwt_audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = &config.jwt_issuer {
            validation.set_issuer(&[iss]);
        }
        JwtVerifier {
            key,
            validation,
            iat_leeway: config.jwt_iat_leeway.as_secs(),
        }
    }

    /// [`TokenVerifier::verify`] at `now` (Unix seconds): the signature and the claims'
    /// shape by jsonwebtoken, every time claim here ([`check_times`]), at `now` alone.
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<TokenClaims>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::MissingAlgorithm
                | ErrorKind::UnsupportedAlgorithm => AuthError::AlgorithmNotAllowed,
                ErrorKind::InvalidIssuer => AuthError::BadClaims("wrong issuer".into()),
                ErrorKind::InvalidAudience => AuthError::BadClaims("wrong audience".into()),
                ErrorKind::MissingRequiredClaim(claim) => {
                    AuthError::BadClaims(format!("missing `{claim}`"))
                }
                _ => AuthError::Malformed,
            })?;
        let TokenClaims { claims, presence } = data.claims;
        check_times(&claims, now, self.iat_leeway)?;
        if claims.sub.is_empty()
            || claims.sub.len() > Claims::MAX_SUB_LEN
            || Topic::user(&claims.sub).is_err()
        {
            return Err(AuthError::BadClaims(
                "`sub` must be 1-128 printable ASCII bytes".into(),
            ));
        }
        let topics = shared_patterns(&claims.topics)
            .map_err(|e| AuthError::BadClaims(format!("`topics`: {e}")))?;
        let presence = presence
            .iter()
            .map(|raw| Topic::parse(raw))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AuthError::BadClaims(format!("`presence`: {e}")))?;
        Ok(Identity {
            user_id: claims.sub.into(),
            name: claims.name.map(String::into_boxed_str),
            expires_at: claims.exp,
            topics,
            extras: IdentityExtras::boxed(presence, None),
        })
    }
}

impl TokenVerifier for JwtVerifier {
    fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_at(token, unix_now())
    }
}

/// How many distinct `topics` claims each thread keeps parsed; past it the set starts
/// afresh (connections keep their copies).
const SHARED_PATTERN_SETS: usize = 256;

thread_local! {
    /// The `topics` claims this thread parsed lately, by their text.
    static PATTERN_SETS: RefCell<HashMap<Vec<String>, TopicPatterns>> = RefCell::default();
}

/// A `topics` claim's patterns (a token's, or the backend's connect answer's), shared
/// with the connections that were granted the same list: a backend grants mostly a few
/// sets (per role, per plan), and every connection keeps its set for its life (~80 B
/// each unshared; BENCHMARKS.md, issue 17).
pub fn shared_patterns(topics: &[String]) -> Result<TopicPatterns, TopicError> {
    PATTERN_SETS.with(|sets| {
        let mut sets = sets.borrow_mut();
        if let Some(patterns) = sets.get(topics) {
            return Ok(patterns.clone());
        }
        let patterns = TopicPatterns::parse_list(topics.iter().map(String::as_str))?;
        if sets.len() >= SHARED_PATTERN_SETS {
            sets.clear();
        }
        sets.insert(topics.to_vec(), patterns.clone());
        Ok(patterns)
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the gateway reads of a token: PROTOCOL.md §1's claims, and the optional
/// `presence` claim (topics where the user's presence transitions are announced, besides
/// `presence:<sub>`; a malformed topic makes the token invalid, as in `topics`).
#[derive(serde::Deserialize)]
struct TokenClaims {
    #[serde(flatten)]
    claims: Claims,
    #[serde(default)]
    presence: Vec<String>,
}

/// The claims' times at `now`: expired at `exp` itself (RFC 7519 §4.1.4: "on or after"),
/// which is when the shard's sweeper closes the connection too; not valid before `nbf`;
/// and not issued in the future, beyond `iat_leeway` seconds (PROTOCOL.md §1: `iat` is
/// validated if present). Fractions of seconds were dropped when the claims were read.
/// The one place these are decided: jsonwebtoken is told not to.
fn check_times(claims: &Claims, now: u64, iat_leeway: u64) -> Result<(), AuthError> {
    if claims.exp <= now {
        return Err(AuthError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now) {
        return Err(AuthError::NotYetValid);
    }
    if claims
        .iat
        .is_some_and(|iat| iat > now.saturating_add(iat_leeway))
    {
        return Err(AuthError::BadClaims("`iat` is in the future".into()));
    }
    Ok(())
}

/// What `coregate token` puts in a token.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub sub: String,
    pub name: Option<String>,
    pub topics: Vec<String>,
    pub ttl: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Signs an HS256 token.
pub fn mint_hs256(
    secret: &[u8],
    request: &TokenRequest,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = unix_now();
    let claims = Claims {
        sub: request.sub.clone(),
        exp: now + request.ttl.as_secs(),
        nbf: None,
        iat: Some(now),
        iss: request.issuer.clone(),
        aud: request.audience.clone().map(Audience::One),
        name: request.name.clone(),
        topics: request.topics.clone(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn request(ttl: u64) -> TokenRequest {
        TokenRequest {
            sub: "alice".into(),
            name: Some("Alice".into()),
            topics: vec!["channel:*".into()],
            ttl: Duration::from_secs(ttl),
            issuer: None,
            audience: None,
        }
    }

    #[test]
    fn minted_token_verifies_into_identity() {
        let verifier = JwtVerifier::hs256(SECRET, &Config::default());
        let token = mint_hs256(SECRET, &request(60)).expect("signs");
        let identity = verifier.verify(&token).expect("valid");
        assert_eq!(&*identity.user_id, "alice");
        assert_eq!(identity.name.as_deref(), Some("Alice"));
        assert!(identity
            .topics
            .allows(&Topic::parse("channel:9").expect("topic")));
    }

    #[test]
    fn tokens_with_the_same_topics_claim_share_one_parsed_copy() {
        let verifier = JwtVerifier::hs256(SECRET, &Config::default());
        let verify = |sub: &str, topics: &[&str]| {
            let request = TokenRequest {
                sub: sub.into(),
                topics: topics.iter().map(|t| t.to_string()).collect(),
                ..request(60)
            };
            verifier
                .verify(&mint_hs256(SECRET, &request).expect("signs"))
                .expect("valid")
                .topics
        };
        let alice = verify("alice", &["channel:*", "voice:*"]);
        let bob = verify("bob", &["channel:*", "voice:*"]);
        let carol = verify("carol", &["channel:*"]);
        assert!(alice.is_same_copy(&bob));
        assert!(!alice.is_same_copy(&carol));
        assert!(
            !carol.allows(&Topic::parse("voice:1").expect("topic")),
            "her own claim"
        );
        let bad = TokenRequest {
            topics: vec!["channel:*".into(), "bad topic".into()],
            ..request(60)
        };
        let token = mint_hs256(SECRET, &bad).expect("signs");
        assert!(
            verifier.verify(&token).is_err(),
            "a bad claim is refused every time"
        );
        assert!(verifier.verify(&token).is_err());
    }

    #[test]
    fn wrong_secret_and_issuer_are_refused() {
        let token = mint_hs256(SECRET, &request(60)).expect("signs");
        let other = JwtVerifier::hs256(b"another-secret-of-16-bytes", &Config::default());
        assert_eq!(
            other.verify(&token).expect_err("bad sig"),
            AuthError::BadSignature
        );
        let config = Config {
            jwt_issuer: Some("https://auth.example".into()),
            ..Config::default()
        };
        let strict = JwtVerifier::hs256(SECRET, &config);
        assert!(matches!(
            strict.verify(&token),
            Err(AuthError::BadClaims(_))
        ));
    }

    /// Signs `claims` as an identity provider would, whatever their shape.
    fn sign(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("signs")
    }

    #[test]
    fn array_aud_is_accepted_and_any_element_may_match() {
        let exp = unix_now() + 600;
        let token = sign(serde_json::json!({"sub": "ann", "exp": exp, "aud": ["api", "chat"]}));
        let open = JwtVerifier::hs256(SECRET, &Config::default());
        assert_eq!(
            &*open.verify(&token).expect("no audience configured").user_id,
            "ann"
        );
        let single = sign(serde_json::json!({"sub": "ann", "exp": exp, "aud": "other"}));
        open.verify(&single).expect("a single aud, none configured");
        let chat = JwtVerifier::hs256(
            SECRET,
            &Config {
                jwt_audience: Some("chat".into()),
                ..Config::default()
            },
        );
        chat.verify(&token).expect("`chat` is one of the audiences");
        let elsewhere = sign(serde_json::json!({"sub": "ann", "exp": exp, "aud": ["api", "web"]}));
        assert_eq!(
            chat.verify(&elsewhere).expect_err("no element matches"),
            AuthError::BadClaims("wrong audience".into())
        );
        let none = sign(serde_json::json!({"sub": "ann", "exp": exp}));
        assert_eq!(
            chat.verify(&none)
                .expect_err("aud required when configured"),
            AuthError::BadClaims("missing `aud`".into())
        );
    }

    #[test]
    fn the_presence_claim_becomes_the_announcement_topics() {
        let exp = unix_now() + 600;
        let verifier = JwtVerifier::hs256(SECRET, &Config::default());
        let token = sign(serde_json::json!({
            "sub": "ann", "exp": exp, "presence": ["server:1", "presence:ann", "server:2"]
        }));
        let identity = verifier.verify(&token).expect("a valid presence claim");
        let topics: Vec<_> = identity.presence_topics().into_iter().collect();
        let names: Vec<&str> = topics.iter().map(|t| t.as_str()).collect();
        assert_eq!(names, ["presence:ann", "server:1", "server:2"]);
        let none = sign(serde_json::json!({"sub": "ann", "exp": exp}));
        let identity = verifier.verify(&none).expect("no presence claim");
        assert!(identity.extras.is_none());
        let bad = sign(serde_json::json!({"sub": "ann", "exp": exp, "presence": ["no spaces"]}));
        assert!(matches!(
            verifier.verify(&bad),
            Err(AuthError::BadClaims(reason)) if reason.contains("presence")
        ));
    }

    #[test]
    fn a_bad_pattern_in_the_topics_claim_refuses_the_token() {
        let verifier = JwtVerifier::hs256(SECRET, &Config::default());
        let bad = sign(serde_json::json!({
            "sub": "ann", "exp": unix_now() + 600, "topics": ["channel:*", "nope"]
        }));
        assert!(matches!(
            verifier.verify(&bad),
            Err(AuthError::BadClaims(reason)) if reason.contains("topics")
        ));
    }

    #[test]
    fn fractional_numeric_dates_are_accepted() {
        let now = unix_now() as f64;
        let token = sign(serde_json::json!({
            "sub": "ann", "exp": now + 600.25, "nbf": now - 10.5, "iat": now - 0.75
        }));
        let verifier = JwtVerifier::hs256(SECRET, &Config::default());
        let identity = verifier.verify(&token).expect("fractions are NumericDates");
        assert_eq!(identity.expires_at, (now + 600.25).floor() as u64);
        let expired = sign(serde_json::json!({"sub": "ann", "exp": now - 5.5}));
        assert_eq!(
            verifier.verify(&expired).expect_err("expired"),
            AuthError::Expired
        );
    }

    /// jsonwebtoken rounded a fractional `nbf` or `exp` to the nearest second, the
    /// gateway drops the fraction: an `nbf` 0.5–1 s ahead was refused by the one and
    /// accepted by the other. Now only the gateway's reading counts, at the `now` given.
    #[test]
    fn fractional_nbf_and_exp_are_read_as_their_whole_second_by_every_check() {
        let verifier = JwtVerifier::hs256(SECRET, &Config::default());
        let now = unix_now();
        let at = |nbf: f64, exp: f64| {
            sign(
                serde_json::json!({"sub": "ann", "nbf": now as f64 + nbf, "exp": now as f64 + exp}),
            )
        };
        verifier
            .verify_at(&at(0.6, 600.0), now)
            .expect("`nbf` in the current second: valid");
        assert_eq!(
            verifier
                .verify_at(&at(1.2, 600.0), now)
                .expect_err("next second"),
            AuthError::NotYetValid
        );
        let short = at(-10.0, 1.6);
        verifier
            .verify_at(&short, now)
            .expect("`exp` is next second");
        assert_eq!(
            verifier
                .verify_at(&short, now + 1)
                .expect_err("its second came"),
            AuthError::Expired
        );
        assert_eq!(
            verifier
                .verify_at(&at(-10.0, 0.4), now)
                .expect_err("`exp` this second"),
            AuthError::Expired
        );
        // Decided at the `now` given, not at another clock's: a driven clock works.
        let later = now + 86_400;
        verifier
            .verify_at(&at(86_400.3, 90_000.0), later)
            .expect("valid at the driven clock's time");
        assert_eq!(
            verifier
                .verify_at(&at(-10.0, 600.0), later)
                .expect_err("long expired then"),
            AuthError::Expired
        );
    }

    #[test]
    fn iat_in_the_future_beyond_the_leeway_is_refused() {
        let config = Config {
            jwt_iat_leeway: Duration::from_secs(60),
            ..Config::default()
        };
        let verifier = JwtVerifier::hs256(SECRET, &config);
        let now = unix_now();
        let token =
            |iat: u64| sign(serde_json::json!({"sub": "ann", "exp": now + 3600, "iat": iat}));
        // At a fixed `now`: the leeway's edge, then one second past it.
        verifier
            .verify_at(&token(now + 60), now)
            .expect("within the leeway");
        assert_eq!(
            verifier
                .verify_at(&token(now + 61), now)
                .expect_err("beyond"),
            AuthError::BadClaims("`iat` is in the future".into())
        );
        verifier
            .verify_at(&token(now - 3000), now)
            .expect("issued in the past");
        // The leeway is a setting.
        let strict = JwtVerifier::hs256(
            SECRET,
            &Config {
                jwt_iat_leeway: Duration::ZERO,
                ..Config::default()
            },
        );
        assert!(strict.verify_at(&token(now + 1), now).is_err());
        strict.verify_at(&token(now), now).expect("issued now");
    }

    #[test]
    fn times_at_a_driven_clock() {
        let claims = |exp, nbf, iat| Claims {
            sub: "ann".into(),
            exp,
            nbf,
            iat,
            iss: None,
            aud: None,
            name: None,
            topics: Vec::new(),
        };
        assert_eq!(check_times(&claims(100, None, None), 99, 60), Ok(()));
        assert_eq!(
            check_times(&claims(100, None, None), 100, 60),
            Err(AuthError::Expired),
            "expired on its `exp` second"
        );
        assert_eq!(
            check_times(&claims(200, Some(101), None), 100, 60),
            Err(AuthError::NotYetValid)
        );
        assert_eq!(
            check_times(&claims(200, Some(100), Some(160)), 100, 60),
            Ok(())
        );
        assert!(check_times(&claims(200, None, Some(161)), 100, 60).is_err());
    }

    #[test]
    fn a_128_byte_sub_is_accepted_and_129_is_not() {
        let verifier = JwtVerifier::hs256(SECRET, &Config::default());
        let exp = unix_now() + 600;
        let longest = "s".repeat(Claims::MAX_SUB_LEN);
        let token = sign(serde_json::json!({"sub": longest, "exp": exp}));
        assert_eq!(
            &*verifier.verify(&token).expect("128 bytes").user_id,
            longest
        );
        let too_long = sign(serde_json::json!({"sub": "s".repeat(129), "exp": exp}));
        assert!(matches!(
            verifier.verify(&too_long),
            Err(AuthError::BadClaims(_))
        ));
    }

    #[test]
    fn alg_none_is_refused() {
        // {"alg":"none","typ":"JWT"} . {"sub":"alice","exp":9999999999} . (no signature)
        let token =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        let verifier = JwtVerifier::hs256(SECRET, &Config::default());
        assert!(verifier.verify(token).is_err());
    }
}
