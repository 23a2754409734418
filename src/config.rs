//! The gateway's configuration: every setting declared once, with its doc comment and
//! default, and everything else derived from that declaration.
//!
//! The shard settings are declared in `coregate_shards::shard_settings!`, the node's
//! own below, in `define_config!`'s input. From each entry `name: Type = default;`
//! come: the field `name` of [`Config`] (serde, `#[serde(default)]`, unknown keys
//! refused), which is also the TOML key; the flag `--name-with-dashes` and the
//! environment variable `COREGATE_NAME` of [`ConfigArgs`] (clap), with the doc comment
//! and the default as help; `apply` (flags and environment over the file); and, for
//! shard settings, the field of [`ShardConfig`] that [`Config::shard_config`] fills.
//!
//! Precedence: flags, then `COREGATE_*` variables (clap merges those two), then the
//! file, then the default. Then [`Config::validate`] (which calls
//! [`ShardConfig::validate`] for the shards' part) names the first bad setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use clap::Args;
use coregate_shards::config::ShardConfigError;
use coregate_shards::ShardConfig;
use serde::Deserialize;

pub mod settings;

#[cfg(test)]
use settings::SettingInfo;
use settings::{env_name, Setting};

/// Generates [`Config`], its `Default`, [`ConfigArgs`], `apply`, `shard_config` and
/// `SETTINGS` (for tests) from the declarations: groups of node settings (each under
/// the heading `--help` shows them under), then the shard settings and the shards'
/// fixed fields as `coregate_shards::shard_settings!` hands them over. The fixed ones
/// get no key, variable or flag: `shard_config` leaves them at the shards' defaults.
macro_rules! define_config {
    (
        node {
            $( $heading:literal {
                $( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr ; )*
            } )*
        }
        shard {
            $( $(#[doc = $sdoc:literal])* $sname:ident : $sty:ty = $sdefault:expr ; )*
        }
        fixed { $($fixed:tt)* }
    ) => {
        /// Every setting, with its default. The field names are the TOML keys.
        #[derive(Clone, Debug, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Config {
            $($(
                $(#[doc = $doc])*
                #[doc = ""]
                #[doc = concat!("Default: `", stringify!($default), "`.")]
                #[serde(deserialize_with = "Setting::deserialize_setting")]
                pub $name: $ty,
            )*)*
            $(
                $(#[doc = $sdoc])*
                #[doc = ""]
                #[doc = concat!("Default: `", stringify!($sdefault), "` (a shard setting).")]
                #[serde(deserialize_with = "Setting::deserialize_setting")]
                pub $sname: $sty,
            )*
        }

        impl Default for Config {
            fn default() -> Self {
                // The shard settings' defaults are the shards' own.
                let shard = ShardConfig::default();
                Config {
                    $($( $name: $default, )*)*
                    $( $sname: shard.$sname, )*
                }
            }
        }

        /// The settings as flags and `COREGATE_<NAME>` environment variables; each is
        /// documented on [`Config`]'s field of the same name.
        #[derive(Args, Clone, Debug, Default)]
        pub struct ConfigArgs {
            /// TOML configuration file; its keys are the flags' names with `_` for `-`.
            #[arg(long, env = "COREGATE_CONFIG", hide_env_values = true, value_name = "FILE")]
            pub config: Option<PathBuf>,
            /// The settings (and `config`) whose value came from a `COREGATE_*`
            /// variable, filled by [`ConfigArgs::note_sources`]: an error about one of
            /// them names the variable the operator set, not the flag they did not use.
            #[arg(skip)]
            pub from_env: Vec<&'static str>,
            $($(
                #[arg(
                    long,
                    env = env_name!($name),
                    // The environment may hold secrets (a token secret, a Redis URL
                    // with a password): `--help` never prints its values.
                    hide_env_values = true,
                    value_name = <$ty as Setting>::VALUE_NAME,
                    value_parser = <$ty as Setting>::value_parser(),
                    help_heading = $heading,
                    help = settings::short_help(&[$($doc),*], &Setting::show(&defaults().$name)),
                    long_help = settings::long_help(&[$($doc),*], &Setting::show(&defaults().$name)),
                )]
                pub $name: Option<<$ty as Setting>::Arg>,
            )*)*
            $(
                #[arg(
                    long,
                    env = env_name!($sname),
                    hide_env_values = true,
                    value_name = <$sty as Setting>::VALUE_NAME,
                    value_parser = <$sty as Setting>::value_parser(),
                    help_heading = SHARD_HEADING,
                    help = settings::short_help(&[$($sdoc),*], &Setting::show(&defaults().$sname)),
                    long_help = settings::long_help(&[$($sdoc),*], &Setting::show(&defaults().$sname)),
                )]
                pub $sname: Option<<$sty as Setting>::Arg>,
            )*
        }

        impl ConfigArgs {
            /// Flags and environment variables over `c`.
            fn apply(&self, c: &mut Config) {
                $($(
                    if let Some(v) = &self.$name {
                        c.$name = Setting::from_arg(v.clone());
                    }
                )*)*
                $(
                    if let Some(v) = &self.$sname {
                        c.$sname = Setting::from_arg(v.clone());
                    }
                )*
            }
        }

        impl Config {
            /// The shards' part: every shard setting, and the shards' fixed fields at
            /// their defaults.
            pub fn shard_config(&self) -> ShardConfig {
                ShardConfig {
                    $( $sname: self.$sname.clone(), )*
                    ..ShardConfig::default()
                }
            }
        }

        /// Every setting's name (its file key), in `--help`'s order.
        pub const SETTING_NAMES: &[&str] = &[
            $($( stringify!($name), )*)*
            $( stringify!($sname), )*
        ];

        /// Every setting, in `--help`'s order.
        #[cfg(test)]
        pub const SETTINGS: &[SettingInfo] = &[
            $($(
                SettingInfo {
                    name: stringify!($name),
                    env: env_name!($name),
                    heading: $heading,
                    doc: &[$($doc),*],
                    show_default: |c| Setting::show(&c.$name),
                },
            )*)*
            $(
                SettingInfo {
                    name: stringify!($sname),
                    env: env_name!($sname),
                    heading: SHARD_HEADING,
                    doc: &[$($sdoc),*],
                    show_default: |c| Setting::show(&c.$sname),
                },
            )*
        ];
    };
}

