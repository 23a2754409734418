//! The gateway's configuration: one serde struct with a documented default per
//! field, read from a TOML file, then overridden by `COREGATE_<NAME>` environment
//! variables and CLI flags (clap merges those two; flags win), then validated.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

/// Every setting, with its default.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where clients connect (default `0.0.0.0:8080`).
    pub listen: SocketAddr,
    /// The WebSocket endpoint path (default `/ws`).
    pub path: String,
    /// Shard (executor) count; default one per available core.
    pub shards: Option<usize>,
    /// CPUs to pin shards to, e.g. `0-3,8`; default shard i on CPU i.
    pub cpus: Option<String>,
    /// HS256 shared secret. With neither this nor a public key, the gateway starts
    /// in development mode with a generated secret.
    pub jwt_secret: Option<String>,
    /// PEM public key for RS256 or ES256 tokens.
    pub jwt_public_key: Option<PathBuf>,
    /// Required `iss`, if set.
    pub jwt_issuer: Option<String>,
    /// Required `aud`, if set.
    pub jwt_audience: Option<String>,
    /// Client ping interval; silence for twice this closes 4009 (default 30 s).
    #[serde(with = "duration_text")]
    pub heartbeat_interval: Duration,
    /// Time allowed for in-band `identify` (default 5 s).
    #[serde(with = "duration_text")]
    pub identify_timeout: Duration,
    /// Topics per connection, automatic ones included (default 128).
    pub max_subscriptions: usize,
    /// Largest client message in bytes; larger closes 1009 (default 64 KiB).
    pub max_message_size: usize,
    /// Largest batched outgoing frame in bytes (default 64 KiB).
    pub max_frame_size: usize,
    /// How long events may wait to be joined into fewer frames (default 0: no wait).
    #[serde(with = "duration_text")]
    pub batch_delay: Duration,
    /// `SO_SNDBUF` of accepted sockets, in bytes (default none: the kernel autotunes).
    pub socket_send_buffer: Option<usize>,
    /// Queued output per connection before shedding, in bytes (default 1 MiB).
    pub outbound_budget: usize,
    /// Time over budget before a slow client is closed 4010 (default 5 s).
    #[serde(with = "duration_text")]
    pub slow_client_grace: Duration,
    /// Client events allowed per connection per `rate_limit_window` (default 120).
    pub rate_limit_events: u32,
    /// The window of `rate_limit_events` (default 60 s).
    #[serde(with = "duration_text")]
    pub rate_limit_window: Duration,
    /// Events a connection may send at once (default 20).
    pub rate_limit_burst: u32,
    /// Connections the node holds at most; more get 503 (default 0: no limit).
    pub max_connections: usize,
    /// Connection attempts per second per IP address; more get 429 (default 0: no limit).
    pub ip_connect_rate: u32,
    /// Attempts one address may make at once before the rate applies (default 0: the rate).
    pub ip_connect_burst: u32,
    /// Connections one user may hold; more get 429, or 4011 after `identify` (default 10).
    pub max_connections_per_user: usize,
    /// On SIGTERM, connections are closed 1012 spread over this window (default 10 s).
    #[serde(with = "duration_text")]
    pub drain_window: Duration,
    /// Redis for multi-node pub/sub, e.g. `redis://127.0.0.1:6379`. Without it the
    /// node runs its embedded bus, fed by `/publish` alone (default none).
    pub redis_url: Option<String>,
    /// Prefix of every topic's Redis channel, `<prefix><topic>` (default empty, as
    /// PROTOCOL.md §6 says, so that a backend can `PUBLISH channel:1 …` as it is).
    pub redis_prefix: String,
    /// How long connecting to Redis, or any one Redis reply, may take before the link
    /// counts as down (default 1 s).
    #[serde(with = "duration_text")]
    pub redis_timeout: Duration,
    /// Who decides `subscribe` to `channel:`, `server:` and `presence:` topics beyond the
    /// token's `topics` claim: `claims` (the claim alone, the default) or `redis`
    /// (the claim and `SISMEMBER <members_prefix><topic> <sub>`; needs `redis_url`).
    pub authorizer: AuthorizerKind,
    /// Prefix of the member sets of the `redis` authorizer (default `members:`).
    pub members_prefix: String,
    /// How long a shard reuses a membership verdict (default 5 s): long enough to
    /// absorb reconnect storms, short enough that a removal takes effect promptly.
    #[serde(with = "duration_text")]
    pub authorizer_cache_ttl: Duration,
    /// How long a shard waits for a membership check before refusing the topic with
    /// `not_ready` (default 100 ms; Redis on the same network answers in well under 1 ms).
    #[serde(with = "duration_text")]
    pub authorizer_timeout: Duration,
    /// Admin HTTP address: /health, /ready, /publish, /metrics (default 127.0.0.1:9090).
    pub admin: SocketAddr,
    /// `text` or `json` log lines (default text).
    pub log_format: LogFormat,
}

