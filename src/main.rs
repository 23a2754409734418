//! coregate: a sharded, thread-per-core WebSocket gateway.
//!
//! This binary reads the configuration, sets up logging and authentication, and
//! starts the parts: the shards (`coregate-shards`), the ingestor (`ingest`) and the
//! admin API (`admin`). `coregate token` mints development tokens.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod admin;
mod allocator;
mod auth;
mod config;
mod ingest;
mod metrics;
mod proxy;
mod voice;

use config::{Config, ConfigArgs, ConfigError, LogFormat};

/// Capacity of the shards → ingestor queue, in commands.
const INGESTOR_QUEUE: usize = 65_536;
/// How long past the drain window the process waits for its parts to end: the close
/// frames' flush limit and linger, with room to spare.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);
/// Membership checks waiting for the ingestor; past this a subscribe is refused
/// `not_ready` rather than queued without bound.
const MEMBERSHIP_QUEUE: usize = 4096;

#[derive(Parser)]
#[command(
    name = "coregate",
    version,
    about = "A sharded, thread-per-core WebSocket gateway"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    ///
    /// Every setting below is a flag, a `COREGATE_<NAME>` environment variable and a key
    /// of the `--config` file (the flag's name with `_`); flags win over the
    /// environment, which wins over the file, which wins over the default.
    Serve(ServeArgs),
    /// Print an HS256 token signed with the configured secret.
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Start even though another process listens on `--listen`, and share its port.
    ///
    /// For a zero-downtime restart: the successor joins the running node's
    /// `SO_REUSEPORT` group, then the old node is sent SIGTERM and drains. Without this
    /// flag a start on a port another process listens on is refused (exit 2), since the
    /// kernel would otherwise silently split connections between the two. A flag of
    /// the command line only, for that one start: no variable or file key sets it.
    #[arg(long)]
    reuse_port_with_running: bool,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    sub: String,
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// Allowed topic patterns, comma separated, e.g. `channel:*,server:1`.
    #[arg(long, value_delimiter = ',')]
    topics: Vec<String>,
    /// Lifetime, e.g. `1h`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> ExitCode {
    let command = Cli::command();
    let matches = match command.clone().try_get_matches() {
        Ok(matches) => matches,
        Err(e) => return parse_error(&command, e, std::env::args_os().collect()),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match (cli.command, matches.subcommand()) {
        (Some(Command::Token(mut args)), Some((_, sub))) => {
            args.config.note_sources(sub);
            token(args)
        }
        (Some(Command::Serve(mut args)), Some((_, sub))) => {
            args.config.note_sources(sub);
            serve(args)
        }
        (_, _) => {
            let mut args = cli.serve;
            args.config.note_sources(&matches);
            serve(args)
        }
    }
}

/// Reports a command-line error as clap would, except that a bad value that came from
/// a `COREGATE_*` variable is reported under that variable's name: the operator set
/// the variable, not the flag clap would name. Exit code 2 (clap's for usage errors).
fn parse_error(command: &clap::Command, e: clap::Error, argv: Vec<OsString>) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        e.exit();
    }
    let Some(ContextValue::String(invalid_arg)) = e.get(ContextKind::InvalidArg) else {
        e.exit();
    };
    // `--heartbeat-interval <DURATION>` → `heartbeat-interval`.
    let long = invalid_arg
        .trim_start_matches('-')
        .split([' ', '='])
        .next()
        .unwrap_or_default();
    let flag = format!("--{long}");
    let on_command_line = argv.iter().skip(1).any(|a| {
        a.to_str()
            .is_some_and(|a| a == flag || a.starts_with(&format!("{flag}=")))
    });
    let env = std::iter::once(command)
        .chain(command.get_subcommands())
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .and_then(|env| env.to_str())
        .filter(|env| std::env::var_os(env).is_some());
    match env {
        Some(env) if !on_command_line => {
            let text = e.to_string();
            let quoted = format!("'{invalid_arg}'");
            let named = format!("{env} (the environment variable of {flag})");
            let text = if text.contains(&quoted) {
                text.replacen(&quoted, &named, 1)
            } else {
                format!("{text}(the value came from the environment variable {env})\n")
            };
            eprint!("{text}");
            ExitCode::from(2)
        }
        _ => e.exit(),
    }
}

fn load(args: &ConfigArgs) -> Result<Config, ExitCode> {
    args.load().map_err(|e| {
        eprintln!("coregate: {e}");
        ExitCode::from(2)
    })
}

