//! Any bytes as an HTTP upgrade request, as the accept loop parses it (and any prefix
//! of them, as it would arrive): must never panic, and every response written from
//! what parsed (the 101, or a refusal) must be one well-formed HTTP response — nothing
//! a client sent may split it.
#![no_main]

use coregate_shards::upgrade::{accept_response, parse_request, Refusal, MAX_REQUEST_SIZE};
use libfuzzer_sys::fuzz_target;

/// Parses `response` as an HTTP/1.1 response; returns its status and its body's
/// declared length, checking that exactly that many bytes follow the head.
fn check_response(response: &[u8]) -> u16 {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let head = match parsed.parse(response) {
        Ok(httparse::Status::Complete(head)) => head,
        other => panic!(
            "not a complete HTTP response ({other:?}): {:?}",
            String::from_utf8_lossy(response)
        ),
    };
    let content_length = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .expect("a numeric Content-Length")
        })
        .unwrap_or(0);
    assert_eq!(response.len() - head, content_length, "body length");
    parsed.code.expect("a status")
}

fn check(data: &[u8]) -> Result<bool, Refusal> {
    match parse_request(data, "/ws")? {
        None => Ok(false),
        Some(request) => {
            let response = accept_response(&request);
            assert_eq!(check_response(&response), 101);
            if let Some(token) = &request.token {
                assert!(!token.is_empty());
            }
            assert!(!request.key.is_empty());
            Ok(true)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let whole = check(data);
    if let Err(refusal) = &whole {
        let status = check_response(&refusal.response());
        assert!((400..600).contains(&status), "{status}");
    }
    // The driver parses the bytes read so far after every read: a request that was
    // complete must have been seen incomplete or complete, never refused, before.
    if let Ok(true) = whole {
        if data.len() <= MAX_REQUEST_SIZE {
            for end in [data.len() / 2, data.len().saturating_sub(1)] {
                if let Err(refusal) = check(&data[..end]) {
                    panic!("a prefix of an acceptable request was refused: {refusal:?}");
                }
            }
        }
    }
});
