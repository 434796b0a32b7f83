//! `discomy`: the operator's command. `discomy run` builds against a farm (see the library's
//! `run`); `discomy status` shows the coordinator's view, `discomy stats` an agent's counters.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use discomy_compilerd::run::RunOptions;

#[derive(Parser)]
#[command(name = "discomy", version, about = "discomy distributed compile farm")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a build command with CC/CXX going through the farm, then print a summary.
    Run {
        /// Start an embedded farm of N worker processes on loopback for the duration.
        #[arg(long, value_name = "N")]
        local_farm: Option<usize>,
        /// Workers for a transient agent (distcc syntax); default DISCOMY_HOSTS or the config file.
        #[arg(long)]
        hosts: Option<String>,
        /// Slots per embedded worker.
        #[arg(long)]
        slots: Option<usize>,
        /// Write the summary as JSON to this file.
        #[arg(long, value_name = "FILE")]
        summary_json: Option<PathBuf>,
        /// The build command.
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
    /// The farm as the coordinator sees it: nodes, slots, load, learned speed, submitters.
    Status {
        /// Coordinator `host[:port]`.
        #[arg(long, env = "DISCOMY_COORDINATOR")]
        coordinator: String,
        /// Farm token.
        #[arg(long, env = "DISCOMY_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A running agent's counters since it started: units, remote, local, fallback, cache hits,
    /// failed, and why units stayed local.
    Stats {
        /// The agent's socket.
        #[arg(long, env = "DISCOMY_SOCKET", default_value = discomy_wrapper::client::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// A worker's counters instead (`host:port`; the farm token from `DISCOMY_TOKEN`):
        /// its toolchain store, and its distcc jobs by result.
        #[arg(long, value_name = "ADDR")]
        worker: Option<String>,
        /// Print JSON (the field names are a stable interface).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    discomy_protocol::plumbing::daemon::init_tracing();
    match run() {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode> {
    match Cli::parse().command {
        Cmd::Run { local_farm, hosts, slots, summary_json, command } => {
            let bin_dir = match std::env::var_os("DISCOMY_BIN_DIR") {
                Some(dir) => PathBuf::from(dir),
                None => std::env::current_exe()
                    .context("cannot locate the discomy executable")?
                    .parent()
                    .context("executable has no directory")?
                    .to_path_buf(),
            };
            let opts = RunOptions { local_farm, hosts, slots, summary_json, bin_dir, command };
            let summary = discomy_compilerd::run::run(&opts)?;
            tracing::info!(
                units = summary.counts.units,
                remote = summary.counts.remote,
                local = summary.counts.local,
                fallback = summary.counts.fallback,
                cache_hits = summary.counts.cache_hits,
                failed = summary.counts.failed,
                wall_s = summary.wall_s,
                "discomy: build finished"
            );
            Ok(ExitCode::from(u8::try_from(summary.exit_code & 0xff).unwrap_or(1)))
        }
        Cmd::Status { coordinator, token, json } => status(&coordinator, token.as_deref(), json),
        Cmd::Stats { socket, worker: None, json } => stats(&socket, json),
        Cmd::Stats { worker: Some(addr), json, .. } => worker_stats(&addr, json),
    }
}

/// `discomy stats --worker`: the product is the printed report.
#[allow(clippy::print_stdout)]
fn worker_stats(addr: &str, json: bool) -> Result<ExitCode> {
    let token = std::env::var("DISCOMY_TOKEN").ok();
    let auth = discomy_protocol::AuthConfig::from_option(token.as_deref());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stats = runtime.block_on(discomy_compilerd::coord::status::worker_stats(addr, &auth))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        println!("toolchains pushed: {}", stats.store.toolchains_pushed);
        for t in &stats.store.installed {
            println!("installed {} ({})", t.name, t.digest);
        }
        println!(
            "installs: {}, blobs received: {} ({} again)",
            stats.store.installs, stats.store.blobs_received, stats.store.blobs_received_again
        );
        for (result, n) in &stats.distcc {
            println!("distcc {result}: {n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `discomy stats`: the product is the printed report.
#[allow(clippy::print_stdout)]
fn stats(socket: &std::path::Path, json: bool) -> Result<ExitCode> {
    let stats =
        discomy_compilerd::coord::status::agent_stats(socket).map_err(anyhow::Error::msg)?;
    if json {
        let view = discomy_compilerd::coord::status::AgentStatsJson::from(&stats);
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", discomy_compilerd::coord::status::render_agent_stats(&stats));
    }
    Ok(ExitCode::SUCCESS)
}

/// `discomy status`: the product is the printed report.
#[allow(clippy::print_stdout)]
fn status(coordinator: &str, token: Option<&str>, json: bool) -> Result<ExitCode> {
    use discomy_compilerd::coord::discover::CoordinatorAddr;
    let addr = CoordinatorAddr::explicit(coordinator).to_string();
    let auth = discomy_protocol::AuthConfig::from_option(token);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let farm = runtime
        .block_on(discomy_compilerd::coord::status::fetch(&addr, &auth))
        .map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&farm)?);
    } else {
        print!("{}", discomy_compilerd::coord::status::render(&farm));
    }
    Ok(ExitCode::SUCCESS)
}
