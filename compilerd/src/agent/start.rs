//! Starting an agent as `discomy-compilerd agent` does: its options, the host list (the flag,
//! `DISCOMY_HOSTS`, the config files, `DISTCC_HOSTS`), discovery dropped when every host is on
//! loopback, then [`super::run`] until shutdown.

use std::path::PathBuf;
use std::time::Duration;

use discomy_protocol::AuthConfig;
use tokio_util::sync::CancellationToken;

use super::AgentConfig;
use crate::coord::discover::CoordinatorAddr;
use crate::hosts::parse_host_list;

/// The agent's options (`discomy-compilerd agent …`).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentOptions {
    /// Unix socket for wrappers.
    #[arg(long, env = "DISCOMY_SOCKET", default_value = discomy_wrapper::client::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Workers, distcc syntax: host[:port][/limit], comma or space separated.
    #[arg(long, env = "DISCOMY_HOSTS", default_value = "")]
    pub hosts: String,
    /// Seconds a failing worker is left alone.
    #[arg(long, default_value_t = 60)]
    pub backoff: u64,
    /// Store for toolchains uploaded by wrappers (default: ~/.cache/discomy/agent-store).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Fraction of remote units the wrapper also compiles locally and compares, after every
    /// node's first units (always checked); a node whose object differs is quarantined.
    #[arg(long, env = "DISCOMY_VERIFY_RATE", default_value_t = 0.01)]
    pub verify_rate: f64,
    /// Check no remote result at all, not even a node's first ones: for workers this host runs
    /// itself (`discomy run --local-farm` passes it).
    #[arg(long)]
    pub no_verify: bool,
    /// The group whose members may use the socket (mode 0660); `everyone` for mode 0666.
    /// Default: the `discomy` group when the host has one, else everyone.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (units by outcome, latency, bytes).
    #[arg(long, env = "DISCOMY_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Why an agent did not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The host list does not parse.
    #[error("bad --hosts / DISCOMY_HOSTS: {0}")]
    Hosts(String),
    /// The socket's group does not exist.
    #[error("{0}")]
    SocketGroup(String),
    /// Serving failed.
    #[error("agent: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs an agent until `shutdown`; `coordinator` is the farm to ask for placements, if any.
pub async fn start(
    opts: AgentOptions,
    auth: AuthConfig,
    coordinator: Option<CoordinatorAddr>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let hosts = if opts.hosts.trim().is_empty() {
        crate::hosts::configured_hosts(None).unwrap_or_default()
    } else {
        opts.hosts
    };
    let hosts = parse_host_list(&hosts).map_err(|e| StartError::Hosts(e.to_string()))?;
    let mut config = AgentConfig::new(hosts);
    config.auth = auth;
    config.backoff = Duration::from_secs(opts.backoff);
    config.verify_rate = opts.verify_rate;
    config.metrics_listen = opts.metrics_listen;
    config.verify_first = if opts.no_verify { 0 } else { super::verify::FIRST_UNITS };
    if opts.no_verify {
        config.verify_rate = 0.0;
    }
    config.socket_access = super::SocketAccess::from_option(opts.socket_group.as_deref())
        .map_err(StartError::SocketGroup)?;
    if let Some(dir) = opts.store {
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
    if config.coordinator.is_none() {
        // No coordinator session tells this agent of revoked workers: watch for them.
        crate::fleet::home::watch_revocations_in_background(shutdown.clone());
    }
    Ok(super::run(opts.socket, config, shutdown).await?)
}
