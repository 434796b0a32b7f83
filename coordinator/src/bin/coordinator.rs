//! `discomy-coordinator`: the farm's scheduler daemon. Parsing only; the work is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use discomy_coordinator::server::{self, CoordinatorConfig};
use discomy_protocol::AuthConfig;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "discomy-coordinator", version, about = "discomy farm coordinator (scheduler)")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:3634")]
    listen: SocketAddr,
    /// The farm's name; nodes and agents of other farms on the same network ignore this one.
    #[arg(long, env = "DISCOMY_FARM", default_value = "default")]
    farm: String,
    /// Farm token; nodes, agents and status clients prove it. Without one, only loopback peers.
    #[arg(long, env = "DISCOMY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Do not advertise the coordinator over mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Write the bound address (`IP:PORT`) to this file once listening.
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Seconds without a load report (nodes report every second) after which a node is out of
    /// the farm and its units are placed again. Raise it for farms over slow or lossy links.
    #[arg(long, default_value_t = 2.5, value_parser = positive_seconds)]
    node_timeout: f64,
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (1.5..=3600.0).contains(&s) => Ok(s),
        _ => Err(format!("{text:?}: expected seconds between 1.5 and 3600")),
    }
}

fn main() -> std::process::ExitCode {
    discomy_protocol::plumbing::daemon::init_tracing();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn run() -> Result<()> {
    let cli = Cli::parse();
    let auth = AuthConfig::from_option(cli.token.as_deref());
    let shutdown = CancellationToken::new();
    discomy_protocol::plumbing::daemon::cancel_on_signals(shutdown.clone());
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("failed to listen on {}", cli.listen))?;
    let bound = listener.local_addr()?;
    if let Some(file) = cli.addr_file {
        discomy_protocol::plumbing::write_atomically(&file, format!("{bound}\n").as_bytes())
            .with_context(|| format!("failed to write {}", file.display()))?;
    }
    let _advert = if cli.no_mdns {
        None
    } else {
        match discomy_coordinator::mdns::advertise(&cli.farm, bound.port()) {
            Ok(a) => Some(a),
            Err(err) => {
                tracing::warn!(%err, "mDNS advertisement failed; nodes need --coordinator");
                None
            }
        }
    };
    let mut config = CoordinatorConfig::new(cli.farm, auth);
    config.node_timeout = std::time::Duration::from_secs_f64(cli.node_timeout);
    Ok(server::run(listener, config, shutdown).await?)
}