/// The shortest HS256 secret and admin token accepted, in bytes.
const MIN_SECRET_LEN: usize = 16;

/// The `--help` section of the shard settings.
const SHARD_HEADING: &str = "Connections (every shard)";

/// The defaults `--help` shows, built once.
fn defaults() -> &'static Config {
    static DEFAULTS: LazyLock<Config> = LazyLock::new(Config::default);
    &DEFAULTS
}

coregate_shards::shard_settings!(define_config! {
    node {
        "Node" {
            /// Where clients connect; every shard binds it with `SO_REUSEPORT`.
            listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 8080));

            /// Shards (executors, one thread each); none: one per available core.
            ///
            /// Each shard owns its connections and topic table, so shards scale with
            /// cores; fewer leave cores to other processes.
            shards: Option<usize> = None;

            /// CPUs to pin shards to, e.g. `0-3,8`; none: shard i on CPU i.
            cpus: Option<String> = None;

            /// Admin HTTP address: `/health`, `/ready`, `POST /publish`, `/metrics`.
            ///
            /// Loopback by default: `/publish` reaches every subscriber, so expose it
            /// only where the backends are, on a private interface.
            admin: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9090));

            /// Bearer token that `POST /publish` (and any other route that changes
            /// something) requires; none: not required.
            ///
            /// At least 16 bytes of printable ASCII. Requests without
            /// `Authorization: Bearer <token>` get 401. A complement to a private
            /// admin interface, not a replacement; prefer the environment or the file
            /// to a flag, which shows in the process list.
            admin_token: Option<String> = None;

            /// On SIGTERM, connections are closed 1012 spread over this window.
            ///
            /// Spreading the closes spreads the clients' reconnections over the other
            /// nodes, instead of sending them all at once.
            drain_window: Duration = Duration::from_secs(10);

            /// `text` or `json` log lines; the level comes from `RUST_LOG`.
            log_format: LogFormat = LogFormat::Text;
        }
        "Tokens" {
            /// HS256 shared secret, at least 16 bytes.
            ///
            /// With neither this nor `jwt_public_key`, the gateway starts in
            /// development mode with a secret generated for the run. A flag shows in
            /// the process list: prefer the environment or the file.
            jwt_secret: Option<String> = None;

            /// File holding the HS256 shared secret (a trailing newline is ignored).
            ///
            /// The same secret as `jwt_secret`, kept out of the process list and the
            /// environment. `coregate token --jwt-secret-file FILE` signs with it.
            jwt_secret_file: Option<PathBuf> = None;

            /// PEM public key file for RS256 or ES256 tokens.
            jwt_public_key: Option<PathBuf> = None;

            /// Required `iss` of tokens; none: not checked.
            jwt_issuer: Option<String> = None;

            /// Required `aud` of tokens; none: not checked.
            ///
            /// A token's `aud` may be one string or an array: one element must match.
            jwt_audience: Option<String> = None;

            /// How far in the future a token's `iat` may be; beyond it the token is refused.
            ///
            /// Covers clock skew between the token issuer and this node. `exp` and
            /// `nbf` get no leeway: connections are closed at `exp` exactly.
            jwt_iat_leeway: Duration = Duration::from_secs(60);
        }
        "Redis and authorization" {
            /// Redis for multi-node pub/sub, e.g. `redis://127.0.0.1:6379`.
            ///
            /// Without it the node runs its embedded bus, fed by `/publish` alone.
            redis_url: Option<String> = None;

            /// Prefix of every topic's Redis channel, `<prefix><topic>`.
            ///
            /// Empty by default, as PROTOCOL.md §6 says, so that a backend can
            /// `PUBLISH channel:1 …` as it is.
            redis_prefix: String = String::new();

            /// How long connecting to Redis, or any one reply, may take before the link counts as down.
            redis_timeout: Duration = Duration::from_secs(1);

            /// Who decides `subscribe` to `channel:`, `server:` and `presence:` topics.
            ///
            /// `claims`: the token's `topics` claim alone. `redis`:
            /// `SISMEMBER <members_prefix><topic> <sub>`; needs `redis_url`. `proxy`:
            /// the backend's answer at `proxy_subscribe_url`.
            authorizer: AuthorizerKind = AuthorizerKind::Claims;

            /// Prefix of the member sets of the `redis` authorizer.
            members_prefix: String = "members:".to_owned();

            /// How long a shard reuses a membership verdict.
            ///
            /// Long enough to absorb reconnect storms, short enough that a removal
            /// takes effect promptly.
            authorizer_cache_ttl: Duration = Duration::from_secs(5);

            /// How long a shard waits for a membership check before refusing the topic `not_ready`.
            ///
            /// Redis on the same network answers in well under 1 ms.
            authorizer_timeout: Duration = Duration::from_millis(100);
        }
        "Backend calls (HTTP)" {
            /// URL the gateway POSTs clients' `rpc` calls to; none: `rpc` answers `unavailable`.
            ///
            /// The body is `{user_id, session_id, method, d, meta}`; the answer `{d}`
            /// becomes `rpc_result`, `{error: {code, message}}` an `error` (docs/protocol.md §8).
            proxy_rpc_url: Option<String> = None;

            /// The `rpc` methods clients may call, comma-separated; none: any method.
            ///
            /// A method not listed is refused `forbidden` by the gateway, without a call.
            proxy_rpc_methods: Option<String> = None;

            /// URL the gateway POSTs every new connection to, to decide who it is; none: tokens alone.
            ///
            /// With a token, once it is verified; without one (even with a JWT key
            /// configured), the backend alone decides from `proxy_connect_headers` and
            /// the query. The answer's `data` is handed to the client in `ready`.
            proxy_connect_url: Option<String> = None;

            /// Request headers the connect call carries, comma-separated.
            ///
            /// `Cookie` is how an app whose session lives in a cookie is recognized;
            /// add what else the backend needs (`x-forwarded-for`, `user-agent`).
            proxy_connect_headers: String = "cookie".to_owned();

            /// URL the `proxy` authorizer POSTs `{user_id, topic}` to for gated topics.
            ///
            /// The answer `{allow, reason?}` is cached per shard for
            /// `authorizer_cache_ttl`; a backend that cannot answer within
            /// `authorizer_timeout` gets the topic refused `not_ready`.
            proxy_subscribe_url: Option<String> = None;

            /// How long a backend call may take before it is answered `unavailable`.
            ///
            /// The call holds nothing of a shard meanwhile; a client waits this long
            /// at most for an answer.
            proxy_timeout: Duration = Duration::from_secs(5);

            /// Secret sent with every backend call, in `proxy_secret_header`.
            ///
            /// Lets the backend check that a call comes from this gateway. Prefer the
            /// environment or the file to a flag, which shows in the process list.
            proxy_secret: Option<String> = None;

            /// Backend calls made at once, all kinds together (at least 1); more wait in a bounded queue.
            ///
            /// Each call in flight may hold a connection to the backend (the pool
            /// keeps up to 64 idle ones), with hyper's buffers: in a connect storm
            /// this bounds the gateway's memory as well as the backend's load
            /// (BENCHMARKS.md: 1,024 added ~65 MiB in a 5,000-connection storm, 256
            /// ~15 MiB, and connected no slower). The calls a second it allows are
            /// this over the backend's latency: 25,000 at 10 ms. Past the queue
            /// (4,096 per kind) calls are answered `unavailable`, `not_ready` or 4000.
            proxy_max_in_flight: usize = 256;

            /// The header backend calls carry `proxy_secret` in.
            proxy_secret_header: String = "x-coregate-secret".to_owned();

            /// Whether the connect call carries the client's token (`token` in its body).
            ///
            /// Off by default: the gateway has verified the token and says whose it is
            /// (`user_id`); forward it only to a backend that needs it for calls of its own.
            proxy_forward_token: bool = false;

            /// Whether `/ready` reports 503 while the backend cannot be reached.
            ///
            /// On, the gateway probes the backend's URLs every second (a `GET`; any HTTP
            /// answer counts as reachable) besides reading every call's outcome. Off by
            /// default: a node without its backend still delivers publications.
            proxy_in_ready: bool = false;
        }
        "Chat" {
            /// Whether this node tracks presence (`presence_update`, `presence_query`).
            ///
            /// Off, connections announce nothing and cost Redis nothing for presence
            /// (two `EVAL`s per connection with Redis), and `presence_query` is answered
            /// `error {code: unavailable}`: for deployments that show no presence.
            presence: bool = true;

            /// How long a typing indicator stays on without a new `typing_start`.
            ///
            /// Then the gateway announces `typing_stop` itself (once, on every node).
            /// Clients repeat `typing_start` every few seconds while typing; 10 s
            /// covers a pause without leaving a stale indicator long.
            typing_ttl: Duration = Duration::from_secs(10);

            /// How long after a user's last connection closes `offline` is announced.
            ///
            /// A connection of the user within it (a page reload, a drain's reconnect)
            /// announces nothing, so that presence does not flap; 5 s covers a reload.
            presence_grace: Duration = Duration::from_secs(5);

            /// How long a node's lease on its users' presence lasts without a refresh (Redis only).
            ///
            /// Each node refreshes its lease every second; when a node dies, a survivor
            /// takes its users offline once the lease ran out (plus the grace).
            presence_ttl: Duration = Duration::from_secs(30);
        }
        "Voice" {
            /// Whether this node runs the SFU for voice channels (`voice_join` …).
            ///
            /// Off, voice ops are answered `voice_error {code: unavailable}` and no UDP
            /// port is opened.
            voice: bool = true;

            /// The UDP address the SFU receives media on; none: the `--listen` host, a free port.
            ///
            /// One socket carries every participant (ICE-lite, no STUN or TURN server
            /// needed). Open it in the firewall to clients, and to the other nodes'
            /// clients when rooms span nodes.
            voice_udp: Option<SocketAddr> = None;

            /// The UDP address clients are told to send media to; none: the socket's own.
            ///
            /// For a node behind NAT or a load balancer: the public address that reaches
            /// `voice_udp`. For a socket bound to `0.0.0.0` the node announces the
            /// address of its default route (logged); set this in production.
            voice_announce: Option<SocketAddr> = None;

            /// Participants one voice channel holds at most; more are refused `room_full`.
            ///
            /// Every participant receives every other's audio: the SFU's work per room
            /// grows with the square of its size.
            voice_room_size: usize = 25;
        }
    }
});