fn token(args: TokenArgs) -> ExitCode {
    let config = match load(&args.config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let secret = match config.hs256_secret() {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            eprintln!("coregate: invalid setting `jwt_secret`: `coregate token` needs the HS256 secret (--jwt-secret, --jwt-secret-file, their COREGATE_* variables or the config file)");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("coregate: {}", args.config.attribute(e));
            return ExitCode::from(2);
        }
    };
    let request = auth::TokenRequest {
        sub: args.sub,
        name: args.name,
        topics: args.topics,
        ttl: args.ttl,
        issuer: config.jwt_issuer.clone(),
        audience: config.jwt_audience.clone(),
    };
    match auth::mint_hs256(&secret, &request) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("coregate: could not sign the token: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, at the levels `RUST_LOG` sets (default `info`), coloured only
/// when stderr is a terminal (and `NO_COLOR` is unset), and never with frame contents:
/// see [`log_payload_cap`].
fn init_tracing(format: LogFormat) {
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .and(log_payload_cap());
    let ansi = format == LogFormat::Text
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry();
    match format {
        LogFormat::Text => registry.with(layer.with_filter(filter)).init(),
        LogFormat::Json => registry.with(layer.json().with_filter(filter)).init(),
    }
}

/// A cap on the targets that log what peers send, applied whatever `RUST_LOG` says
/// (`RUST_LOG=trace`, `tungstenite=trace` and the like included), so that no token
/// (an `identify`'s or a `refresh`'s, in a frame) reaches a log. tungstenite logs every
/// frame's payload (in hex) and every message (as text) at `trace`; at `debug`, close
/// frames with the peer's reason; from `info` up, nothing a peer sent. The
/// `tokio_tungstenite` targets are capped the same way, should client code ever be
/// linked into this binary. (hyper, under the admin API, logs no header values.)
fn log_payload_cap() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::LevelFilter;
    tracing_subscriber::filter::Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("tungstenite", LevelFilter::INFO)
        .with_target("tokio_tungstenite", LevelFilter::INFO)
}

/// The verifier in force. With no key configured: development mode, loudly; the
/// [`DevSecret`] returned then must live as long as the node.
fn verifier(
    config: &Config,
) -> Result<(Arc<dyn coregate_shards::TokenVerifier>, Option<DevSecret>), ConfigError> {
    if let Some(path) = &config.jwt_public_key {
        let pem = std::fs::read(path)
            .map_err(|e| ConfigError::new("jwt_public_key", format!("{}: {e}", path.display())))?;
        let verifier = auth::JwtVerifier::from_public_key(&pem, config)
            .map_err(|e| ConfigError::new(e.name, format!("{}: {}", path.display(), e.reason)))?;
        return Ok((Arc::new(verifier), None));
    }
    if let Some(secret) = config.hs256_secret()? {
        return Ok((Arc::new(auth::JwtVerifier::hs256(&secret, config)), None));
    }
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let sample = auth::mint_hs256(
        secret.as_bytes(),
        &auth::TokenRequest {
            sub: "dev".into(),
            name: Some("Developer".into()),
            topics: DEV_TOPICS.iter().map(|t| (*t).to_owned()).collect(),
            ttl: Duration::from_secs(24 * 3600),
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        },
    )
    .unwrap_or_default();
    tracing::warn!("DEVELOPMENT MODE: no --jwt-secret, --jwt-secret-file or --jwt-public-key configured; tokens are checked against a secret generated for this run only");
    // A command that mints more tokens for this run. It names a file that holds the
    // secret (0600, in a fresh 0700 directory, removed when the node exits) rather than
    // the secret itself: a command line with the secret would land in the log (this
    // banner is on stderr, often collected), in terminal scrollback and shell history
    // once pasted, and in the process list while `coregate token` runs.
    let dev_secret = match DevSecret::write(&secret) {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::warn!(error = %e, "could not write this run's secret to a file: no command to mint more tokens");
            None
        }
    };
    let mint = dev_secret
        .as_ref()
        .map(|file| mint_command(&file.path, config));
    match config.log_format {
        LogFormat::Json => {
            tracing::warn!(
                sample_token = %sample,
                sub = "dev",
                ttl = "24h",
                "development mode: a sample token"
            );
            if let (Some(mint), Some(file)) = (&mint, &dev_secret) {
                tracing::warn!(
                    command = %mint,
                    secret_file = %file.path.display(),
                    "development mode: mint more tokens for this run with this command"
                );
            }
        }
        LogFormat::Text => {
            eprintln!("\n  coregate development mode — sample token (sub=dev, 24h):\n  {sample}\n");
            if let Some(mint) = &mint {
                eprintln!("  mint another for this run (its secret is in a file only you can read, removed at exit):\n  {mint}\n");
            }
        }
    }
    let verifier = auth::JwtVerifier::hs256(secret.as_bytes(), config);
    Ok((Arc::new(verifier), dev_secret))
}

