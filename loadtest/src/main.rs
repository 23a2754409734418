//! `loadtest`: the coregate load harness. Opens many real WebSocket connections against a
//! gateway (spread over source addresses and worker processes), publishes through the admin
//! API, and reports connect rates, latency percentiles, losses and the gateway's own cost.
//!
//! Modules, one job each:
//! - [`cli`]: command-line arguments; [`targets`]: resolving and loopback-checking targets.
//! - [`tokens`]: minting or reading JWTs.
//! - [`connect`]: one authenticated WebSocket connection; [`decode`]: reading its frames.
//! - [`client`]: what one connection does once open (idle, subscriber, slow subscriber).
//! - [`fleet`]: many connections in one process; [`workers`]: fleets in worker processes.
//! - [`histo`]: latency histograms and their merging; [`gaps`]: loss/duplicate detection.
//! - [`http`] and [`publisher`]: paced publications over keep-alive HTTP/1.1.
//! - [`procfs`]: the gateway's RSS and CPU; [`collect`]: the parent's view while running;
//! - [`scenario`]: the idle/fanout/slow runs; [`report`]: summaries, human and JSON.

mod cli;
mod client;
mod collect;
mod connect;
mod decode;
mod fleet;
mod gaps;
mod histo;
mod http;
mod procfs;
mod publisher;
mod report;
mod scenario;
mod targets;
mod tokens;
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
            Command::Idle(args) => scenario::idle(args).await,
            Command::Fanout(args) => scenario::fanout(args, None).await,
            Command::Slow(args) => scenario::fanout(args.fanout, Some(args.slow)).await,
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
