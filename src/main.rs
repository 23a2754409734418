//! coregate: a sharded, thread-per-core WebSocket gateway.
//!
//! This binary reads the configuration, sets up logging and authentication, and
//! starts the parts: the shards (`coregate-shards`), the ingestor (`ingest`) and the
//! admin API (`admin`). `coregate token` mints development tokens.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod admin;
mod auth;
mod config;
mod ingest;
mod metrics;

use config::{Config, ConfigArgs, LogFormat};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    serve: ConfigArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    ///
    /// Every setting below is a flag, a `COREGATE_<NAME>` environment variable and a key
    /// of the `--config` file (the flag's name with `_`); flags win over the
    /// environment, which wins over the file, which wins over the default.
    Serve(ConfigArgs),
    /// Print an HS256 token signed with the configured secret.
    Token(TokenArgs),
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
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => token(args),
        Some(Command::Serve(args)) => serve(args),
        None => serve(cli.serve),
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
    let Some(secret) = config.jwt_secret.as_deref() else {
        eprintln!("coregate: invalid setting `jwt_secret`: `coregate token` needs the HS256 secret (--jwt-secret, COREGATE_JWT_SECRET or the config file)");
        return ExitCode::from(2);
    };
    let request = auth::TokenRequest {
        sub: args.sub,
        name: args.name,
        topics: args.topics,
        ttl: args.ttl,
        issuer: config.jwt_issuer.clone(),
        audience: config.jwt_audience.clone(),
    };
    match auth::mint_hs256(secret.as_bytes(), &request) {
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

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The verifier in force. With no key configured: development mode, loudly.
fn verifier(
    config: &Config,
) -> Result<Arc<dyn coregate_shards::TokenVerifier>, config::ConfigError> {
    if let Some(path) = &config.jwt_public_key {
        let pem = std::fs::read(path).map_err(|e| config::ConfigError {
            name: "jwt_public_key",
            reason: format!("{}: {e}", path.display()),
        })?;
        return Ok(Arc::new(auth::JwtVerifier::from_public_key(&pem, config)?));
    }
    if let Some(secret) = &config.jwt_secret {
        return Ok(Arc::new(auth::JwtVerifier::hs256(
            secret.as_bytes(),
            config,
        )));
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
            topics: vec!["channel:*".into(), "server:*".into(), "presence:*".into()],
            ttl: Duration::from_secs(24 * 3600),
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        },
    )
    .unwrap_or_default();
    tracing::warn!("DEVELOPMENT MODE: no --jwt-secret or --jwt-public-key configured; tokens are checked against a secret generated for this run only");
    eprintln!("\n  coregate development mode — sample token (sub=dev, 24h):\n  {sample}\n");
    Ok(Arc::new(auth::JwtVerifier::hs256(
        secret.as_bytes(),
        config,
    )))
}

fn serve(args: ConfigArgs) -> ExitCode {
    let config = match load(&args) {
        Ok(config) => config,
        Err(code) => return code,
    };
    init_tracing(config.log_format);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coregate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let verifier = verifier(&config).map_err(|e| anyhow::anyhow!(e))?;
    let (ingestor_tx, ingestor_rx) = flume::bounded(INGESTOR_QUEUE);
    let (authorizer, membership) = membership_authorizer(&config).unzip();
    let placement = coregate_shards::ShardPlacement {
        nr_shards: config.shard_count(),
        cpus: config.cpu_list()?,
    };
    let shards = coregate_shards::start_shards(
        config.listen,
        &placement,
        Arc::new(config.shard_config()),
        verifier,
        ingestor_tx.clone(),
        authorizer,
    )?;
    let ingestor_stats = Arc::new(ingest::IngestorStats::default());
    let redis = config.redis_url.as_ref().map(|url| ingest::RedisSettings {
        url: url.clone(),
        prefix: config.redis_prefix.clone(),
        max_payload: config.max_message_size,
        members_prefix: config.members_prefix.clone(),
        timeout: config.redis_timeout,
    });
    let redis_configured = redis.is_some();
    let ingestor = ingest::spawn(
        ingestor_rx,
        ingest::Router::new(shards.senders.clone(), ingestor_stats.clone()),
        redis,
        membership,
    )?;
    let draining = Arc::new(AtomicBool::new(false));
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel();
    let (admin_addr, admin) = admin::spawn(
        config.admin,
        admin::AdminState {
            ingestor: ingestor_tx,
            shard_stats: shards.stats.clone(),
            ingestor_stats,
            draining: draining.clone(),
            redis_configured,
            max_message_size: config.max_message_size,
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
    // Machine-readable for tests and scripts that start on port 0.
    println!("listening ws={} admin={}", shards.local_addr, admin_addr);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let parts = Parts {
        shards,
        admin,
        stop_admin,
        ingestor,
    };
    let drained = runtime.block_on(drain_on_signal(parts, &draining, config.drain_window));
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
}

impl Parts {
    /// Waits for every part to end, in dependency order: the shards (each ends once it
    /// has drained), then the admin API (stopped now: nothing is left to publish to),
    /// then the ingestor, which ends when the last of its command senders (the shards'
    /// and the admin API's) is gone. Blocks the calling thread.
    fn join(self) {
        self.shards.join();
        tracing::debug!("shards ended");
        let _ = self.stop_admin.send(());
        let _ = self.admin.join();
        tracing::debug!("admin API ended");
        let _ = self.ingestor.join();
        tracing::debug!("ingestor ended");
    }
}

/// With `authorizer = "redis"`: the shards' membership authorizer, and the receiving
/// side of its checks, which the ingestor answers.
fn membership_authorizer(
    config: &Config,
) -> Option<(
    coregate_shards::SharedAuthorizer,
    flume::Receiver<coregate_shards::MembershipCheck>,
)> {
    if config.authorizer != config::AuthorizerKind::Redis {
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

/// Waits for SIGINT or SIGTERM, then drains: `/ready` turns 503 (`draining`), shards stop
/// accepting and close their connections (1012) spread over `window`, and the process
/// returns once every part has ended (mini-redis's structured shutdown), or once the
/// window and a margin have passed. A second signal exits at once.
async fn drain_on_signal(
    parts: Parts,
    draining: &AtomicBool,
    window: Duration,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
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
        _ = term.recv() => std::process::exit(1),
        _ = int.recv() => std::process::exit(1),
        _ = joined => {}
        _ = tokio::time::sleep(window + SHUTDOWN_MARGIN) => {
            tracing::warn!("drain window passed with parts still running");
        }
    }
    tracing::info!("drained, exiting");
    Ok(())
}