/// See [`Config::authorizer`].
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthorizerKind {
    Claims,
    Redis,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        let shard = coregate_shards::ShardConfig::default();
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            shards: None,
            cpus: None,
            jwt_secret: None,
            jwt_public_key: None,
            jwt_issuer: None,
            jwt_audience: None,
            // The per-connection defaults are the shards' own, stated once there.
            path: shard.path,
            heartbeat_interval: shard.heartbeat_interval,
            identify_timeout: shard.identify_timeout,
            max_subscriptions: shard.max_subscriptions,
            max_message_size: shard.max_message_size,
            max_frame_size: shard.max_frame_size,
            batch_delay: shard.batch_delay,
            socket_send_buffer: shard.socket_send_buffer,
            outbound_budget: shard.outbound_budget,
            slow_client_grace: shard.slow_client_grace,
            rate_limit_events: shard.rate_limit_events,
            rate_limit_window: shard.rate_limit_window,
            rate_limit_burst: shard.rate_limit_burst,
            max_connections: shard.max_connections,
            ip_connect_rate: shard.ip_connect_rate,
            ip_connect_burst: shard.ip_connect_burst,
            max_connections_per_user: shard.max_connections_per_user,
            drain_window: Duration::from_secs(10),
            redis_url: None,
            redis_prefix: String::new(),
            redis_timeout: Duration::from_secs(1),
            authorizer: AuthorizerKind::Claims,
            members_prefix: "members:".to_owned(),
            authorizer_cache_ttl: Duration::from_secs(5),
            authorizer_timeout: Duration::from_millis(100),
            admin: SocketAddr::from(([127, 0, 0, 1], 9090)),
            log_format: LogFormat::Text,
        }
    }
}

/// A setting that cannot be used; the message names it. Exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{name}`: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub reason: String,
}

fn invalid(name: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        name,
        reason: reason.into(),
    }
}

/// The settings that can come from flags or the environment (`COREGATE_<NAME>`).
#[derive(Args, Clone, Debug, Default)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "COREGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "COREGATE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "COREGATE_PATH")]
    pub path: Option<String>,
    #[arg(long, env = "COREGATE_SHARDS", value_name = "N")]
    pub shards: Option<usize>,
    #[arg(long, env = "COREGATE_CPUS", value_name = "LIST")]
    pub cpus: Option<String>,
    #[arg(long, env = "COREGATE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    #[arg(long, env = "COREGATE_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    #[arg(long, env = "COREGATE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    #[arg(long, env = "COREGATE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    #[arg(long, env = "COREGATE_HEARTBEAT_INTERVAL", value_parser = parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    #[arg(long, env = "COREGATE_IDENTIFY_TIMEOUT", value_parser = parse_duration)]
    pub identify_timeout: Option<Duration>,
    #[arg(long, env = "COREGATE_MAX_SUBSCRIPTIONS")]
    pub max_subscriptions: Option<usize>,
    #[arg(long, env = "COREGATE_MAX_MESSAGE_SIZE", value_name = "BYTES")]
    pub max_message_size: Option<usize>,
    #[arg(long, env = "COREGATE_MAX_FRAME_SIZE", value_name = "BYTES")]
    pub max_frame_size: Option<usize>,
    #[arg(long, env = "COREGATE_BATCH_DELAY", value_parser = parse_duration)]
    pub batch_delay: Option<Duration>,
    #[arg(long, env = "COREGATE_SOCKET_SEND_BUFFER", value_name = "BYTES")]
    pub socket_send_buffer: Option<usize>,
    #[arg(long, env = "COREGATE_OUTBOUND_BUDGET", value_name = "BYTES")]
    pub outbound_budget: Option<usize>,
    #[arg(long, env = "COREGATE_SLOW_CLIENT_GRACE", value_parser = parse_duration)]
    pub slow_client_grace: Option<Duration>,
    #[arg(long, env = "COREGATE_RATE_LIMIT_EVENTS")]
    pub rate_limit_events: Option<u32>,
    #[arg(long, env = "COREGATE_RATE_LIMIT_WINDOW", value_parser = parse_duration)]
    pub rate_limit_window: Option<Duration>,
    #[arg(long, env = "COREGATE_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    #[arg(long, env = "COREGATE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    #[arg(long, env = "COREGATE_IP_CONNECT_RATE", value_name = "PER_SECOND")]
    pub ip_connect_rate: Option<u32>,
    #[arg(long, env = "COREGATE_IP_CONNECT_BURST")]
    pub ip_connect_burst: Option<u32>,
    #[arg(long, env = "COREGATE_MAX_CONNECTIONS_PER_USER")]
    pub max_connections_per_user: Option<usize>,
    #[arg(long, env = "COREGATE_DRAIN_WINDOW", value_parser = parse_duration)]
    pub drain_window: Option<Duration>,
    #[arg(
        long,
        env = "COREGATE_REDIS_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,
    #[arg(long, env = "COREGATE_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    #[arg(long, env = "COREGATE_REDIS_TIMEOUT", value_parser = parse_duration)]
    pub redis_timeout: Option<Duration>,
    #[arg(long, env = "COREGATE_AUTHORIZER")]
    pub authorizer: Option<AuthorizerKind>,
    #[arg(long, env = "COREGATE_MEMBERS_PREFIX")]
    pub members_prefix: Option<String>,
    #[arg(long, env = "COREGATE_AUTHORIZER_CACHE_TTL", value_parser = parse_duration)]
    pub authorizer_cache_ttl: Option<Duration>,
    #[arg(long, env = "COREGATE_AUTHORIZER_TIMEOUT", value_parser = parse_duration)]
    pub authorizer_timeout: Option<Duration>,
    #[arg(long, env = "COREGATE_ADMIN", value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    #[arg(long, env = "COREGATE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 30s: {e}"))
}

