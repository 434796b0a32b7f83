//! `discomy-compilerd`: runs a host's agent or worker role. Parsing only; the work is in the
//! library (`worker::start`, `agent::start`).

use anyhow::Result;
use clap::{Parser, Subcommand};
use discomy_compilerd::agent::start::AgentOptions;
use discomy_compilerd::coord::discover::CoordinatorAddr;
use discomy_compilerd::worker::start::WorkerOptions;
use discomy_protocol::AuthConfig;
use discomy_protocol::plumbing::daemon;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "discomy-compilerd",
    version,
    about = "discomy compile node: agent and worker roles"
)]
struct Cli {
    /// Farm token; nodes and clients prove it in the handshake. Without one, only loopback peers.
    #[arg(long, env = "DISCOMY_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Coordinator (`host[:port]`): workers join its farm, agents ask it where units run.
    /// Without one, the coordinator of `--farm` is discovered over mDNS.
    #[arg(long, env = "DISCOMY_COORDINATOR", global = true)]
    coordinator: Option<String>,
    /// The farm to discover over mDNS when no coordinator address is given.
    #[arg(long, env = "DISCOMY_FARM", global = true, default_value = "default")]
    farm: String,
    /// No coordinator discovery: with no `--coordinator`, use the host list only. Implied for a
    /// worker listening on loopback and an agent whose hosts are all on loopback: nothing
    /// leaves the machine unless asked. `DISCOMY_NO_MDNS` takes 1/0, true/false, yes/no.
    #[arg(
        long,
        env = discomy_protocol::plumbing::env::NO_MDNS,
        global = true,
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::SetTrue
    )]
    no_mdns: bool,
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Compile units for other hosts (donor host).
    Worker(WorkerOptions),
    /// Serve discomy-cc wrappers on this build host and ship their units to workers.
    Agent(AgentOptions),
}

fn main() -> std::process::ExitCode {
    daemon::init_tracing();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run() -> Result<()> {
    let cli = Cli::parse();
    let auth = AuthConfig::from_option(cli.token.as_deref());
    let shutdown = CancellationToken::new();
    daemon::cancel_on_signals(shutdown.clone());
    let coordinator = match (&cli.coordinator, cli.no_mdns) {
        (Some(addr), _) => Some(CoordinatorAddr::explicit(addr)),
        (None, false) => Some(CoordinatorAddr::Mdns { farm: cli.farm.clone() }),
        (None, true) => None,
    };
    match cli.role {
        Role::Worker(opts) => {
            discomy_compilerd::worker::start::start(opts, auth, coordinator, shutdown).await?
        }
        Role::Agent(opts) => {
            discomy_compilerd::agent::start::start(opts, auth, coordinator, shutdown).await?
        }
    }
    Ok(())
}
