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
    /// The working fleet: this host's fleet directory (`ca.pem`, `node.pem`, `node.key` from
    /// `join`). Every TCP link is then mutual TLS with the farm's certificates, and the
    /// certificate renews itself from `--coordinator`.
    #[arg(long, env = "DISCOMY_FLEET_DIR", global = true, value_name = "DIR")]
    fleet_dir: Option<std::path::PathBuf>,
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
    /// Ask to join the working fleet with a join token; waits until an operator approves
    /// (`discomy nodes approve`), then writes this host's certificate into `--fleet-dir`.
    Join(JoinArgs),
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

#[derive(clap::Args)]
struct JoinArgs {
    /// The join token (`ID.SECRET`) from `discomy nodes token`; or, to join as an agent
    /// approved at once, a tenant token (`dsc_…`) of scope `compile` with `--roles agent`.
    #[arg(long, env = "DISCOMY_JOIN_TOKEN", hide_env_values = true)]
    join_token: String,
    /// The farm CA certificate to trust (the coordinator's `ca.pem`, from the bundle).
    #[arg(long, value_name = "FILE")]
    ca: std::path::PathBuf,
    /// This node's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Roles to ask for, comma-separated: worker, builder, agent.
    #[arg(long, value_delimiter = ',', default_value = "worker")]
    roles: Vec<String>,
    /// The donating organisation.
    #[arg(long, default_value = "")]
    organisation: String,
    /// Who to write to about this host.
    #[arg(long, default_value = "")]
    contact: String,
    /// The address it will serve on, or a note on its network.
    #[arg(long, default_value = "")]
    network: String,
    /// Return once the request is pending (run `join` again to fetch the certificate).
    #[arg(long)]
    no_wait: bool,
    /// Longest wait for the operator, seconds.
    #[arg(long, default_value_t = 3600)]
    wait: u64,
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
    let fleet_dir = cli.fleet_dir.clone();
    if let Role::Join(args) = cli.role {
        return join(args, cli.coordinator, fleet_dir).await;
    }
    if let Some(dir) = &fleet_dir {
        use discomy_compilerd::fleet::{FleetDir, install, renew_in_background};
        let tls = std::sync::Arc::new(
            FleetDir(dir.clone()).tls(discomy_protocol::tls::ClientAuth::Required)?,
        );
        // Renewal asks the coordinator given (or discovered), then the one the host enrolled
        // with; a host-list agent has only the latter.
        discomy_compilerd::fleet::home::remember(&FleetDir(dir.clone()));
        let enrolled = discomy_compilerd::fleet::home::enrolled();
        let (addr, stop) = (coordinator.clone(), shutdown.clone());
        let coordinators: discomy_compilerd::fleet::Coordinators = std::sync::Arc::new(move || {
            let (addr, stop) = (addr.clone(), stop.clone());
            Box::pin(async move {
                let mut all = match addr {
                    Some(addr) => addr.resolve_all(&stop).await,
                    None => Vec::new(),
                };
                all.extend(enrolled.map(str::to_owned).filter(|e| !all.contains(e)));
                all
            })
        });
        if coordinator.is_some() || enrolled.is_some() {
            renew_in_background(tls.clone(), dir.clone(), coordinators, shutdown.clone());
        } else {
            tracing::warn!(
                "no coordinator, and none recorded in the fleet directory: this host's \
                 certificate is not renewed"
            );
        }
        install(discomy_protocol::tls::Transport::Tls(tls));
    }
    match cli.role {
        Role::Worker(opts) => {
            discomy_compilerd::worker::start::start(opts, auth, coordinator, shutdown).await?
        }
        Role::Agent(opts) => {
            discomy_compilerd::agent::start::start(opts, auth, coordinator, shutdown).await?
        }
        Role::Builder(args) => {
            let mut config = discomy_compilerd::builder::Config::load(&args.config)?;
            config.fleet_dir = fleet_dir;
            if args.metrics_listen.is_some() {
                config.metrics_listen = args.metrics_listen;
            }
            tokio::task::spawn_blocking(move || discomy_compilerd::builder::run(config, shutdown))
                .await??
        }
        Role::GenerateDocs(_) | Role::Join(_) => unreachable!("handled above"),
    }
    Ok(())
}

/// `discomy-compilerd join`: prints the outcome as JSON on stdout.
#[allow(clippy::print_stdout)]
async fn join(
    args: JoinArgs,
    coordinator: Option<String>,
    dir: Option<std::path::PathBuf>,
) -> Result<()> {
    use discomy_compilerd::coord::node::{free_disk_mb, meminfo};
    use discomy_protocol::fleet::{FleetRole, HostFacts};
    let coordinator = coordinator.ok_or_else(|| anyhow::anyhow!("join needs --coordinator"))?;
    let dir = dir.ok_or_else(|| anyhow::anyhow!("join needs --fleet-dir"))?;
    let mut roles = Vec::new();
    for name in &args.roles {
        roles
            .push(FleetRole::parse(name.trim()).ok_or_else(|| {
                anyhow::anyhow!("unknown role {name:?} (worker, builder, agent)")
            })?);
    }
    let name = match args.name {
        Some(n) => n,
        None => discomy_compilerd::coord::discover::host_id(),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let facts = HostFacts {
        organisation: args.organisation,
        contact: args.contact,
        cores: u32::try_from(cores).unwrap_or(u32::MAX),
        memory_bytes: meminfo("MemTotal:").unwrap_or(0) << 20,
        disk_bytes: free_disk_mb(&dir) << 20,
        network: args.network,
    };
    let opts = discomy_compilerd::fleet::JoinOptions {
        coordinator,
        token: args.join_token,
        ca: args.ca,
        dir,
        name,
        roles,
        facts,
        no_wait: args.no_wait,
        wait: std::time::Duration::from_secs(args.wait),
    };
    let outcome = discomy_compilerd::fleet::join(&opts).await?;
    println!("{}", serde_json::to_string(&outcome)?);
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
