//! Where publications go: the admin API (`POST /publish`, one keep-alive connection per
//! lane) or Redis (`PUBLISH <prefix><topic> <envelope>`, PROTOCOL.md §6), which is how a
//! backend feeds a multi-node deployment.

use std::net::SocketAddr;

use crate::http::HttpConn;

/// How to reach the publishing endpoint; cheap to clone into each lane.
#[derive(Clone)]
pub enum SinkSpec {
    Http { admin: SocketAddr, host: String },
    Redis { url: String, prefix: String },
}

impl std::fmt::Debug for SinkSpec {
    // The Redis URL may hold a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkSpec::Http { admin, .. } => write!(f, "Http({admin})"),
            SinkSpec::Redis { prefix, .. } => write!(f, "Redis(prefix {prefix:?})"),
        }
    }
}

/// One lane's open endpoint.
pub enum Sink {
    Http(HttpConn),
    Redis {
        conn: redis::aio::MultiplexedConnection,
        prefix: String,
    },
    /// Redis could not be reached: every publication fails with this kind.
    Broken(String),
}

impl Sink {
    pub async fn new(spec: &SinkSpec) -> Sink {
        match spec {
            SinkSpec::Http { admin, host } => Sink::Http(HttpConn::new(*admin, host)),
            SinkSpec::Redis { url, prefix } => {
                let client = match redis::Client::open(url.as_str()) {
                    Ok(client) => client,
                    Err(_) => return Sink::Broken("redis_bad_url".into()),
                };
                match client.get_multiplexed_async_connection().await {
                    Ok(conn) => Sink::Redis {
                        conn,
                        prefix: prefix.clone(),
                    },
                    Err(e) => Sink::Broken(redis_kind(&e)),
                }
            }
        }
    }

    /// Publishes `body` (the admin API's body, or the Redis envelope) on `channel:<topic>`.
    /// `Ok(Some(note))` is accepted with a remark (Redis: nobody was subscribed).
    pub async fn publish(
        &mut self,
        topic: u32,
        body: &[u8],
    ) -> Result<Option<&'static str>, String> {
        match self {
            Sink::Http(conn) => match conn.post("/publish", body).await {
                Ok(status) if (200..300).contains(&status) => Ok(None),
                Ok(status) => Err(format!("http_{status}")),
                Err(e) => Err(format!("io_{:?}", e.kind())),
            },
            Sink::Redis { conn, prefix } => {
                let channel = format!("{prefix}channel:{topic}");
                let receivers: Result<i64, _> = redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(body)
                    .query_async(conn)
                    .await;
                match receivers {
                    Ok(0) => Ok(Some("redis_no_subscriber")),
                    Ok(_) => Ok(None),
                    Err(e) => Err(redis_kind(&e)),
                }
            }
            Sink::Broken(kind) => Err(kind.clone()),
        }
    }
}

fn redis_kind(e: &redis::RedisError) -> String {
    format!("redis_{:?}", e.kind())
}
