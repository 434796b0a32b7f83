//! `discomy-compilerd`: runs a host's agent, worker or builder role. Parsing only; the work is in
//! the library (`worker::start`, `agent::start`, `builder::run`).

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
    /// Prefer `DISCOMY_TOKEN` or `--token-file`: arguments are visible to every user in `ps`.
    #[arg(long, env = "DISCOMY_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// A file holding the farm token (its first line).
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
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
    /// Build whole packages in chroots for the coordinator's build queue.
    Builder(BuilderArgs),
    /// Write man pages and shell completions (for packages).
    #[command(hide = true)]
    GenerateDocs(discomy_protocol::plumbing::docs::Args),
}

#[derive(clap::Args)]
struct BuilderArgs {
    /// The builder's TOML configuration (its token comes from its `token_file` or
    /// `DISCOMY_TOKEN`, never from the command line).
    #[arg(long)]
    config: std::path::PathBuf,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (overrides `metrics_listen`).
    #[arg(long, env = "DISCOMY_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
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
    if let Role::GenerateDocs(args) = &cli.role {
        use clap::CommandFactory;
        return Ok(discomy_protocol::plumbing::docs::generate(Cli::command(), &args.out)?);
    }
    let (token, source) =
        discomy_protocol::plumbing::secret::token(cli.token.clone(), cli.token_file.as_deref())?;
    warn_if_on_command_line(source);
    let auth = AuthConfig::from_option(token.as_deref());
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
        Role::Builder(args) => {
            let mut config = discomy_compilerd::builder::Config::load(&args.config)?;
            if args.metrics_listen.is_some() {
                config.metrics_listen = args.metrics_listen;
            }
            tokio::task::spawn_blocking(move || discomy_compilerd::builder::run(config, shutdown))
                .await??
        }
        Role::GenerateDocs(_) => unreachable!("handled above"),
    }
    Ok(())
}

/// Warns when the farm token came from the command line (every user of the host can read it).
fn warn_if_on_command_line(source: discomy_protocol::plumbing::secret::Source) {
    if source == discomy_protocol::plumbing::secret::Source::CommandLine {
        tracing::warn!(
            "the farm token was given on the command line, where every user of this host can \
             read it (ps); use DISCOMY_TOKEN or --token-file"
        );
    }
}