impl ConfigArgs {
    /// The file (if any), then these flags and environment variables over it, validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| invalid("config", format!("{}: {e}", path.display())))?;
                toml::from_str(&text)
                    .map_err(|e| invalid("config", format!("{}: {e}", path.display())))?
            }
            None => Config::default(),
        };
        self.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    fn apply(&self, c: &mut Config) {
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = &self.$field { c.$field = v.clone(); })* };
        }
        macro_rules! set_opt {
            ($($field:ident),*) => { $(if let Some(v) = &self.$field { c.$field = Some(v.clone()); })* };
        }
        set!(
            listen,
            path,
            heartbeat_interval,
            identify_timeout,
            max_subscriptions
        );
        set!(
            max_message_size,
            max_frame_size,
            batch_delay,
            outbound_budget,
            slow_client_grace,
            admin,
            log_format
        );
        set!(
            rate_limit_events,
            rate_limit_window,
            rate_limit_burst,
            drain_window
        );
        set!(
            max_connections,
            ip_connect_rate,
            ip_connect_burst,
            max_connections_per_user
        );
        set!(
            redis_prefix,
            redis_timeout,
            authorizer,
            members_prefix,
            authorizer_cache_ttl,
            authorizer_timeout
        );
        set_opt!(
            shards,
            cpus,
            jwt_secret,
            jwt_public_key,
            jwt_issuer,
            jwt_audience,
            redis_url,
            socket_send_buffer
        );
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.path.starts_with('/') {
            return Err(invalid("path", "must start with `/`"));
        }
        if let Some(n) = self.shards {
            if n == 0 || n > coregate_shards::MAX_SHARDS {
                return Err(invalid(
                    "shards",
                    format!("must be between 1 and {}", coregate_shards::MAX_SHARDS),
                ));
            }
        }
        self.cpu_list()?;
        if self.jwt_secret.is_some() && self.jwt_public_key.is_some() {
            return Err(invalid(
                "jwt_secret",
                "give a secret or a public key, not both",
            ));
        }
        if self.jwt_secret.as_deref().is_some_and(|s| s.len() < 16) {
            return Err(invalid("jwt_secret", "must be at least 16 bytes"));
        }
        let positive = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("identify_timeout", self.identify_timeout),
            ("slow_client_grace", self.slow_client_grace),
            ("rate_limit_window", self.rate_limit_window),
            ("redis_timeout", self.redis_timeout),
            ("authorizer_timeout", self.authorizer_timeout),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(invalid(name, "must be more than zero"));
            }
        }
        if let Some(url) = &self.redis_url {
            // The reason names the problem, never the URL (it may hold a password).
            redis::Client::open(url.as_str())
                .map_err(|e| invalid("redis_url", format!("not a Redis URL ({:?})", e.kind())))?;
        }
        if self.authorizer == AuthorizerKind::Redis && self.redis_url.is_none() {
            return Err(invalid(
                "authorizer",
                "`redis` needs redis_url (--redis-url)",
            ));
        }
        if self.max_subscriptions < 2 {
            return Err(invalid(
                "max_subscriptions",
                "must be at least 2 (the automatic topics)",
            ));
        }
        if self.max_message_size < 256 {
            return Err(invalid("max_message_size", "must be at least 256 bytes"));
        }
        if self.batch_delay > Duration::from_secs(1) {
            return Err(invalid("batch_delay", "must be at most 1s"));
        }
        if self.max_frame_size < 1024 {
            return Err(invalid("max_frame_size", "must be at least 1024 bytes"));
        }
        if self.outbound_budget < self.max_frame_size {
            return Err(invalid(
                "outbound_budget",
                "must be at least max_frame_size",
            ));
        }
        Ok(())
    }

    /// `--cpus` as a list: `0-3,8` → [0, 1, 2, 3, 8].
    pub fn cpu_list(&self) -> Result<Option<Vec<usize>>, ConfigError> {
        let Some(text) = &self.cpus else {
            return Ok(None);
        };
        let bad = || invalid("cpus", format!("`{text}` is not a CPU list like 0-3,8"));
        let mut cpus = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b): (usize, usize) =
                        (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                    if a > b {
                        return Err(bad());
                    }
                    cpus.extend(a..=b);
                }
                None => cpus.push(part.parse().map_err(|_| bad())?),
            }
        }
        if cpus.is_empty() {
            return Err(bad());
        }
        Ok(Some(cpus))
    }

    /// The shard count in force: configured, or one per available core.
    pub fn shard_count(&self) -> usize {
        self.shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    pub fn shard_config(&self) -> coregate_shards::ShardConfig {
        coregate_shards::ShardConfig {
            path: self.path.clone(),
            heartbeat_interval: self.heartbeat_interval,
            identify_timeout: self.identify_timeout,
            max_subscriptions: self.max_subscriptions,
            max_message_size: self.max_message_size,
            max_frame_size: self.max_frame_size,
            batch_delay: self.batch_delay,
            socket_send_buffer: self.socket_send_buffer,
            outbound_budget: self.outbound_budget,
            slow_client_grace: self.slow_client_grace,
            rate_limit_events: self.rate_limit_events,
            rate_limit_window: self.rate_limit_window,
            rate_limit_burst: self.rate_limit_burst,
            max_connections: self.max_connections,
            ip_connect_rate: self.ip_connect_rate,
            ip_connect_burst: self.ip_connect_burst,
            max_connections_per_user: self.max_connections_per_user,
            ..coregate_shards::ShardConfig::default()
        }
    }
}

