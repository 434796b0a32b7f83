//! discomy-bench: command-line entry point. Parses the subcommands (`overhead`, `build`,
//! `toolchain`, `distcc`, `cache`, `queue`, …), installs
//! the Ctrl-C handler that stops started daemons, and maps results to exit codes (0 ok, 1 object
//! mismatch, 2 error).

// The printed report (stdout) and progress (stderr) are this program's product.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cache_bench;
mod coord_scale;
mod distcc_compat;
mod farm;
mod lto_bench;
mod nodes;
mod overhead;
mod proc;
mod project;
mod queue_bench;
mod queue_overhead;
mod sim;
mod stats;
mod tls_cost;
mod toolchain_cost;
mod whole_build;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Benchmarks of discomy against local gcc and distcc, on real C code (Lua 5.4), on loopback.
#[derive(Parser, Debug)]
#[command(name = "discomy-bench", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Per-job overhead, one compile at a time: local gcc vs distcc vs discomy-cc.
    Overhead(overhead::Args),
    /// Whole-project `make -jN` of Lua: plain vs distcc vs `discomy run --local-farm`.
    Build(whole_build::Args),
    /// Whole Lua builds through the distcc protocol: distcc client to distccd and to compilerd,
    /// discomy-cc to compilerd and to distccd; plus LZO1X-1 throughput.
    Distcc(distcc_compat::Args),
    /// One-time cost of packaging and installing a toolchain, and the per-unit cost of the
    /// worker's sandbox (sandboxed vs `--insecure-no-sandbox` worker, same units).
    Toolchain(toolchain_cost::Args),
    /// Placement policies on simulated fleets (virtual clock): makespan vs the lower bound.
    Sim(sim::Args),
    /// The coordinator daemon at scale: simulated nodes heartbeating, agents asking for
    /// placements over loopback; placements/s, latency percentiles, daemon RSS.
    CoordScale(coord_scale::Args),
    /// The object cache vs ccache: hit latency (direct and preprocessor mode) on small units and
    /// a whole-Lua amalgamation, and warm whole-project rebuilds.
    Cache(cache_bench::Args),
    /// The build queue through the real coordinator's HTTP API, SQLite and PostgreSQL: jobs
    /// accepted and dispatched per second, scheduling CPU per job.
    Queue(queue_bench::Args),
    /// The build queue's cost per package: `discomy submit --batch` to a coordinator and a
    /// builder vs the same rpmbuilds in a shell loop, same chroot and isolation.
    QueueOverhead(queue_overhead::Args),
    /// What the working fleet's mutual TLS costs a unit: the same units through a plain and a
    /// TLS agent-to-worker link, side by side, default settings.
    TlsCost(tls_cost::Args),
    /// Lua with Rocky 9's flags and LTO links: compile and link phases, plain gcc vs
    /// `discomy run --local-farm`, LTRANS units remote, linked programs compared.
    Lto(lto_bench::Args),
}

/// Options shared by both subcommands.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// Directory holding lua5.4_*.orig.tar.gz [default: $DISCOMY_PROJECTS_DIR, else
    /// <workspace>/target/projects].
    #[arg(long)]
    pub project_dir: Option<PathBuf>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Slots of each farm (distccd --jobs and DISTCC_HOSTS /N; discomy worker --slots / --local-farm).
    #[arg(long, default_value_t = 2)]
    pub farm_slots: u32,
    /// Skip the distcc mode.
    #[arg(long)]
    pub no_distcc: bool,
    /// Skip the discomy mode (and the wrapper start-up measurement).
    #[arg(long)]
    pub no_discomy: bool,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = proc::install_interrupt_handler() {
        eprintln!("discomy-bench: warning: {e:#}");
    }
    let result = match &cli.cmd {
        Cmd::Overhead(a) => overhead::run(a),
        Cmd::Build(a) => whole_build::run(a),
        Cmd::Toolchain(a) => toolchain_cost::run(a),
        Cmd::Distcc(a) => distcc_compat::run(a),
        Cmd::Sim(a) => sim::run(a),
        Cmd::CoordScale(a) => coord_scale::run(a),
        Cmd::Cache(a) => cache_bench::run(a),
        Cmd::Queue(a) => queue_bench::run(a),
        Cmd::QueueOverhead(a) => queue_overhead::run(a).map(|()| 0),
        Cmd::TlsCost(a) => tls_cost::run(a),
        Cmd::Lto(a) => lto_bench::run(a),
    };
    match result {
        Ok(0) => {}
        Ok(code) => {
            eprintln!("discomy-bench: objects differ (see the mismatch lines above)");
            std::process::exit(code);
        }
        Err(e) => {
            // The cause chain without anyhow's backtrace (which RUST_BACKTRACE would add).
            eprintln!("discomy-bench: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("caused by: {cause}");
            }
            std::process::exit(2);
        }
    }
}
