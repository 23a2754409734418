//! `loadtest`: the coregate load harness. Opens many real WebSocket connections against a
//! gateway (spread over source addresses and worker processes), publishes through the admin
//! API or Redis, and reports connect rates, latency percentiles, losses and the gateway's
//! own cost; `sweep` repeats a scenario per shard count and tabulates it.
//!
//! Modules, one job each:
//! - [`cli`]: command-line arguments; [`targets`]: resolving and loopback-checking targets.
//! - [`tokens`]: minting or reading JWTs.
//! - [`connect`]: one authenticated WebSocket connection; [`decode`]: reading its frames.
//! - [`client`]: what one connection does once open (idle, subscriber, slow subscriber);
//!   [`storm`] and [`chat`]: the same for those scenarios; [`chatmix`]: the chat plan.
//! - [`fleet`]: many connections in one process; [`workers`]: fleets in worker processes.
//! - [`histo`]: latency histograms and their merging; [`gaps`]: loss/duplicate detection.
//! - [`publisher`]: paced publications through a [`sink`] (keep-alive [`http`] or Redis).
//! - [`procfs`]: the gateway's RSS and CPU; [`collect`]: the parent's view while running;
//! - [`scenario`]: the runs; [`report`]: summaries, human and JSON; [`plot`]: the SVG;
//!   [`sweep`]: gateways per shard count and the table.
//! - [`rpc`]: client `rpc` round trips through the gateway (or straight to the backend);
//!   [`backend`]: the trivial application backend they (and connect storms) call.
//! - [`voice`]: voice rooms of str0m peers ([`loadtest::voice_peer`]) through the SFU.

mod backend;
mod chat;
mod chatmix;
mod cli;
mod client;
mod collect;
mod connect;
mod decode;
mod fleet;
mod gaps;
mod histo;
mod http;
mod plot;
mod procfs;
mod publisher;
mod recover;
mod report;
mod rpc;
mod scenario;
mod sink;
mod storm;
mod sweep;
mod targets;
mod tokens;
mod voice;
mod workers;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    procfs::raise_nofile_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Idle(args) => scenario::output(&scenario::idle(&args).await?, &args.common),
            Command::Fanout(args) => {
                scenario::output(&scenario::fanout(&args).await?, &args.common)
            }
            Command::Slow(args) => {
                scenario::output(&scenario::slow(&args).await?, &args.fanout.common)
            }
            Command::Storm(args) if args.recover => recover::run(&args).await,
            Command::Storm(args) => scenario::output(&scenario::storm(&args).await?, &args.common),
            Command::Chat(args) => scenario::output(&scenario::chat(&args).await?, &args.common),
            Command::Sweep(args) => sweep::run(args).await,
            Command::Rpc(args) => rpc::run(&args).await,
            Command::Voice(args) => voice::run(&args).await,
            Command::Backend(args) => backend::run(&args).await,
            Command::Worker => workers::worker_main().await,
        }
    });
    // Connections still held by tasks are dropped with the runtime; don't wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
