//! Command-line arguments of every subcommand.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use coregate_protocol::Encoding;

/// Load harness for the coregate gateway.
#[derive(Parser, Debug)]
#[command(name = "loadtest", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Hold N authenticated, heartbeating connections; report connect rate and the
    /// gateway's memory per connection and idle CPU.
    Idle(IdleArgs),
    /// S subscribers over T topics, publications at R/s via the admin API; report
    /// deliveries/s, latency percentiles, losses and duplicates.
    Fanout(FanoutArgs),
    /// Like fanout, but a fraction of subscribers stop reading; report the healthy ones'
    /// latency and how the slow ones were closed.
    Slow(SlowArgs),
    /// N connections, then every one drops and reconnects at once (per round); report
    /// reconnect times and errors by kind.
    Storm(StormArgs),
    /// A chat mix: many small channels and a few large ones, publications, typing bursts,
    /// users churning; report deliveries/s, latency, typing and churn figures.
    Chat(ChatArgs),
    /// Run a scenario against gateways with 1..N shards (started here, or given with
    /// --target) and tabulate the figures per shard count.
    Sweep(SweepArgs),
    /// C connections each keep one `rpc` in flight; report round trips/s, latency and
    /// round trips per gateway CPU-second (--direct: the same calls straight to the backend).
    Rpc(RpcArgs),
    /// Voice rooms of P participants each, every one sending 50 Opus packets a second;
    /// report join → first packet heard, forwarded packets per SFU CPU-second, and
    /// (--silent) the gateway's memory per participant.
    Voice(VoiceArgs),
    /// A trivial application backend for the gateway's HTTP calls (/rpc echoes,
    /// /connect accepts, /subscribe allows), for `rpc` and connect-proxy storms.
    Backend(BackendArgs),
    /// (internal) run a fleet of connections described on stdin; report on stdout.
    #[command(hide = true)]
    Worker,
}

impl Common {
    /// Where connections' tokens come from: `--tokens-file`, or minted with `--secret`.
    pub fn token_source(&self) -> anyhow::Result<crate::tokens::TokenSource> {
        use crate::tokens::TokenSource;
        match (&self.tokens_file, &self.secret) {
            (Some(path), _) => Ok(TokenSource::File {
                path: path.display().to_string(),
            }),
            (None, Some(secret)) => Ok(TokenSource::Mint {
                secret: secret.clone(),
                ttl_s: self.token_ttl.as_secs(),
            }),
            (None, None) => anyhow::bail!("give --secret (or LOADTEST_SECRET) or --tokens-file"),
        }
    }

    /// Writes a scenario's report as JSON where `--json` asks for it.
    pub fn write_report(&self, report: &impl serde::Serialize) -> anyhow::Result<()> {
        if let Some(path) = &self.json {
            std::fs::write(path, serde_json::to_vec_pretty(report)?)?;
        }
        Ok(())
    }
}

/// The wire encoding to speak.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EncodingArg {
    Json,
    Msgpack,
}

impl From<EncodingArg> for Encoding {
    fn from(arg: EncodingArg) -> Encoding {
        match arg {
            EncodingArg::Json => Encoding::Json,
            EncodingArg::Msgpack => Encoding::MsgPack,
        }
    }
}

/// Options shared by every load run.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// WebSocket endpoint of the gateway.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// HS256 secret used to mint one token per connection (sub = lt-<i>).
    #[arg(long, env = "LOADTEST_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// File of tokens, one per line (used instead of --secret; reused round-robin).
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Lifetime of minted tokens.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub token_ttl: Duration,
    /// Encoding (subprotocol coregate.v1.<encoding>).
    #[arg(long, value_enum, default_value = "json")]
    pub encoding: EncodingArg,
    /// Client source addresses, used round-robin (e.g. 127.0.0.1,127.0.0.2).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    pub source_addrs: Vec<IpAddr>,
    /// Most connections one process holds; above it, worker processes are started.
    #[arg(long, default_value_t = 15_000)]
    pub max_per_process: u64,
    /// Number of worker processes (default: as few as --max-per-process allows; 1 runs
    /// everything in this process).
    #[arg(long)]
    pub processes: Option<usize>,
    /// Connection attempts in flight at once (split across processes).
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Limit for one connection to reach `ready` (and `subscribed`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Limit for the whole connect phase.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub connect_phase_timeout: Duration,
    /// Length of the measured phase.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Ping interval (default: the gateway's heartbeat_interval_ms from `hello`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub heartbeat: Option<Duration>,
    /// The gateway's pid, to read its RSS and CPU from /proc.
    #[arg(long)]
    pub gateway_pid: Option<u32>,
    /// Write every figure as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Allow non-loopback targets and source addresses.
    #[arg(long)]
    pub allow_remote: bool,
    /// WebSocket read buffer per connection, bytes (small keeps the harness lean).
    #[arg(long, default_value_t = 8192)]
    pub read_buffer: usize,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Draw throughput and latency percentiles per second into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to hold.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: u64,
    /// Wait after the last connection is ready before measuring RSS and idle CPU.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
}

