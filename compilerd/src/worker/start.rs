//! Starting a worker as `discomy-compilerd worker` does: its options, the sandbox checked (or
//! the host runner chosen), the warm helpers, the toolchain store opened and seeded with the
//! host's compilers, the listeners bound (and the distcc one), the address file written, the
//! coordinator joined, then [`super::run`] until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use discomy_protocol::AuthConfig;
use tokio_util::sync::CancellationToken;

use super::WorkerConfig;
use super::distcc::DistccConfig;
use super::exec::Runner;
use super::workdir::{self, WorkDirError};
use crate::coord::discover::CoordinatorAddr;
use crate::coord::node::{self, NodeInfo};
use crate::distcc::cidr::Cidr;
use crate::sandbox::{self, Limits};
use crate::store::seed::seed_local_compilers_named;
use crate::store::tools::ToolStore;

/// The worker's options (`discomy-compilerd worker …`).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerOptions {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:3633")]
    pub listen: SocketAddr,
    /// Concurrent compiles (default: number of cores).
    #[arg(long)]
    pub slots: Option<usize>,
    /// Write the bound address (`IP:PORT`) to this file once listening.
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
    /// Per-unit wall-time limit, in seconds.
    #[arg(long, default_value_t = 600)]
    pub compile_timeout: u64,
    /// Per-unit CPU-time limit, in seconds.
    #[arg(long, default_value_t = 600)]
    pub cpu_secs: u64,
    /// Per-unit address-space limit, in MiB.
    #[arg(long, default_value_t = 4096)]
    pub mem_mb: u64,
    /// Per-unit size of the writable unit directory, in MiB (a tmpfs in the sandbox; a unit
    /// that fills it is refused, and its build compiles it locally).
    #[arg(long, default_value_t = 1024)]
    pub unit_dir_mb: u64,
    /// Directory for unit directories (default: a fresh private one under /dev/shm when
    /// writable, else the system temp dir). An existing one must be a directory of this
    /// worker's user (or root) that no one else may write to.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Toolchain store (default: ~/.cache/discomy/worker-store).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Size bound of the toolchain store, in MiB.
    #[arg(long, default_value_t = 8192)]
    pub store_mb: u64,
    /// Run compilers directly on the host instead of in a sandbox. Only this host's own
    /// compilers can then be used. For hosts that cannot create namespaces; never on a farm
    /// that accepts units from machines you do not control.
    #[arg(long)]
    pub insecure_no_sandbox: bool,
    /// Also put each sandboxed unit in fresh pids/memory cgroups (exact per-unit limits).
    /// Joining one costs 10-16 ms on a busy cgroup v1 host, paid by the helper waiting ready
    /// for the next unit rather than by the unit. Without it, per-slot-uid rlimits apply.
    #[arg(long)]
    pub sandbox_cgroups: bool,
    /// Also serve real distcc clients (protocols 1 and 2) on ADDR (`IP` or `IP:PORT`, port
    /// 3632 by default).
    #[arg(long, value_name = "ADDR", value_parser = distcc_address)]
    pub distcc_listen: Option<SocketAddr>,
    /// Networks whose distcc clients may compile here (repeatable; default: loopback only).
    #[arg(long, value_name = "CIDR")]
    pub allow: Vec<Cidr>,
    /// `IP:PORT` agents reach this worker at, sent to the coordinator (default: this
    /// host's address on the route to the coordinator, with the listening port).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Offer only these of the host's compilers (comma-separated names as on PATH, such as
    /// `gcc,g++,cc,c++`; default: every compiler on PATH). Others still arrive as shipped
    /// toolchains.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub seed_compilers: Vec<String>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (slots, running units, compile times).
    #[arg(long, env = "DISCOMY_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Why a worker did not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The sandbox cannot be made here.
    #[error("cannot sandbox compiles on this host: {0} (see --insecure-no-sandbox)")]
    Sandbox(#[from] sandbox::ProbeError),
    /// The work directory cannot be used.
    #[error("{0}")]
    WorkDir(#[from] WorkDirError),
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

/// `IP:PORT`, or `IP` alone with distcc's port.
pub fn distcc_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let ip: std::net::IpAddr = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("{text}: expected IP or IP:PORT"))?;
    Ok(SocketAddr::new(ip, discomy_protocol::distcc::DEFAULT_PORT))
}