/// The topics the development sample token allows.
const DEV_TOPICS: [&str; 3] = ["channel:*", "server:*", "presence:*"];

/// Development mode's secret in a file `coregate token --jwt-secret-file` reads; the
/// file and its directory are removed on drop.
struct DevSecret {
    dir: PathBuf,
    path: PathBuf,
}

impl DevSecret {
    fn write(secret: &str) -> std::io::Result<DevSecret> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        // A fresh directory of our own: `mkdir` fails rather than follow a link or
        // reuse a directory someone else prepared in the shared temp directory.
        let dir = std::env::temp_dir().join(format!(
            "coregate-dev-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("jwt-secret");
        let file = DevSecret { dir, path };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file.path)?;
        out.write_all(secret.as_bytes())?;
        Ok(file)
    }
}

impl Drop for DevSecret {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `coregate token …` that signs like this run's sample token, ready to paste in a
/// POSIX shell.
fn mint_command(secret_file: &Path, config: &Config) -> String {
    let program = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "coregate".to_owned());
    let mut words = vec![
        program,
        "token".to_owned(),
        "--jwt-secret-file".to_owned(),
        secret_file.display().to_string(),
        "--sub".to_owned(),
        "dev".to_owned(),
        "--topics".to_owned(),
        DEV_TOPICS.join(","),
        "--ttl".to_owned(),
        "24h".to_owned(),
    ];
    if let Some(issuer) = &config.jwt_issuer {
        words.extend(["--jwt-issuer".to_owned(), issuer.clone()]);
    }
    if let Some(audience) = &config.jwt_audience {
        words.extend(["--jwt-audience".to_owned(), audience.clone()]);
    }
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `word` as one POSIX shell word: as it is when that is safe, else in single quotes.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:,=@%+".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Refuses to share `--listen` with another process, unless asked to: every shard binds
/// it with `SO_REUSEPORT`, so a second node on the same port would silently take a share
/// of the first one's connections (and, with another secret, refuse its users' valid
/// tokens). A bind without `SO_REUSEPORT` fails while any other socket listens on the
/// port, so it tells. (Port 0 cannot collide; the probe then only checks the address.)
fn probe_listen(addr: SocketAddr, reuse_port_with_running: bool) -> Result<(), ConfigError> {
    match std::net::TcpListener::bind(addr) {
        Ok(probe) => {
            drop(probe);
            if reuse_port_with_running {
                tracing::warn!(listen = %addr, "--reuse-port-with-running: no other process listens there; starting alone");
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if reuse_port_with_running {
                tracing::info!(listen = %addr, "--reuse-port-with-running: sharing the port with the process that listens there");
                return Ok(());
            }
            Err(ConfigError::new(
                "listen",
                format!(
                    "{addr} is in use by another process (a running coregate?); to start a \
                     successor that shares it for a zero-downtime restart, add \
                     --reuse-port-with-running"
                ),
            ))
        }
        Err(e) => Err(ConfigError::new(
            "listen",
            format!("cannot listen on {addr}: {e}"),
        )),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match load(&args.config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    init_tracing(config.log_format);
    match run(config, args.reuse_port_with_running) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast::<ConfigError>() {
            // A setting the node cannot run with: named (with the environment variable
            // it came from, if it did), exit 2 as for any bad setting.
            Ok(e) => {
                eprintln!("coregate: {}", args.config.attribute(e));
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("coregate: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(config: Config, reuse_port_with_running: bool) -> anyhow::Result<()> {
    // Everything an operator can get wrong is checked before anything starts (and
    // before development mode's banner, which would be noise above a refusal).
    probe_listen(config.listen, reuse_port_with_running)?;
    let admin_listener = admin::bind(config.admin)?;
    let voice = config.voice.then(|| bind_voice(&config)).transpose()?;
    let (verifier, _dev_secret) = verifier(&config)?;
    let (ingestor_tx, ingestor_rx) = flume::bounded(INGESTOR_QUEUE);
    let (authorizer, membership) = membership_authorizer(&config).unzip();
    // The `redis` authorizer's checks go to the ingestor, the `proxy` one's to the
    // backend client.
    let (membership, proxy_checks) = match config.authorizer {
        config::AuthorizerKind::Proxy => (None, membership),
        _ => (membership, None),
    };
    let (backend, proxy_queues) = backend_client(&config, proxy_checks);
    let placement = coregate_shards::ShardPlacement {
        nr_shards: config.shard_count(),
        cpus: config.cpu_list()?,
        release_free_memory: allocator::release_free_memory,
    };
    let shards = coregate_shards::start_shards(
        config.listen,
        &placement,
        Arc::new(config.shard_config()),
        verifier,
        coregate_shards::NodeLinks {
            ingestor: ingestor_tx.clone(),
            authorizer,
            backend,
            voice: voice.as_ref().map(|v| v.shared.clone()),
        },
    )
    .map_err(|e| anyhow::anyhow!("listening on {}: {e}", config.listen))?;
    let voice_stats = Arc::new(voice::VoiceStats::default());
    let voice = voice
        .map(|bound| bound.spawn(shards.senders.clone(), voice_stats.clone()))
        .transpose()?;
    let proxy_stats = Arc::new(proxy::ProxyStats::default());
    let proxy = match proxy_queues {
        Some(queues) => Some(proxy::spawn(
            queues,
            shards.senders.clone(),
            proxy_settings(&config)?,
            proxy_stats.clone(),
        )?),
        None => None,
    };
    let ingestor_stats = Arc::new(ingest::IngestorStats::default());
    let redis = config.redis_url.as_ref().map(|url| ingest::RedisSettings {
        url: url.clone(),
        prefix: config.redis_prefix.clone(),
        max_payload: config.max_message_size,
        members_prefix: config.members_prefix.clone(),
        timeout: config.redis_timeout,
        typing_ttl: config.typing_ttl,
        presence: config.presence,
        presence_grace: config.presence_grace,
        presence_ttl: config.presence_ttl,
        history: config.history.clone(),
    });
    let redis_configured = redis.is_some();
    let ingestor = ingest::spawn(
        ingestor_rx,
        ingest::Router::new(
            shards.senders.clone(),
            ingestor_stats.clone(),
            config.history.clone(),
        ),
        redis,
        membership,
        config.typing_ttl,
        config.presence.then_some(config.presence_grace),
        config.history.clone(),
    )?;
    let draining = Arc::new(AtomicBool::new(false));
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel();
    let (admin_addr, admin) = admin::spawn(
        admin_listener,
        admin::AdminState {
            ingestor: ingestor_tx,
            shard_stats: shards.stats.clone(),
            ingestor_stats,
            proxy_stats,
            draining: draining.clone(),
            redis_configured,
            backend_in_ready: config.proxy_in_ready,
            max_message_size: config.max_message_size,
            admin_token: config.admin_token.as_deref().map(Arc::from),
            voice_stats,
        },
        admin_stopped,
    )?;
    tracing::info!(
        listen = %shards.local_addr,
        path = %config.path,
        shards = placement.nr_shards,
        admin = %admin_addr,
        redis = redis_configured,
        "coregate listening"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Before the node says it listens: a SIGTERM sent the moment it does must drain it,
    // not kill it.
    let signals = {
        let _runtime = runtime.enter();
        Signals::listen()?
    };
    // Machine-readable for tests and scripts that start on port 0.
    println!("listening ws={} admin={}", shards.local_addr, admin_addr);
    let parts = Parts {
        shards,
        admin,
        stop_admin,
        ingestor,
        proxy,
        voice,
    };
    let drained = runtime.block_on(drain_on_signal(
        parts,
        signals,
        &draining,
        config.drain_window,
    ));
    // A part that did not end within the margin is not waited for.
    runtime.shutdown_background();
    drained
}

/// The running parts of a node, in the order they are shut down.
struct Parts {
    shards: coregate_shards::RunningShards,
    admin: std::thread::JoinHandle<()>,
    stop_admin: tokio::sync::oneshot::Sender<()>,
    ingestor: std::thread::JoinHandle<()>,
    /// The backend client, with `--proxy-rpc-url`; it ends with the shards, whose
    /// hubs hold its queue's senders.
    proxy: Option<std::thread::JoinHandle<()>>,
    /// The SFU, with voice on; it ends with the shards, like the backend client.
    voice: Option<std::thread::JoinHandle<()>>,
}

impl Parts {
    /// Waits for every part to end, in dependency order: the shards (each ends once it
    /// has drained), then the admin API (stopped now: nothing is left to publish to),
    /// then the ingestor, which ends when the last of its command senders (the shards'
    /// and the admin API's) is gone. Blocks the calling thread.
    fn join(self) {
        self.shards.join();
        tracing::debug!("shards ended");
        if let Some(proxy) = self.proxy {
            let _ = proxy.join();
            tracing::debug!("backend client ended");
        }
        if let Some(voice) = self.voice {
            let _ = voice.join();
            tracing::debug!("SFU ended");
        }
        let _ = self.stop_admin.send(());
        let _ = self.admin.join();
        tracing::debug!("admin API ended");
        let _ = self.ingestor.join();
        tracing::debug!("ingestor ended");
    }
}

/// Binds the SFU's UDP socket (`--voice-udp`, or the `--listen` host on a free port);
/// one it cannot have is a setting's error, named.
fn bind_voice(config: &Config) -> Result<voice::BoundVoice, ConfigError> {
    let (name, bind) = match config.voice_udp {
        Some(addr) => ("voice_udp", addr),
        None => ("listen", SocketAddr::new(config.listen.ip(), 0)),
    };
    let cluster = config
        .redis_url
        .as_ref()
        .map(|url| voice::cluster::ClusterSettings {
            url: url.clone(),
            prefix: config.redis_prefix.clone(),
            node_id: Arc::from(uuid::Uuid::new_v4().to_string()),
            timeout: config.redis_timeout,
        });
    let settings = voice::VoiceSettings {
        bind,
        announce: config.voice_announce,
        room_size: config.voice_room_size,
        cluster,
    };
    voice::bind(settings)
        .map_err(|e| ConfigError::new(name, format!("voice: cannot bind UDP {bind}: {e}")))
}

/// With any backend call configured (`--proxy-rpc-url`, `--proxy-connect-url`,
/// `--authorizer proxy`): what the shards send calls with, and the backend client's
/// queues (`checks` are the `proxy` authorizer's).
fn backend_client(
    config: &Config,
    checks: Option<flume::Receiver<coregate_shards::MembershipCheck>>,
) -> (
    Option<coregate_shards::SharedBackend>,
    Option<proxy::ProxyQueues>,
) {
    let mut backend = coregate_shards::SharedBackend::default();
    let mut queues = proxy::ProxyQueues {
        subscribe: checks,
        ..proxy::ProxyQueues::default()
    };
    if config.proxy_rpc_url.is_some() {
        let (tx, rx) = flume::bounded(proxy::QUEUE);
        backend = backend.with_rpc(tx);
        queues.rpc = Some(rx);
    }
    if config.proxy_connect_url.is_some() {
        let (tx, rx) = flume::bounded(proxy::QUEUE);
        backend = backend.with_connect(
            tx,
            proxy::parse_list(&config.proxy_connect_headers),
            config.proxy_forward_token,
        );
        queues.connect = Some(rx);
    }
    if queues.rpc.is_none() && queues.connect.is_none() && queues.subscribe.is_none() {
        return (None, None);
    }
    (Some(backend), Some(queues))
}

/// The backend client's settings (the URLs were checked by `Config::validate`).
fn proxy_settings(config: &Config) -> anyhow::Result<proxy::ProxySettings> {
    let url = |url: &Option<String>| {
        url.as_deref()
            .map(proxy::parse_url)
            .transpose()
            .map_err(anyhow::Error::msg)
    };
    Ok(proxy::ProxySettings {
        rpc_url: url(&config.proxy_rpc_url)?,
        rpc_methods: config.proxy_rpc_methods.as_deref().map(proxy::parse_list),
        connect_url: url(&config.proxy_connect_url)?,
        subscribe_url: url(&config.proxy_subscribe_url)?,
        timeout: config.proxy_timeout,
        secret: config.proxy_secret.clone(),
        secret_header: hyper::header::HeaderName::from_bytes(
            config.proxy_secret_header.as_bytes(),
        )?,
        probe: config.proxy_in_ready,
        max_in_flight: config.proxy_max_in_flight,
        max_answer: config.control_budget,
    })
}

/// With `authorizer = "redis"` or `"proxy"`: the shards' membership authorizer, and the
/// receiving side of its checks, which the ingestor (redis) or the backend client
/// (proxy) answers.
fn membership_authorizer(
    config: &Config,
) -> Option<(
    coregate_shards::SharedAuthorizer,
    flume::Receiver<coregate_shards::MembershipCheck>,
)> {
    if config.authorizer == config::AuthorizerKind::Claims {
        return None;
    }
    let (checks_tx, checks_rx) = flume::bounded(MEMBERSHIP_QUEUE);
    let authorizer = coregate_shards::SharedAuthorizer::new(
        checks_tx,
        config.authorizer_cache_ttl,
        config.authorizer_timeout,
    );
    Some((authorizer, checks_rx))
}

/// SIGTERM and SIGINT, caught from the moment they are listened for (until then they
/// kill the process).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Within a tokio runtime.
    fn listen() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next of either.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Waits for SIGINT or SIGTERM, then drains: `/ready` turns 503 (`draining`), shards stop
/// accepting and close their connections (1012) spread over `window`, and the process
/// returns once every part has ended (mini-redis's structured shutdown), or once the
/// window and a margin have passed. A second signal exits at once.
async fn drain_on_signal(
    parts: Parts,
    mut signals: Signals,
    draining: &AtomicBool,
    window: Duration,
) -> anyhow::Result<()> {
    signals.next().await;
    tracing::info!(?window, "signal received: draining");
    draining.store(true, std::sync::atomic::Ordering::Relaxed);
    for shard in &parts.shards.senders {
        // The inbox may be momentarily full of events: retry briefly.
        for _ in 0..100 {
            match shard.try_send(coregate_shards::ShardMessage::Drain { window }) {
                Err(coregate_shards::HandOffError::Full { .. }) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                _ => break,
            }
        }
    }
    let joined = tokio::task::spawn_blocking(move || parts.join());
    tokio::select! {
        _ = signals.next() => std::process::exit(1),
        _ = joined => {}
        _ = tokio::time::sleep(window + SHUTDOWN_MARGIN) => {
            tracing::warn!("drain window passed with parts still running");
        }
    }
    tracing::info!("drained, exiting");
    Ok(())
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn frame_contents_are_never_logged_whatever_rust_log_says() {
        let cap = log_payload_cap();
        for target in [
            "tungstenite",
            "tungstenite::protocol",
            "tungstenite::protocol::frame",
            "tokio_tungstenite::compat",
        ] {
            assert!(!cap.would_enable(target, &Level::TRACE), "{target}");
            assert!(!cap.would_enable(target, &Level::DEBUG), "{target}");
            assert!(cap.would_enable(target, &Level::INFO), "{target}");
        }
        for target in ["coregate", "coregate_shards::driver", "glommio", "redis"] {
            assert!(cap.would_enable(target, &Level::TRACE), "{target}");
        }
    }

    #[test]
    fn mint_command_is_one_shell_line() {
        assert_eq!(shell_quote("channel:*,server:*"), "'channel:*,server:*'");
        assert_eq!(shell_quote("/tmp/a b/it's"), "'/tmp/a b/it'\\''s'");
        assert_eq!(
            shell_quote("/tmp/coregate-dev-1/jwt-secret"),
            "/tmp/coregate-dev-1/jwt-secret"
        );
        assert_eq!(shell_quote(""), "''");
        let config = Config {
            jwt_audience: Some("my app".into()),
            ..Config::default()
        };
        let command = mint_command(Path::new("/tmp/x/jwt-secret"), &config);
        assert!(
            command.ends_with(
                " token --jwt-secret-file /tmp/x/jwt-secret --sub dev \
                 --topics 'channel:*,server:*,presence:*' --ttl 24h --jwt-audience 'my app'"
            ),
            "{command}"
        );
    }

    #[test]
    fn the_probe_refuses_a_port_another_process_listens_on() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let e = probe_listen(addr, false).expect_err("in use");
        assert_eq!(e.name, "listen");
        assert!(e.reason.contains(&addr.to_string()), "{}", e.reason);
        probe_listen(addr, true).expect("a successor may share it");
        drop(taken);
        probe_listen(addr, false).expect("free again");
        probe_listen("127.0.0.1:0".parse().expect("addr"), false).expect("port 0");
    }
}
