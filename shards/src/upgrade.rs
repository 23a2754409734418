//! The HTTP/1.1 upgrade: parse the request, pick the encoding, find the token, and
//! write the 101 (or the refusal). Pure functions over bytes; the connection task
//! does the I/O and the token check.

use coregate_protocol::{negotiate, Encoding};

/// Largest upgrade request accepted; browsers send well under 2 KiB.
pub const MAX_REQUEST_SIZE: usize = 8 * 1024;
const MAX_HEADERS: usize = 32;

/// A valid WebSocket upgrade request, as far as HTTP goes.
#[derive(Debug, PartialEq, Eq)]
pub struct UpgradeRequest {
    pub encoding: Encoding,
    /// The subprotocol to echo in the 101, when the client offered one.
    pub echo: Option<&'static str>,
    /// `Sec-WebSocket-Key`, for the accept hash.
    pub key: String,
    /// From `?token=` or `Authorization: Bearer`; `None` means identify in-band.
    pub token: Option<String>,
}

/// Why an upgrade was refused, with the HTTP status it becomes.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not found")]
    NotFound,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("request header too large")]
    TooLarge,
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("service unavailable")]
    Unavailable { retry_after_secs: u64 },
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("this user holds its maximum of connections")]
    UserLimit,
}

impl Refusal {
    /// The complete HTTP response for this refusal.
    pub fn response(&self) -> Vec<u8> {
        let (status, extra) = match self {
            Refusal::NotFound => ("404 Not Found", String::new()),
            Refusal::BadRequest(_) => ("400 Bad Request", String::new()),
            Refusal::TooLarge => ("431 Request Header Fields Too Large", String::new()),
            Refusal::Unauthorized(_) => (
                "401 Unauthorized",
                "WWW-Authenticate: Bearer\r\n".to_owned(),
            ),
            Refusal::Unavailable { retry_after_secs } => (
                "503 Service Unavailable",
                format!("Retry-After: {retry_after_secs}\r\n"),
            ),
            Refusal::TooManyRequests { retry_after_secs } => (
                "429 Too Many Requests",
                format!("Retry-After: {retry_after_secs}\r\n"),
            ),
            // No Retry-After: a place frees up only when one of the user's others closes.
            Refusal::UserLimit => ("429 Too Many Requests", String::new()),
        };
        let body = format!("{self}\n");
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Parses the upgrade request in `buf`. `Ok(None)`: the request is not complete yet.
pub fn parse_request(buf: &[u8], path: &str) -> Result<Option<UpgradeRequest>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_SIZE => {
            return Err(Refusal::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
        Err(e) => return Err(Refusal::BadRequest(format!("malformed HTTP request: {e}"))),
    }
    let target = request.path.unwrap_or("/");
    let (request_path, query) = target.split_once('?').unwrap_or((target, ""));
    if request_path != path {
        return Err(Refusal::NotFound);
    }
    if request.method != Some("GET") {
        return Err(Refusal::BadRequest("a WebSocket upgrade is a GET".into()));
    }
    let header = |name: &'static str| {
        request
            .headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &'static str, token: &str| {
        header(name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(Refusal::BadRequest("expected a WebSocket upgrade".into()));
    }
    if !header("sec-websocket-version").any(|v| v.trim() == "13") {
        return Err(Refusal::BadRequest(
            "Sec-WebSocket-Version must be 13".into(),
        ));
    }
    let key = header("sec-websocket-key")
        .next()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| Refusal::BadRequest("missing Sec-WebSocket-Key".into()))?;
    let negotiated = negotiate(header("sec-websocket-protocol"))
        .map_err(|e| Refusal::BadRequest(e.to_string()))?;
    let token = query_param(query, "token").or_else(|| {
        header("authorization").find_map(|v| {
            let (scheme, credentials) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| credentials.trim().to_owned())
        })
    });
    Ok(Some(UpgradeRequest {
        encoding: negotiated.encoding,
        echo: negotiated.echo,
        key,
        token: token.filter(|t| !t.is_empty()),
    }))
}