/// How publications are made (fanout, slow, chat).
#[derive(Args, Debug, Clone)]
pub struct PublishArgs {
    /// Admin API of the gateway (POST /publish), used unless --redis-url is given.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub admin: String,
    /// Publish through Redis instead: PUBLISH <prefix><topic> {"op","d"} (PROTOCOL.md §6).
    #[arg(
        long,
        value_name = "URL",
        env = "LOADTEST_REDIS_URL",
        hide_env_values = true
    )]
    pub redis_url: Option<String>,
    /// Redis channel prefix: the gateway's --redis-prefix (empty by default, as there).
    #[arg(long, default_value = "")]
    pub redis_prefix: String,
    /// Publications per second.
    #[arg(short = 'r', long, default_value_t = 100.0)]
    pub rate: f64,
    /// Approximate size of each publication's `d`, bytes.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// The event op.
    #[arg(long, default_value = "message_new")]
    pub op: String,
    /// Publishing lanes, each its own connection (a topic always uses the same one).
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// After publishing stops, wait at most this long for in-flight deliveries.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Subscribers (subscriber i subscribes to channel:<i mod topics>).
    #[arg(short = 's', long, default_value_t = 1000)]
    pub subscribers: u64,
    /// Topics channel:0 .. channel:<T-1>, published to round-robin.
    #[arg(short = 't', long, default_value_t = 1)]
    pub topics: u32,
}

#[derive(Args, Debug, Clone)]
pub struct RpcArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients, one connection each, one call in flight each.
    #[arg(short = 'c', long, default_value_t = 50)]
    pub clients: u64,
    /// The rpc method called.
    #[arg(long, default_value = "echo")]
    pub method: String,
    /// POST the calls straight to this backend URL instead (its own latency).
    #[arg(long, value_name = "URL")]
    pub direct: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct VoiceArgs {
    #[command(flatten)]
    pub common: Common,
    /// Voice rooms (voice:lt-<r>).
    #[arg(long, default_value_t = 1)]
    pub rooms: u64,
    /// Participants per room, each its own connection and UDP socket.
    #[arg(short = 'p', long, default_value_t = 10)]
    pub participants: u64,
    /// Time between one participant's join and the next's.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub stagger: Duration,
    /// Times every participant leaves and joins again after the measured phase (more
    /// join → first packet samples, each while the rest of its room talks).
    #[arg(long, default_value_t = 2)]
    pub rejoins: u32,
    /// Nobody talks: for the gateway's memory per (connected) participant.
    #[arg(long)]
    pub silent: bool,
}

