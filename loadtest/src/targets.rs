//! Resolving the targets (WebSocket URL, admin URL) and refusing non-loopback ones unless
//! `--allow-remote` is given.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context};

/// A parsed `ws://host:port/path` or `http://host:port` target.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port` as written, for the `Host` header.
    pub authority: String,
    /// Path and query (at least `/`).
    pub path: String,
}

/// Parses `url` with scheme `scheme` and resolves its host.
pub async fn parse(url: &str, scheme: &str) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .with_context(|| format!("{url}: expected a {scheme}:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let has_port = match authority.rfind(']') {
        Some(i) => authority[i..].contains(':'),
        None => authority.contains(':'),
    };
    let with_port = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolves to nothing"))?;
    Ok(Target {
        addr,
        authority: authority.to_owned(),
        path: path.to_owned(),
    })
}

/// Refuses non-loopback addresses unless allowed.
pub fn check_loopback(what: &str, ip: IpAddr, allow_remote: bool) -> anyhow::Result<()> {
    if !allow_remote && !ip.is_loopback() {
        bail!("{what} {ip} is not a loopback address (pass --allow-remote to allow it)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_targets() {
        let t = parse("ws://127.0.0.1:9000/ws", "ws").await.expect("ws");
        assert_eq!(t.addr, "127.0.0.1:9000".parse().expect("addr"));
        assert_eq!(t.path, "/ws");
        assert_eq!(t.authority, "127.0.0.1:9000");
        let t = parse("http://127.0.0.1:9001", "http").await.expect("http");
        assert_eq!(t.path, "/");
        assert!(parse("http://127.0.0.1:9001", "ws").await.is_err());
        assert!(check_loopback("x", "127.0.0.3".parse().expect("ip"), false).is_ok());
        assert!(check_loopback("x", "10.0.0.1".parse().expect("ip"), false).is_err());
        assert!(check_loopback("x", "10.0.0.1".parse().expect("ip"), true).is_ok());
    }
}