/// Runs a worker until `shutdown`; `coordinator` is the farm to join, if any (discovery over
/// mDNS is dropped for a worker listening on loopback).
pub async fn start(
    opts: WorkerOptions,
    auth: AuthConfig,
    coordinator: Option<CoordinatorAddr>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let wall = Duration::from_secs(opts.compile_timeout);
    let slots =
        opts.slots.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let store_dir =
        opts.store.unwrap_or_else(|| discomy_wrapper::identity::cache_dir().join("worker-store"));
    let store =
        ToolStore::open(&store_dir, opts.store_mb << 20, true).map_err(|e| StartError::Io {
            what: format!("failed to open the toolchain store {}", store_dir.display()),
            source: std::io::Error::other(e.to_string()),
        })?;
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let compilers = seed_local_compilers_named(&store, path_var, &opts.seed_compilers).await;
    let runner = if opts.insecure_no_sandbox {
        tracing::warn!("running compilers WITHOUT a sandbox (--insecure-no-sandbox)");
        Runner::Host { wall, seeded: Arc::new(compilers.values().copied().collect()) }
    } else {
        let helper = std::env::current_exe()
            .map_err(io("find this executable"))?
            .with_file_name("discomy-sandbox");
        sandbox::probe(&helper)?;
        let limits = Limits {
            cpu_secs: opts.cpu_secs,
            mem_bytes: opts.mem_mb << 20,
            work_bytes: opts.unit_dir_mb << 20,
            wall,
            cgroups: opts.sandbox_cgroups,
            ..Limits::default()
        };
        // One helper per slot waits ready, its cgroup joined (see sandbox::warm).
        let warm = Arc::new(sandbox::WarmPool::new(helper.clone(), limits.clone(), slots));
        warm.fill();
        Runner::Sandbox { helper, limits, warm: Some(warm) }
    };
    let distcc = match opts.distcc_listen {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(io(format!("failed to listen for distcc on {addr}")))?;
            let allow = if opts.allow.is_empty() { Cidr::loopback() } else { opts.allow };
            Some((listener, DistccConfig { allow, compilers, limits: Default::default() }))
        }
    };
    let listen = opts.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(io(format!("failed to listen on {listen}")))?;
    let bound = listener.local_addr().map_err(io("read the bound address"))?;
    if let Some(file) = &opts.addr_file {
        discomy_protocol::plumbing::write_atomically(file, format!("{bound}\n").as_bytes())
            .map_err(io(format!("failed to write {}", file.display())))?;
    }
    let coordinator = coordinator.filter(|c| {
        let local_only = listen.ip().is_loopback() && c.is_mdns();
        if local_only {
            tracing::info!("listening on loopback: no coordinator discovery");
        }
        !local_only
    });
    let work = workdir::prepare(opts.work_dir.as_deref())?;
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let config = WorkerConfig {
        slots,
        auth,
        runner,
        node_name: bound.to_string(),
        work_dir: work.path.clone(),
        running: running.clone(),
        metrics_listen: opts.metrics_listen,
    };
    if let Some(addr) = coordinator {
        let info = NodeInfo {
            host: crate::coord::discover::host_id(),
            advertise: opts.advertise,
            port: bound.port(),
            slots: u32::try_from(config.slots).unwrap_or(u32::MAX),
            store_dir: store.dir().to_path_buf(),
            running,
            work_dir: config.work_dir.clone(),
        };
        tokio::spawn(node::run(addr, info, config.auth.clone(), shutdown.clone()));
    } else {
        // No node session tells this worker of revoked agents: watch for them.
        crate::fleet::home::watch_revocations_in_background(shutdown.clone());
    }
    let result = super::run(listener, distcc, config, store, shutdown).await;
    if work.owned {
        let _ = std::fs::remove_dir_all(&work.path);
    }
    result.map_err(io("worker"))
}
