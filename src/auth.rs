//! JWT verification (jsonwebtoken) and token minting for development and the load
//! harness. The accepted algorithm is fixed by the key: HS256 with a shared secret,
//! RS256 or ES256 with a public key; any other algorithm named by a token,
//! `none` included, is refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coregate_protocol::{Claims, Topic};
use coregate_shards::{AuthError, Identity, TokenVerifier};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::config::{Config, ConfigError};

/// Checks tokens for every shard (read-only, shared).
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl JwtVerifier {
    /// A verifier for HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8], config: &Config) -> JwtVerifier {
        Self::new(DecodingKey::from_secret(secret), Algorithm::HS256, config)
    }

    /// A verifier for the configured public key (RS256 or ES256, from the PEM).
    pub fn from_public_key(pem: &[u8], config: &Config) -> Result<JwtVerifier, ConfigError> {
        let bad = |e: jsonwebtoken::errors::Error| ConfigError {
            name: "jwt_public_key",
            reason: format!("not an RSA or EC public key in PEM: {e}"),
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
        validation.validate_nbf = true;
        // The sweeper closes at `exp` exactly; accepting later would contradict it.
        validation.leeway = 0;
        validation.validate_aud = config.jwt_audience.is_some();
        if let Some(aud) = &config.jwt_audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = &config.jwt_issuer {
            validation.set_issuer(&[iss]);
        }
        JwtVerifier { key, validation }
    }
}

impl TokenVerifier for JwtVerifier {
    fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
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
            },
        )?;
        let claims = data.claims;
        if claims.sub.is_empty()
            || claims.sub.len() > Claims::MAX_SUB_LEN
            || Topic::user(&claims.sub).is_err()
        {
            return Err(AuthError::BadClaims(
                "`sub` must be 1-128 printable ASCII bytes".into(),
            ));
        }
        let topics = claims
            .topic_patterns()
            .map_err(|e| AuthError::BadClaims(format!("`topics`: {e}")))?;
        Ok(Identity {
            user_id: claims.sub,
            name: claims.name,
            expires_at: claims.exp,
            topics,
        })
    }
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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        sub: request.sub.clone(),
        exp: now + request.ttl.as_secs(),
        nbf: None,
        iat: Some(now),
        iss: request.issuer.clone(),
        aud: request.audience.clone(),
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
        assert_eq!(identity.user_id, "alice");
        assert_eq!(identity.name.as_deref(), Some("Alice"));
        assert!(identity
            .topics
            .allows(&Topic::parse("channel:9").expect("topic")));
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

    #[test]
    fn alg_none_is_refused() {
        // {"alg":"none","typ":"JWT"} . {"sub":"alice","exp":9999999999} . (no signature)
        let token =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        let verifier = JwtVerifier::hs256(SECRET, &Config::default());
        assert!(verifier.verify(token).is_err());
    }
}