/// What a connect call (PROTOCOL.md §8) carries of an upgrade request that
/// [`parse_request`] accepted: the headers named in `allowed` (lowercase names, values as
/// sent; `Cookie` is one by default), and the query parameters but `token`, which the
/// backend is never sent.
pub fn connect_details(buf: &[u8], allowed: &[String]) -> ConnectDetails {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let mut details = ConnectDetails::default();
    if request.parse(buf).is_err() {
        return details;
    }
    for header in request.headers.iter() {
        let name = header.name.to_ascii_lowercase();
        if allowed.contains(&name) {
            if let Ok(value) = std::str::from_utf8(header.value) {
                details.headers.push((name, value.to_owned()));
            }
        }
    }
    let query = request
        .path
        .and_then(|p| p.split_once('?'))
        .map_or("", |(_, q)| q);
    details.query = query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .filter(|(key, _)| !key.is_empty() && *key != "token")
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    details
}

/// See [`connect_details`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ConnectDetails {
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
}

/// A query parameter's value; JWTs are URL-safe, so no percent-decoding is needed
/// beyond rejecting values that use it.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.to_owned())
    })
}

/// The `101 Switching Protocols` response.
pub fn accept_response(request: &UpgradeRequest) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(request.key.as_bytes());
    let protocol = request
        .echo
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{protocol}\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "GET /ws?token=abc.def.ghi HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    fn parse(extra: &str) -> Result<Option<UpgradeRequest>, Refusal> {
        parse_request(format!("{BASE}{extra}\r\n").as_bytes(), "/ws")
    }

    #[test]
    fn a_connect_call_carries_the_allowed_headers_and_the_query_but_the_token() {
        let request = "GET /ws?token=secret&room=7&flag HTTP/1.1\r\nHost: x\r\nCookie: sid=abc\r\nX-Forwarded-For: 10.0.0.1\r\nAuthorization: Bearer t\r\n\r\n";
        let allowed = ["cookie".to_owned(), "x-forwarded-for".to_owned()];
        let details = connect_details(request.as_bytes(), &allowed);
        assert_eq!(
            details.headers,
            [
                ("cookie".to_owned(), "sid=abc".to_owned()),
                ("x-forwarded-for".to_owned(), "10.0.0.1".to_owned())
            ]
        );
        assert_eq!(
            details.query,
            [
                ("room".to_owned(), "7".to_owned()),
                ("flag".to_owned(), String::new())
            ]
        );
    }

    #[test]
    fn token_from_query_and_default_json() {
        let req = parse("").expect("valid").expect("complete");
        assert_eq!(req.token.as_deref(), Some("abc.def.ghi"));
        assert_eq!(req.encoding, Encoding::Json);
        assert_eq!(req.echo, None);
        let response = String::from_utf8(accept_response(&req)).expect("ascii");
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    }

    #[test]
    fn msgpack_negotiated_and_echoed() {
        let req = parse("Sec-WebSocket-Protocol: foo, coregate.v1.msgpack\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(req.encoding, Encoding::MsgPack);
        let response = String::from_utf8(accept_response(&req)).expect("ascii");
        assert!(response.contains("Sec-WebSocket-Protocol: coregate.v1.msgpack\r\n"));
    }

    #[test]
    fn unknown_subprotocol_only_is_400() {
        let err = parse("Sec-WebSocket-Protocol: mqtt\r\n").expect_err("refused");
        assert!(matches!(err, Refusal::BadRequest(ref m) if m.contains("coregate.v1.json")));
        assert!(err.response().starts_with(b"HTTP/1.1 400"));
    }

    #[test]
    fn wrong_path_is_404_and_partial_is_none() {
        let req = BASE.replace("/ws?", "/other?") + "\r\n";
        assert_eq!(parse_request(req.as_bytes(), "/ws"), Err(Refusal::NotFound));
        assert_eq!(parse_request(&BASE.as_bytes()[..20], "/ws"), Ok(None));
    }

    #[test]
    fn bearer_header_token() {
        let req = format!(
            "{}Authorization: Bearer xyz\r\n\r\n",
            BASE.replace("?token=abc.def.ghi", "")
        );
        let parsed = parse_request(req.as_bytes(), "/ws")
            .expect("valid")
            .expect("complete");
        assert_eq!(parsed.token.as_deref(), Some("xyz"));
    }

    #[test]
    fn oversize_request_is_refused() {
        let huge = format!(
            "GET /ws HTTP/1.1\r\nX: {}\r\n",
            "a".repeat(MAX_REQUEST_SIZE)
        );
        assert_eq!(
            parse_request(huge.as_bytes(), "/ws"),
            Err(Refusal::TooLarge)
        );
    }
}