/// See [`Config::authorizer`].
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthorizerKind {
    Claims,
    Redis,
    Proxy,
}

/// See [`Config::log_format`].
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A setting that cannot be used; the message names it (and the environment variable
/// it came from, if it did). Exit code 2.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub name: &'static str,
    pub reason: String,
    /// Whether the value came from the setting's `COREGATE_*` variable.
    pub from_env: bool,
}

impl ConfigError {
    pub fn new(name: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            name,
            reason: reason.into(),
            from_env: false,
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid setting `{}`", self.name)?;
        if self.from_env {
            write!(
                f,
                " (from the environment variable {}{})",
                settings::ENV_PREFIX,
                self.name.to_ascii_uppercase()
            )?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl From<ShardConfigError> for ConfigError {
    fn from(e: ShardConfigError) -> ConfigError {
        ConfigError::new(e.name, e.reason)
    }
}

fn invalid(name: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(name, reason)
}

impl ConfigArgs {
    /// The file (if any), then these flags and environment variables over it, validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => {
                let read = std::fs::read_to_string(path)
                    .map_err(|e| invalid("config", format!("{}: {e}", path.display())));
                let text = read.map_err(|e| self.attribute(e))?;
                toml::from_str(&text).map_err(|e| {
                    self.attribute(invalid("config", format!("{}: {e}", path.display())))
                })?
            }
            None => Config::default(),
        };
        self.apply(&mut config);
        config.validate().map_err(|e| self.attribute(e))?;
        Ok(config)
    }