#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// Where to listen (loopback only).
    #[arg(long, default_value = crate::backend::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// How long to serve.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: u64,
    /// Each connection subscribes to channel:<i mod T> (and again on reconnect); 0: none.
    #[arg(short = 't', long, default_value_t = 0)]
    pub topics: u32,
    /// Storm rounds.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Wait after everyone is connected (and between rounds, after everyone is back).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// A connection not back this long after the drop gives up for the round.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub reconnect_timeout: Duration,
    /// First retry delay after a failed reconnect (doubles, with jitter, up to 2 s).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub backoff: Duration,
    /// Send a close frame (1001) before dropping instead of just closing the socket.
    #[arg(long)]
    pub graceful: bool,
    /// Recovery (history topics): publications flow through --admin for --duration,
    /// the rounds are spread within it, and each connection resubscribes with `since`
    /// and checks it saw every publication once. Runs in this one process.
    #[arg(long)]
    pub recover: bool,
    /// With --recover: what is published meanwhile.
    #[command(flatten)]
    pub publish: PublishArgs,
}

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Users (one connection each).
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub users: u64,
    /// Large channels channel:0..L-1; every user is in one.
    #[arg(long, default_value_t = 2)]
    pub large_channels: u32,
    /// Small channels channel:L..L+S-1.
    #[arg(long, default_value_t = 200)]
    pub small_channels: u32,
    /// Small channels each user is in.
    #[arg(long, default_value_t = 3)]
    pub channels_per_user: u32,
    /// Share of publications that go to the large channels.
    #[arg(long, default_value_t = 0.1)]
    pub large_share: f64,
    /// Fraction of users that churn (swap a channel, or reconnect, every --churn-period).
    #[arg(long, default_value_t = 0.2)]
    pub churn_fraction: f64,
    /// Mean time between two churn actions of one churning user.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub churn_period: Duration,
    /// Fraction of users that type.
    #[arg(long, default_value_t = 0.2)]
    pub typing_fraction: f64,
    /// Mean time between two typing bursts of one typing user.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub typing_period: Duration,
    /// typing_start ops per burst, one second apart.
    #[arg(long, default_value_t = 3)]
    pub typing_burst: u32,
    /// Seed of the mix (same seed, same channels and schedule).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    /// Shard counts to run, e.g. 1,2,4 (default 1..=--max-shards).
    #[arg(long, value_delimiter = ',')]
    pub shards: Vec<u32>,
    /// With --gateway-bin and no --shards: 1..=N.
    #[arg(long, default_value_t = 2)]
    pub max_shards: u32,
    /// The coregate binary to start for each shard count (on free loopback ports, with
    /// the scenario's --secret as its JWT secret and its --redis-url, if any).
    #[arg(long, value_name = "PATH", conflicts_with = "target")]
    pub gateway_bin: Option<PathBuf>,
    /// Extra argument for the started gateways (repeat it).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub gateway_arg: Vec<String>,
    /// A running gateway instead: shards=N,url=ws://HOST:PORT/ws,admin=http://HOST:PORT,pid=PID
    /// (repeat it, one per shard count).
    #[arg(long, value_name = "SPEC")]
    pub target: Vec<String>,
    /// Pause between two runs.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub pause: Duration,
    /// Write the table and every run's summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(subcommand)]
    pub scenario: SweepScenario,
}

/// The scenario a sweep repeats (its --url, --admin and --gateway-pid are set per run).
#[derive(Subcommand, Debug, Clone)]
pub enum SweepScenario {
    Idle(IdleArgs),
    Fanout(FanoutArgs),
    Slow(SlowArgs),
    Storm(StormArgs),
    Chat(ChatArgs),
}

#[derive(Args, Debug, Clone)]
pub struct SlowArgs {
    #[command(flatten)]
    pub fanout: FanoutArgs,
    #[command(flatten)]
    pub slow: SlowOptions,
}

#[derive(Args, Debug, Clone, Copy)]
pub struct SlowOptions {
    /// Fraction of subscribers that stop reading after subscribing.
    #[arg(long, default_value_t = 0.1)]
    pub slow_fraction: f64,
    /// At the end, how long slow subscribers read to find their close frame.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub slow_drain: Duration,
    /// Kernel receive buffer (SO_RCVBUF) of the slow subscribers' sockets, bytes. On
    /// loopback the kernel otherwise buffers megabytes for a stalled reader, and the
    /// gateway's own queue (and its shedding) is reached only much later.
    #[arg(long, value_name = "BYTES")]
    pub slow_recv_buffer: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_sweep_and_chat() {
        let cli = Cli::try_parse_from([
            "loadtest",
            "sweep",
            "--gateway-bin",
            "/bin/coregate",
            "--shards",
            "1,2",
            "chat",
            "-n",
            "50",
            "--redis-url",
            "redis://127.0.0.1:1",
            "--plot",
            "x.svg",
        ])
        .expect("parses");
        let Command::Sweep(sweep) = cli.command else {
            panic!("not sweep");
        };
        assert_eq!(sweep.shards, vec![1, 2]);
        let SweepScenario::Chat(chat) = sweep.scenario else {
            panic!("not chat");
        };
        assert_eq!(chat.users, 50);
        assert_eq!(
            chat.publish.redis_prefix, "",
            "the gateway's default (PROTOCOL.md §6)"
        );
        assert!(chat.publish.redis_url.is_some());
        assert!(chat.common.plot.is_some());
    }

    #[test]
    fn parses_slow() {
        let cli = Cli::try_parse_from([
            "loadtest",
            "slow",
            "--subscribers",
            "10",
            "--slow-fraction",
            "0.5",
            "--source-addrs",
            "127.0.0.1,127.0.0.2",
            "--duration",
            "3s",
        ])
        .expect("parses");
        let Command::Slow(args) = cli.command else {
            panic!("not slow");
        };
        assert_eq!(args.fanout.subscribers, 10);
        assert_eq!(args.fanout.common.source_addrs.len(), 2);
        assert_eq!(args.fanout.common.duration, Duration::from_secs(3));
        assert!((args.slow.slow_fraction - 0.5).abs() < 1e-9);
    }
}
