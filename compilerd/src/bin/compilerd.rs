//! `discomy-compilerd`: runs a host's agent or worker role. Parsing only; the work is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use discomy_compilerd::agent::{self, AgentConfig};
use discomy_compilerd::coord::discover::CoordinatorAddr;
use discomy_compilerd::distcc::cidr::Cidr;
use discomy_compilerd::hosts::parse_host_list;
use discomy_compilerd::sandbox::{self, Limits};
use discomy_compilerd::store::seed::seed_local_compilers_named;
use discomy_compilerd::store::tools::ToolStore;
use discomy_compilerd::worker::distcc::DistccConfig;
use discomy_compilerd::worker::exec::Runner;
use discomy_compilerd::worker::{self, WorkerConfig};
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
        env = "DISCOMY_NO_MDNS",
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
    Worker {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:3633")]
        listen: SocketAddr,
        /// Concurrent compiles (default: number of cores).
        #[arg(long)]
        slots: Option<usize>,
        /// Write the bound address (`IP:PORT`) to this file once listening.
        #[arg(long)]
        addr_file: Option<PathBuf>,
        /// Per-unit wall-time limit, in seconds.
        #[arg(long, default_value_t = 600)]
        compile_timeout: u64,
        /// Per-unit CPU-time limit, in seconds.
        #[arg(long, default_value_t = 600)]
        cpu_secs: u64,
        /// Per-unit address-space limit, in MiB.
        #[arg(long, default_value_t = 4096)]
        mem_mb: u64,
        /// Directory for unit directories (default: under /dev/shm when writable, else the
        /// system temp dir).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Toolchain store (default: ~/.cache/discomy/worker-store).
        #[arg(long)]
        store: Option<PathBuf>,
        /// Size bound of the toolchain store, in MiB.
        #[arg(long, default_value_t = 8192)]
        store_mb: u64,
        /// Run compilers directly on the host instead of in a sandbox. Only this host's own
        /// compilers can then be used. For hosts that cannot create namespaces; never on a farm
        /// that accepts units from machines you do not control.
        #[arg(long)]
        insecure_no_sandbox: bool,
        /// Also put each sandboxed unit in fresh pids/memory cgroups (exact per-unit limits).
        /// Joining one costs 10-16 ms on a busy cgroup v1 host, paid by the helper waiting ready
        /// for the next unit rather than by the unit. Without it, per-slot-uid rlimits apply.
        #[arg(long)]
        sandbox_cgroups: bool,
        /// Also serve real distcc clients (protocols 1 and 2) on ADDR (`IP` or `IP:PORT`, port
        /// 3632 by default).
        #[arg(long, value_name = "ADDR")]
        distcc_listen: Option<String>,
        /// Networks whose distcc clients may compile here (repeatable; default: loopback only).
        #[arg(long, value_name = "CIDR")]
        allow: Vec<Cidr>,
        /// `IP:PORT` agents reach this worker at, sent to the coordinator (default: this
        /// host's address on the route to the coordinator, with the listening port).
        #[arg(long)]
        advertise: Option<String>,
        /// Offer only these of the host's compilers (comma-separated names as on PATH, such as
        /// `gcc,g++,cc,c++`; default: every compiler on PATH). Others still arrive as shipped
        /// toolchains.
        #[arg(long, value_delimiter = ',', value_name = "NAMES")]
        seed_compilers: Vec<String>,
    },
    /// Serve discomy-cc wrappers on this build host and ship their units to workers.
    Agent {
        /// Unix socket for wrappers.
        #[arg(long, env = "DISCOMY_SOCKET", default_value = discomy_wrapper::client::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Workers, distcc syntax: host[:port][/limit], comma or space separated.
        #[arg(long, env = "DISCOMY_HOSTS", default_value = "")]
        hosts: String,
        /// Seconds a failing worker is left alone.
        #[arg(long, default_value_t = 60)]
        backoff: u64,
        /// Store for toolchains uploaded by wrappers (default: ~/.cache/discomy/agent-store).
        #[arg(long)]
        store: Option<PathBuf>,
    },
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
        Role::Worker {
            listen,
            slots,
            addr_file,
            compile_timeout,
            cpu_secs,
            mem_mb,
            work_dir,
            store,
            store_mb,
            insecure_no_sandbox,
            sandbox_cgroups,
            distcc_listen,
            allow,
            advertise,
            seed_compilers,
        } => {
            let wall = Duration::from_secs(compile_timeout);
            let slots = slots
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let runner = if insecure_no_sandbox {
                tracing::warn!("running compilers WITHOUT a sandbox (--insecure-no-sandbox)");
                Runner::Host { wall }
            } else {
                let helper = std::env::current_exe()?.with_file_name("discomy-sandbox");
                sandbox::probe(&helper).map_err(|why| {
                    anyhow::anyhow!(
                        "cannot sandbox compiles on this host: {why} (see --insecure-no-sandbox)"
                    )
                })?;
                let limits = Limits {
                    cpu_secs,
                    mem_bytes: mem_mb << 20,
                    wall,
                    cgroups: sandbox_cgroups,
                    ..Limits::default()
                };
                // One helper per slot waits ready, its cgroup joined (see sandbox::warm).
                let warm = std::sync::Arc::new(sandbox::WarmPool::new(
                    helper.clone(),
                    limits.clone(),
                    slots,
                ));
                warm.fill();
                Runner::Sandbox { helper, limits, warm: Some(warm) }
            };
            let store_dir = store
                .unwrap_or_else(|| discomy_wrapper::identity::cache_dir().join("worker-store"));
            let store = ToolStore::open(&store_dir, store_mb << 20, true).with_context(|| {
                format!("failed to open the toolchain store {}", store_dir.display())
            })?;
            let path_var = std::env::var_os("PATH").unwrap_or_default();
            let compilers = seed_local_compilers_named(&store, path_var, &seed_compilers).await;
            let distcc = match distcc_listen {
                None => None,
                Some(addr) => {
                    let addr = distcc_address(&addr)?;
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("failed to listen for distcc on {addr}"))?;
                    let allow = if allow.is_empty() { Cidr::loopback() } else { allow };
                    Some((listener, DistccConfig { allow, compilers, limits: Default::default() }))
                }
            };
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("failed to listen on {listen}"))?;
            let bound = listener.local_addr()?;
            if let Some(file) = addr_file {
                discomy_protocol::plumbing::write_atomically(
                    &file,
                    format!("{bound}\n").as_bytes(),
                )
                .with_context(|| format!("failed to write {}", file.display()))?;
            }
            let coordinator = coordinator.filter(|c| {
                let local_only = listen.ip().is_loopback() && c.is_mdns();
                if local_only {
                    tracing::info!("listening on loopback: no coordinator discovery");
                }
                !local_only
            });
            let running = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let config = WorkerConfig {
                slots,
                auth,
                runner,
                node_name: bound.to_string(),
                work_dir: work_dir.unwrap_or_else(|| {
                    let dir = worker::default_work_dir();
                    // Default directories that killed workers left behind go.
                    if let Some(parent) = dir.parent() {
                        discomy_compilerd::sandbox::stale::remove_dirs_of_dead_pids(
                            parent,
                            worker::WORK_DIR_PREFIX,
                        );
                    }
                    dir
                }),
                running: running.clone(),
            };
            if let Some(addr) = coordinator {
                let info = discomy_compilerd::coord::node::NodeInfo {
                    host: discomy_compilerd::coord::discover::host_id(),
                    advertise,
                    port: bound.port(),
                    slots: u32::try_from(config.slots).unwrap_or(u32::MAX),
                    store_dir: store.dir().to_path_buf(),
                    running,
                    work_dir: config.work_dir.clone(),
                };
                let auth = config.auth.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(discomy_compilerd::coord::node::run(addr, info, auth, shutdown));
            }
            let work_dir = config.work_dir.clone();
            let result = worker::run(listener, distcc, config, store, shutdown).await;
            let _ = std::fs::remove_dir_all(work_dir);
            Ok(result?)
        }
        Role::Agent { socket, hosts, backoff, store } => {
            let hosts = if hosts.trim().is_empty() {
                discomy_compilerd::run::configured_hosts(None).unwrap_or_default()
            } else {
                hosts
            };
            let hosts = parse_host_list(&hosts).context("bad --hosts / DISCOMY_HOSTS")?;
            let mut config = AgentConfig::new(hosts);
            config.auth = auth;
            config.backoff = Duration::from_secs(backoff);
            if let Some(dir) = store {
                config.store_dir = dir;
            }
            let loopback_only = !config.hosts.is_empty()
                && config.hosts.iter().all(|h| {
                    h.host == "localhost"
                        || h.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
                });
            config.coordinator = coordinator.filter(|c| {
                if loopback_only && c.is_mdns() {
                    tracing::info!("every host is on loopback: no coordinator discovery");
                }
                !(loopback_only && c.is_mdns())
            });
            Ok(agent::run(socket, config, shutdown).await?)
        }
    }
}

/// `IP:PORT`, or `IP` alone with distcc's port.
fn distcc_address(text: &str) -> Result<SocketAddr> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip: std::net::IpAddr = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .with_context(|| format!("--distcc-listen {text}: expected IP or IP:PORT"))?;
    Ok(SocketAddr::new(ip, discomy_protocol::distcc::DEFAULT_PORT))
}
