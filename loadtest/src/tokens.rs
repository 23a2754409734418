//! Tokens for the harness's connections: minted (HS256, `sub = lt-<i>`, `topics =
//! ["channel:*"]`) or read from a file, one per line.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use coregate_protocol::Claims;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// Where tokens come from; travels to worker processes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TokenSource {
    Mint { secret: String, ttl_s: u64 },
    File { path: String },
}

/// Hands out the token of connection `i`.
pub enum Tokens {
    Mint {
        key: EncodingKey,
        header: Box<Header>,
        exp: u64,
    },
    List(Vec<String>),
}

impl Tokens {
    pub fn new(source: &TokenSource) -> anyhow::Result<Tokens> {
        match source {
            TokenSource::Mint { secret, ttl_s } => Ok(Tokens::Mint {
                key: EncodingKey::from_secret(secret.as_bytes()),
                header: Box::new(Header::new(Algorithm::HS256)),
                exp: unix_now().as_secs() + ttl_s,
            }),
            TokenSource::File { path } => Ok(Tokens::List(read_file(Path::new(path))?)),
        }
    }

    /// The token for connection `i` (a file's tokens are reused round-robin).
    pub fn get(&self, i: u64) -> anyhow::Result<String> {
        match self {
            Tokens::Mint { key, header, exp } => mint(key, header, i, *exp),
            Tokens::List(list) => {
                let index = usize::try_from(i % list.len() as u64).context("index")?;
                Ok(list[index].clone())
            }
        }
    }
}

/// Reads non-empty lines.
pub fn read_file(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading tokens from {}", path.display()))?;
    let list: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if list.is_empty() {
        bail!("{} holds no tokens", path.display());
    }
    Ok(list)
}

/// Signs the claims of connection `i`.
pub fn mint(key: &EncodingKey, header: &Header, i: u64, exp: u64) -> anyhow::Result<String> {
    let claims = Claims {
        sub: format!("lt-{i}"),
        exp,
        nbf: None,
        iat: None,
        iss: None,
        aud: None,
        name: None,
        topics: vec!["channel:*".to_owned(), "voice:*".to_owned()],
    };
    jsonwebtoken::encode(header, &claims, key).context("signing a token")
}

pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn minted_tokens_decode_with_the_secret() {
        let source = TokenSource::Mint {
            secret: "s3cret-s3cret-s3cret".into(),
            ttl_s: 600,
        };
        let tokens = Tokens::new(&source).expect("tokens");
        let token = tokens.get(42).expect("token");
        let data = jsonwebtoken::decode::<Claims>(
            &token,
            &DecodingKey::from_secret(b"s3cret-s3cret-s3cret"),
            &Validation::new(Algorithm::HS256),
        )
        .expect("valid");
        assert_eq!(data.claims.sub, "lt-42");
        assert_eq!(data.claims.topics, vec!["channel:*", "voice:*"]);
        assert!(data.claims.exp > unix_now().as_secs() + 500);
        assert!(jsonwebtoken::decode::<Claims>(
            &token,
            &DecodingKey::from_secret(b"another-secret-entirely"),
            &Validation::new(Algorithm::HS256),
        )
        .is_err());
    }

    #[test]
    fn token_file_round_robin() {
        let path = std::env::temp_dir().join(format!("lt-tokens-{}", std::process::id()));
        std::fs::write(&path, "a\n\nb\n").expect("write");
        let tokens = Tokens::new(&TokenSource::File {
            path: path.display().to_string(),
        })
        .expect("tokens");
        assert_eq!(tokens.get(0).expect("0"), "a");
        assert_eq!(tokens.get(1).expect("1"), "b");
        assert_eq!(tokens.get(2).expect("2"), "a");
        let _ = std::fs::remove_file(path);
    }
}