    /// Records which settings `matches` (those these arguments were parsed from) took
    /// from the environment.
    pub fn note_sources(&mut self, matches: &clap::ArgMatches) {
        let from_env = |name: &&'static str| {
            matches.value_source(name) == Some(clap::parser::ValueSource::EnvVariable)
        };
        self.from_env = std::iter::once("config")
            .chain(SETTING_NAMES.iter().copied())
            .filter(from_env)
            .collect();
    }

    /// `e`, saying so when its setting's value came from the environment.
    pub fn attribute(&self, mut e: ConfigError) -> ConfigError {
        e.from_env = self.from_env.contains(&e.name);
        e
    }
}

impl Config {
    /// The shards' settings (validated by the shards' own rules), then the node's.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.shard_config().validate()?;
        if let Some(n) = self.shards {
            if n == 0 || n > coregate_shards::MAX_SHARDS {
                return Err(invalid(
                    "shards",
                    format!("must be between 1 and {}", coregate_shards::MAX_SHARDS),
                ));
            }
        }
        self.cpu_list()?;
        if self.voice_room_size < 2 {
            return Err(invalid("voice_room_size", "must be at least 2"));
        }

        let longest = crate::ingest::history::MAX_HISTORY_TTL;
        if self.history.longest_ttl().is_some_and(|ttl| ttl > longest) {
            return Err(invalid(
                "history",
                format!(
                    "a history TTL may be at most {} (a stream's position is kept {} after it)",
                    humantime::format_duration(longest),
                    humantime::format_duration(crate::ingest::history::META_TTL),
                ),
            ));
        }
        for (name, url) in [
            ("proxy_rpc_url", &self.proxy_rpc_url),
            ("proxy_connect_url", &self.proxy_connect_url),
            ("proxy_subscribe_url", &self.proxy_subscribe_url),
        ] {
            if let Some(url) = url {
                crate::proxy::parse_url(url).map_err(|e| invalid(name, e))?;
            }
        }
        if self.proxy_max_in_flight == 0 {
            return Err(invalid("proxy_max_in_flight", "must be at least 1"));
        }
        if hyper::header::HeaderName::from_bytes(self.proxy_secret_header.as_bytes()).is_err() {
            return Err(invalid("proxy_secret_header", "not an HTTP header name"));
        }
        let keys = [
            ("jwt_secret", self.jwt_secret.is_some()),
            ("jwt_secret_file", self.jwt_secret_file.is_some()),
            ("jwt_public_key", self.jwt_public_key.is_some()),
        ];
        let given: Vec<&'static str> = keys
            .iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| *name)
            .collect();
        if let [first, second, ..] = given[..] {
            return Err(invalid(
                second,
                format!("give one of a secret, a secret file or a public key, not `{first}` too"),
            ));
        }
        if self
            .jwt_secret
            .as_deref()
            .is_some_and(|s| s.len() < MIN_SECRET_LEN)
        {
            return Err(invalid("jwt_secret", "must be at least 16 bytes"));
        }
        if let Some(token) = &self.admin_token {
            if token.len() < MIN_SECRET_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    "admin_token",
                    "must be at least 16 bytes of printable ASCII without spaces",
                ));
            }
        }
        let positive = [
            ("redis_timeout", self.redis_timeout),
            ("authorizer_timeout", self.authorizer_timeout),
            ("typing_ttl", self.typing_ttl),
            ("presence_ttl", self.presence_ttl),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(invalid(name, "must be more than zero"));
            }
        }
        if self.presence_ttl < Duration::from_secs(2) {
            return Err(invalid(
                "presence_ttl",
                "must be at least 2s: each node refreshes its lease every second",
            ));
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
        if self.authorizer == AuthorizerKind::Proxy && self.proxy_subscribe_url.is_none() {
            return Err(invalid(
                "authorizer",
                "`proxy` needs proxy_subscribe_url (--proxy-subscribe-url)",
            ));
        }
        Ok(())
    }

    /// The HS256 secret: `jwt_secret`, or the contents of `jwt_secret_file` (without
    /// its trailing newline); none when tokens are checked with a public key, or in
    /// development mode.
    pub fn hs256_secret(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        if let Some(secret) = &self.jwt_secret {
            return Ok(Some(secret.as_bytes().to_vec()));
        }
        let Some(path) = &self.jwt_secret_file else {
            return Ok(None);
        };
        let mut secret = std::fs::read(path)
            .map_err(|e| invalid("jwt_secret_file", format!("{}: {e}", path.display())))?;
        while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            secret.pop();
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(invalid(
                "jwt_secret_file",
                format!("{}: the secret must be at least 16 bytes", path.display()),
            ));
        }
        Ok(Some(secret))
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
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

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
    fn history_and_backend_settings_are_checked() {
        let config: Config = toml::from_str(
            "history = \"channel:=200/24h, server:=50/1h\"\nproxy_max_in_flight = 64\n",
        )
        .expect("valid file");
        config.validate().expect("valid");
        let topic = coregate_protocol::Topic::parse("server:1").expect("topic");
        assert_eq!(config.history.retention(&topic).map(|r| r.size), Some(50));
        assert_eq!(config.proxy_max_in_flight, 64);
        let refused = |file: &str| {
            let config: Config = toml::from_str(file).expect("parses");
            config.validate().expect_err("refused").name
        };
        // A position (kept 90 days) must outlive the publications it counts.
        assert_eq!(refused("history = \"channel:=10/31days\""), "history");
        assert_eq!(refused("proxy_max_in_flight = 0"), "proxy_max_in_flight");
        assert_eq!(
            refused("proxy_secret_header = \"not a header\""),
            "proxy_secret_header"
        );
        assert!(toml::from_str::<Config>("history = \"channel:\"").is_err());
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let err = toml::from_str::<Config>("lissten = \"x\"").expect_err("unknown key");
        assert!(err.to_string().contains("lissten"));
    }

    /// `coregate serve` as far as settings go.
    #[derive(Parser, Debug)]
    struct Serve {
        #[command(flatten)]
        args: ConfigArgs,
    }

    fn setting(name: &str) -> &'static SettingInfo {
        SETTINGS
            .iter()
            .find(|s| s.name == name)
            .expect("a declared setting")
    }

    #[test]
    fn environment_variables_are_derived_from_the_names() {
        assert_eq!(
            setting("heartbeat_interval").env,
            "COREGATE_HEARTBEAT_INTERVAL"
        );
        let command = Serve::command();
        for s in SETTINGS {
            assert_eq!(s.env, format!("COREGATE_{}", s.name.to_uppercase()));
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == s.name)
                .expect("a flag per setting");
            assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new(s.env)));
        }
    }

    #[test]
    fn help_shows_every_setting_with_its_doc_and_default() {
        let mut command = Serve::command();
        let long = command.render_long_help().to_string();
        let short = command.render_help().to_string();
        let defaults = Config::default();
        for s in SETTINGS {
            let default = format!("[default: {}]", (s.show_default)(&defaults));
            let first = settings::paragraphs(s.doc).remove(0);
            for help in [&long, &short] {
                let at = help
                    .find(&format!("{} <", s.flag()))
                    .unwrap_or_else(|| panic!("{} in --help", s.flag()));
                let entry = &help[at..];
                let entry = &entry[..entry.find(s.env).expect("env after the flag")];
                assert!(entry.contains(&first), "{}: doc in {entry}", s.name);
                assert!(entry.contains(&default), "{}: {default} in {entry}", s.name);
            }
        }
        assert!(short.contains("--heartbeat-interval <DURATION>"));
        assert!(short.contains("[default: 30s]"));
        assert!(long.contains("[default: 1m]"), "rate_limit_window");
    }

    #[test]
    fn file_keys_are_the_flag_names_with_underscores() {
        let command = Serve::command();
        let mut flags: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|long| *long != "config")
            .map(|long| long.replace('-', "_"))
            .collect();
        for arg in command.get_arguments().filter(|a| a.get_long().is_some()) {
            let id = arg.get_id().as_str();
            assert_eq!(
                arg.get_long().map(|l| l.replace('-', "_")).as_deref(),
                Some(id)
            );
        }
        // serde lists the keys it accepts when it refuses one.
        let refusal = toml::from_str::<Config>("not_a_setting = 1")
            .expect_err("unknown key")
            .to_string();
        let expected = &refusal[refusal.find("expected one of").expect("key list")..];
        let mut keys: Vec<String> = expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        flags.sort();
        keys.sort();
        assert_eq!(flags, keys);
        let mut names: Vec<String> = SETTINGS.iter().map(|s| s.name.to_owned()).collect();
        names.sort();
        assert_eq!(names, keys);
    }

    #[test]
    fn flags_then_environment_then_file_then_default() {
        let dir = std::env::temp_dir().join(format!("coregate-precedence-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "max_subscriptions = 50\nrate_limit_burst = 3\nheartbeat_interval = \"10s\"\n",
        )
        .expect("write");
        // The only test that sets these variables (and the only other test that sets one,
        // COREGATE_SHARDS, sets no setting read here).
        std::env::set_var("COREGATE_MAX_SUBSCRIPTIONS", "9");
        std::env::set_var("COREGATE_RATE_LIMIT_BURST", "7");
        let parsed = Serve::try_parse_from([
            "coregate".as_ref(),
            "--config".as_ref(),
            file.as_os_str(),
            "--max-subscriptions".as_ref(),
            "11".as_ref(),
        ]);
        std::env::remove_var("COREGATE_MAX_SUBSCRIPTIONS");
        std::env::remove_var("COREGATE_RATE_LIMIT_BURST");
        let config = parsed.expect("valid flags").args.load().expect("valid");
        assert_eq!(config.max_subscriptions, 11, "flag over environment");
        assert_eq!(config.rate_limit_burst, 7, "environment over file");
        assert_eq!(config.heartbeat_interval, Duration::from_secs(10), "file");
        assert_eq!(config.identify_timeout, Duration::from_secs(5), "default");
    }

    #[test]
    fn an_error_names_the_variable_a_value_came_from() {
        let mut args = ConfigArgs {
            shards: Some(0),
            ..ConfigArgs::default()
        };
        let e = args.load().expect_err("invalid");
        assert_eq!(
            e.to_string(),
            "invalid setting `shards`: must be between 1 and 128"
        );
        args.from_env = vec!["shards"];
        let e = args.load().expect_err("invalid");
        assert!(e.from_env);
        assert_eq!(
            e.to_string(),
            "invalid setting `shards` (from the environment variable COREGATE_SHARDS): \
             must be between 1 and 128"
        );
        // Which values came from the environment, as clap saw it. (COREGATE_SHARDS is
        // read by no other test.)
        std::env::set_var("COREGATE_SHARDS", "3");
        let matches =
            Serve::command().try_get_matches_from(["coregate", "--max-subscriptions", "9"]);
        std::env::remove_var("COREGATE_SHARDS");
        let mut args = ConfigArgs::default();
        args.note_sources(&matches.expect("valid"));
        assert_eq!(args.from_env, vec!["shards"]);
    }

    #[test]
    fn one_way_to_check_tokens_and_the_secret_file() {
        let dir = std::env::temp_dir().join(format!("coregate-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("secret");
        std::fs::write(&file, "0123456789abcdef-from-a-file\n").expect("write");
        let config = Config {
            jwt_secret_file: Some(file.clone()),
            ..Config::default()
        };
        config.validate().expect("valid");
        assert_eq!(
            config.hs256_secret().expect("readable"),
            Some(b"0123456789abcdef-from-a-file".to_vec())
        );
        let both = Config {
            jwt_secret: Some("0123456789abcdef".into()),
            ..config.clone()
        };
        assert_eq!(both.validate().expect_err("two").name, "jwt_secret_file");
        let short = dir.join("short");
        std::fs::write(&short, "tiny\n").expect("write");
        let config = Config {
            jwt_secret_file: Some(short),
            ..Config::default()
        };
        assert_eq!(
            config.hs256_secret().expect_err("short").name,
            "jwt_secret_file"
        );
        let config = Config {
            jwt_secret_file: Some(dir.join("missing")),
            ..Config::default()
        };
        let e = config.hs256_secret().expect_err("missing");
        assert!(e.reason.contains("missing"), "names the file: {e}");
        assert_eq!(Config::default().hs256_secret().expect("none"), None);
    }

    #[test]
    fn admin_token_must_be_long_and_printable() {
        for bad in ["short", "sixteen bytes but spaced", "0123456789abcdef\n"] {
            let config = Config {
                admin_token: Some(bad.into()),
                ..Config::default()
            };
            assert_eq!(config.validate().expect_err(bad).name, "admin_token");
        }
        let config = Config {
            admin_token: Some("0123456789abcdef".into()),
            ..Config::default()
        };
        config.validate().expect("valid");
        assert_eq!(Config::default().jwt_iat_leeway, Duration::from_secs(60));
    }

    #[test]
    fn a_bad_flag_value_names_the_flag_and_exits_2() {
        let err = Serve::try_parse_from(["coregate", "--heartbeat-interval", "soon"])
            .expect_err("not a duration");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--heartbeat-interval"), "{err}");
        let err = Serve::try_parse_from(["coregate", "--authorizer", "ldap"]).expect_err("no");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn every_shard_setting_reaches_the_shards() {
        let config: Config = toml::from_str(
            "handshake_timeout = \"3s\"\ninbox_capacity = 1024\nsocket_send_buffer = 65536\n",
        )
        .expect("valid file");
        let shard = config.shard_config();
        assert_eq!(shard.handshake_timeout, Duration::from_secs(3));
        assert_eq!(shard.inbox_capacity, 1024);
        assert_eq!(shard.socket_send_buffer, 65536);
        assert_eq!(
            shard.flood_close_after,
            ShardConfig::default().flood_close_after
        );
        let args = ConfigArgs {
            inbox_capacity: Some(0),
            ..ConfigArgs::default()
        };
        assert_eq!(args.load().expect_err("invalid").name, "inbox_capacity");
        // Fixed on purpose (see `coregate_shards::shard_settings!`).
        assert!(toml::from_str::<Config>("flood_close_after = 5").is_err());
    }

    const README_START: &str = "<!-- settings table: generated from the declarations in src/config.rs and shards/src/config.rs; `COREGATE_UPDATE_README=1 cargo test -p coregate --bin coregate readme` rewrites it -->\n";
    const README_END: &str = "<!-- end of the settings table -->";

    /// README.md's table is the declarations' (and fails until it is rewritten).
    #[test]
    fn readme_table_is_generated_from_the_declarations() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let start =
            readme.find(README_START).expect("the table's start marker") + README_START.len();
        let end = readme[start..]
            .find(README_END)
            .expect("the table's end marker")
            + start;
        let table = settings::markdown_table(SETTINGS);
        if readme[start..end] == table {
            return;
        }
        if std::env::var_os("COREGATE_UPDATE_README").is_some() {
            let updated = format!("{}{table}{}", &readme[..start], &readme[end..]);
            std::fs::write(path, updated).expect("rewrite README.md");
            return;
        }
        panic!(
            "README.md's settings table is not the declarations'; run \
             COREGATE_UPDATE_README=1 cargo test -p coregate --bin coregate readme\n\n{table}"
        );
    }
}
