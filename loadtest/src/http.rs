//! A minimal HTTP/1.1 client over one keep-alive TCP connection: enough to `POST` JSON to
//! the admin API many times a second and read the status (the body is discarded). It
//! reconnects when the server closes.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

pub struct HttpConn {
    addr: SocketAddr,
    host: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    request: Vec<u8>,
}

impl HttpConn {
    pub fn new(addr: SocketAddr, host: &str) -> HttpConn {
        HttpConn {
            addr,
            host: host.to_owned(),
            stream: None,
            buf: Vec::with_capacity(1024),
            request: Vec::with_capacity(1024),
        }
    }

    /// `POST path` with a JSON body; returns the status code.
    pub async fn post(&mut self, path: &str, body: &[u8]) -> io::Result<u16> {
        self.request.clear();
        self.request.extend_from_slice(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                self.host,
                body.len()
            )
            .as_bytes(),
        );
        self.request.extend_from_slice(body);
        let result = self.exchange().await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(&mut self) -> io::Result<u16> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
            self.buf.clear();
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(io::Error::other("no connection"));
        };
        stream.write_all(&self.request).await?;
        // Read the head.
        let (status, head_len, content_length, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let status = response.code.unwrap_or(0);
                    let mut content_length = None;
                    let mut close = false;
                    for h in response.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            content_length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<usize>().ok());
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            close = h.value.eq_ignore_ascii_case(b"close");
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            return Err(io::Error::other("chunked responses are not supported"));
                        }
                    }
                    break (status, head_len, content_length, close);
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > MAX_HEAD {
                        return Err(io::Error::other("response head too large"));
                    }
                    read_more(stream, &mut self.buf).await?;
                }
                Err(e) => return Err(io::Error::other(format!("bad response: {e}"))),
            }
        };
        let content_length = content_length.unwrap_or(0);
        while self.buf.len() < head_len + content_length {
            read_more(stream, &mut self.buf).await?;
        }
        self.buf.drain(..head_len + content_length);
        if close {
            self.stream = None;
        }
        Ok(status)
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "server closed",
        ));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn keep_alive_posts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            let mut answered = 0;
            while answered < 2 {
                let n = s.read(&mut buf).await.expect("read");
                if n == 0 {
                    return;
                }
                seen.extend_from_slice(&buf[..n]);
                // Each request ends with its 2-byte body "{}".
                while let Some(i) = seen.windows(6).position(|w| w == b"\r\n\r\n{}") {
                    seen.drain(..i + 6);
                    let reply: &[u8] = if answered == 0 {
                        b"HTTP/1.1 202 Accepted\r\ncontent-length: 5\r\n\r\nhello"
                    } else {
                        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"
                    };
                    s.write_all(reply).await.expect("write");
                    answered += 1;
                }
            }
        });
        let mut conn = HttpConn::new(addr, "test");
        assert_eq!(conn.post("/publish", b"{}").await.expect("first"), 202);
        assert_eq!(conn.post("/publish", b"{}").await.expect("second"), 400);
    }
}
