//! `discomy-coordinator`: the farm's scheduler daemon. Parsing only; the work is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use discomy_coordinator::config_manager::CoordinatorFile;
use discomy_coordinator::ops::{self, Ops};
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
    /// Prefer `DISCOMY_TOKEN`, `--token-file` or the configuration's `token_file`: arguments
    /// are visible to every user in `ps`.
    #[arg(long, env = "DISCOMY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the farm token (its first line).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
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
    /// Configuration file (TOML): the build queue (`[ops]`), the token file.
    #[arg(long, env = "DISCOMY_COORDINATOR_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve the build queue's HTTP API here (overrides `ops.api_listen`).
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<SocketAddr>,
    /// The build queue's database, blobs and logs (overrides `ops.state_dir`).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Write the API's bound address (`IP:PORT`) to this file once listening.
    #[arg(long, value_name = "FILE")]
    api_addr_file: Option<PathBuf>,
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
    let mut file = match &cli.config {
        Some(path) => CoordinatorFile::load(path)?,
        None => CoordinatorFile::default(),
    };
    let (flag_token, source) =
        discomy_protocol::plumbing::secret::token(cli.token.clone(), cli.token_file.as_deref())?;
    let from_config = match &cli.config {
        Some(path) => file.token(path)?,
        None => None,
    };
    if from_config.is_none() && source == discomy_protocol::plumbing::secret::Source::CommandLine {
        tracing::warn!(
            "the farm token was given on the command line, where every user of this host can \
             read it (ps); use DISCOMY_TOKEN, --token-file or the configuration's token_file"
        );
    }
    let token = from_config.or(flag_token);
    let auth = AuthConfig::from_option(token.as_deref());
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
    if let Some(addr) = cli.api_listen {
        file.ops.api_listen = Some(addr);
    }
    if let Some(dir) = cli.state_dir {
        file.ops.state_dir = dir;
    }
    let api = match file.ops.api_listen {
        Some(addr) => {
            let ops = Ops::open(file.ops.clone(), token.as_deref()).with_context(|| {
                format!("failed to open the build queue in {}", file.ops.state_dir.display())
            })?;
            let api_listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("failed to listen on {addr} (API)"))?;
            let bound = api_listener.local_addr()?;
            if let Some(path) = &cli.api_addr_file {
                discomy_protocol::plumbing::write_atomically(path, format!("{bound}\n").as_bytes())
                    .with_context(|| format!("failed to write {}", path.display()))?;
            }
            tracing::info!(%bound, "build queue API listening");
            Some(tokio::spawn(ops::serve(api_listener, ops, shutdown.clone())))
        }
        None => None,
    };
    let mut config = CoordinatorConfig::new(cli.farm, auth);
    config.node_timeout = std::time::Duration::from_secs_f64(cli.node_timeout);
    server::run(listener, config, shutdown.clone()).await?;
    shutdown.cancel();
    if let Some(api) = api {
        api.await.context("the API task")?.context("the API server")?;
    }
    Ok(())
}