/// Durations written as text (`30s`, `1m 30s`) in the TOML file.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file() {
        let dir = std::env::temp_dir().join(format!("coregate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "path = \"/file\"\nheartbeat_interval = \"10s\"\nmax_subscriptions = 50\n",
        )
        .expect("write");
        let args = ConfigArgs {
            config: Some(file),
            max_subscriptions: Some(7),
            ..ConfigArgs::default()
        };
        let config = args.load().expect("valid");
        assert_eq!(config.path, "/file");
        assert_eq!(config.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(config.max_subscriptions, 7);
    }

    #[test]
    fn bad_settings_name_themselves() {
        let args = ConfigArgs {
            shards: Some(0),
            ..ConfigArgs::default()
        };
        assert_eq!(args.load().expect_err("invalid").name, "shards");
        let config = Config {
            cpus: Some("3-1".into()),
            ..Config::default()
        };
        assert_eq!(config.validate().expect_err("invalid").name, "cpus");
        let config = Config {
            cpus: Some("0-2, 5".into()),
            ..Config::default()
        };
        assert_eq!(config.cpu_list().expect("valid"), Some(vec![0, 1, 2, 5]));
    }

    #[test]
    fn redis_settings() {
        let config = Config::default();
        assert_eq!(config.redis_prefix, "", "PROTOCOL.md §6: default empty");
        assert_eq!(config.authorizer, AuthorizerKind::Claims);
        let args = ConfigArgs {
            authorizer: Some(AuthorizerKind::Redis),
            ..ConfigArgs::default()
        };
        assert_eq!(args.load().expect_err("no redis").name, "authorizer");
        let args = ConfigArgs {
            redis_url: Some("not a url".into()),
            ..ConfigArgs::default()
        };
        assert_eq!(args.load().expect_err("bad url").name, "redis_url");
        let config: Config = toml::from_str(
            "redis_url = \"redis://127.0.0.1:1\"\nredis_prefix = \"cg:\"\nauthorizer = \"redis\"\nauthorizer_cache_ttl = \"2s\"\n",
        )
        .expect("valid file");
        config.validate().expect("valid");
        assert_eq!(config.redis_prefix, "cg:");
        assert_eq!(config.authorizer_cache_ttl, Duration::from_secs(2));
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let err = toml::from_str::<Config>("lissten = \"x\"").expect_err("unknown key");
        assert!(err.to_string().contains("lissten"));
    }
}
