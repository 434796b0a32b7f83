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
    #[arg(long, global = true, env = "DISCOMY_COORDINATOR_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve the build queue's HTTP API here (overrides `ops.api_listen`).
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<SocketAddr>,
    /// The build queue's database, blobs and logs, and the quarantined workers (overrides
    /// `ops.state_dir`; with neither it nor `--config`, quarantines last until a restart).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Write the API's bound address (`IP:PORT`) to this file once listening.
    #[arg(long, value_name = "FILE")]
    api_addr_file: Option<PathBuf>,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (also at `/metrics` of the API).
    #[arg(long, env = "DISCOMY_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Speak icecream's monitor protocol here, so `icemon` shows the farm (read-only, no
    /// authentication: bind it to loopback or a firewalled address; icecream uses port 8765).
    #[arg(long, env = "DISCOMY_ICEMON_LISTEN", value_name = "ADDR")]
    icemon_listen: Option<SocketAddr>,
    /// The working fleet: the farm CA, join requests and node certificates live here (made on
    /// first start). The listener then speaks mutual TLS only; without it, a plain-token lab
    /// farm.
    #[arg(long, env = "DISCOMY_FLEET_DIR", value_name = "DIR")]
    fleet_dir: Option<PathBuf>,
    /// How long a node's certificate lives (it renews itself at two thirds), seconds.
    #[arg(long, default_value_t = 86_400)]
    cert_lifetime: u64,
    /// With `--fleet-dir`, the API is served over HTTPS only; its certificate names the API's
    /// listen address (every interface's for a wildcard), localhost on loopback, the host
    /// name, and each NAME given here (a DNS name or an IP address clients use; repeatable).
    #[arg(long = "http-name", value_name = "NAME")]
    http_names: Vec<String>,
    /// Instead of running the daemon: the published repositories (`discomy repo` runs this).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Write man pages and shell completions (for packages).
    #[command(hide = true)]
    GenerateDocs(discomy_protocol::plumbing::docs::Args),
    /// Published repositories (`[ops.publish]` of `--config`).
    Repo {
        #[command(subcommand)]
        command: RepoCmd,
    },
}

#[derive(clap::Subcommand)]
enum RepoCmd {
    /// Re-check a published repository: every file against the recorded sha256, repomd.xml's
    /// checksums, the signatures of repomd.xml and of every RPM. Exit 1 when anything is wrong.
    /// The result is recorded beside the repository (`NAME.verify.json`) for the web UI.
    Verify {
        /// The repository (`CHROOT-ARCH`), or a path to one.
        name: String,
        /// The signing key's public half (ASCII-armored), as you trust it (not the repository's
        /// own copy).
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mirror a published repository to a directory (switched atomically) or an rsync target
    /// (`host:path`, `rsync://…`; packages first, metadata last).
    Sync {
        /// The repository (`CHROOT-ARCH`), or a path to one.
        name: String,
        /// Where to.
        dest: String,
    },
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (1.5..=3600.0).contains(&s) => Ok(s),
        _ => Err(format!("{text:?}: expected seconds between 1.5 and 3600")),
    }
}

fn main() -> std::process::ExitCode {
    discomy_protocol::plumbing::daemon::init_tracing();
    let cli = Cli::parse();
    if let Some(Command::GenerateDocs(args)) = &cli.command {
        use clap::CommandFactory;
        return match discomy_protocol::plumbing::docs::generate(Cli::command(), &args.out) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!("generate-docs: {err}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Repo { command }) = &cli.command {
        return match repo(&cli, command) {
            Ok(code) => code,
            Err(err) => {
                tracing::error!("{err:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `discomy-coordinator repo …`: the product is the printed report.
#[allow(clippy::print_stdout)]
fn repo(cli: &Cli, command: &RepoCmd) -> Result<std::process::ExitCode> {
    use discomy_coordinator::ops::final_aggregator as agg;
    let file = match &cli.config {
        Some(path) => CoordinatorFile::load(path)?,
        None => CoordinatorFile::default(),
    };
    let path_of = |name: &str| -> Result<PathBuf> {
        if name.contains('/') {
            return Ok(PathBuf::from(name));
        }
        let publish = file.ops.publish.as_ref().context("no [ops.publish] in --config")?;
        Ok(publish.repos_root.join(name))
    };
    match command {
        RepoCmd::Verify { name, public_key, json } => {
            let path = path_of(name)?;
            let result = agg::verify(&path, public_key);
            // Kept beside the repository for the web UI; not being able to is no verify failure.
            match agg::record_verify(&path, &result, &agg::who("discomy repo verify")) {
                Ok(Some(record)) => tracing::info!("recorded in {}", record.display()),
                Ok(None) => tracing::info!("not a published repository's link: not recorded"),
                Err(err) => tracing::warn!("the verify's result is not recorded: {err}"),
            }
            let report = result?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(if report.is_ok() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            })
        }
        RepoCmd::Sync { name, dest } => {
            let keep = file.ops.publish.as_ref().map_or(3, |p| p.keep_generations);
            let report = agg::sync(&path_of(name)?, &agg::SyncDest::parse(dest), keep)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn run(cli: Cli) -> Result<()> {
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
    // The fleet (CA, admin certificate) is ready before the address file says we listen.
    let fleet = match &cli.fleet_dir {
        Some(dir) => {
            let lifetime = std::time::Duration::from_secs(cli.cert_lifetime.max(1));
            let fleet = discomy_coordinator::fleet::Fleet::open(dir, &cli.farm, lifetime)
                .with_context(|| format!("failed to open the fleet directory {}", dir.display()))?;
            Some(std::sync::Arc::new(fleet))
        }
        None => None,
    };
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
    let state_given = cli.state_dir.is_some() || cli.config.is_some();
    if let Some(dir) = cli.state_dir {
        file.ops.state_dir = dir;
    }
    let mut config = CoordinatorConfig::new(cli.farm, auth);
    config.node_timeout = std::time::Duration::from_secs_f64(cli.node_timeout);
    // With a state directory (given, or the configuration's), quarantines outlive restarts.
    if state_given {
        std::fs::create_dir_all(&file.ops.state_dir)
            .with_context(|| format!("failed to create {}", file.ops.state_dir.display()))?;
        config.quarantine_file = Some(file.ops.state_dir.join("quarantine.json"));
    }
    let fleet_for_api = fleet.clone();
    if fleet.is_some() && file.ops.public_url.is_none() {
        if let Some(addr) = file.ops.api_listen {
            file.ops.public_url = Some(format!("https://{addr}"));
        }
    }
    config.fleet = fleet;
    let farm = server::FarmHandle::new(config);
    let ops = match file.ops.api_listen {
        Some(_) => Some(Ops::open(file.ops.clone(), token.as_deref()).with_context(|| {
            format!("failed to open the build queue in {}", file.ops.state_dir.display())
        })?),
        None => None,
    };
    if let (Some(ops), Some(fleet)) = (&ops, farm.fleet()) {
        ops.attach_fleet(fleet);
    }
    let render = discomy_coordinator::metrics::renderer(farm.clone(), ops.clone());
    let metrics = match cli.metrics_listen {
        Some(addr) => {
            let listener = discomy_protocol::plumbing::metrics::bind(addr).await?;
            let serve = discomy_protocol::plumbing::metrics::serve(
                listener,
                render.clone(),
                shutdown.clone(),
            );
            Some(tokio::spawn(serve))
        }
        None => None,
    };
    let icemon = match cli.icemon_listen {
        Some(addr) => {
            let listener = discomy_coordinator::icemon::bind(addr)
                .await
                .with_context(|| format!("failed to listen on {addr} (icemon)"))?;
            let serve =
                discomy_coordinator::icemon::serve(listener, farm.clone(), shutdown.clone());
            Some(tokio::spawn(serve))
        }
        None => None,
    };
    let api = match (file.ops.api_listen, ops) {
        (Some(addr), Some(ops)) => {
            let api_listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("failed to listen on {addr} (API)"))?;
            let bound = api_listener.local_addr()?;
            if let Some(path) = &cli.api_addr_file {
                discomy_protocol::plumbing::write_atomically(path, format!("{bound}\n").as_bytes())
                    .with_context(|| format!("failed to write {}", path.display()))?;
            }
            let tls = match &fleet_for_api {
                Some(fleet) => {
                    let names = discomy_coordinator::fleet::https_names(bound, &cli.http_names)
                        .map_err(anyhow::Error::msg)?;
                    tracing::info!(?names, "the API serves HTTPS only (working fleet)");
                    let tls = fleet.https(&names).context("the API's HTTPS certificate")?;
                    let (fleet, tls2, stop) = (fleet.clone(), tls.clone(), shutdown.clone());
                    tokio::spawn(async move {
                        let every = discomy_coordinator::fleet::HTTPS_RENEW;
                        loop {
                            tokio::select! {
                                _ = stop.cancelled() => break,
                                _ = tokio::time::sleep(every) => {}
                            }
                            match fleet.renew_https(&tls2, &names) {
                                Ok(()) => tracing::info!("the API's HTTPS certificate renewed"),
                                Err(err) => {
                                    tracing::warn!(%err, "renewing the API's HTTPS certificate failed")
                                }
                            }
                        }
                    });
                    Some(tls)
                }
                None => None,
            };
            tracing::info!(%bound, https = tls.is_some(), "build queue API listening");
            let ui =
                discomy_coordinator::wuimy::router(ops.clone(), farm.clone(), shutdown.clone())
                    .context("the web UI")?;
            let extra = discomy_protocol::plumbing::metrics::router(render).merge(ui);
            Some(tokio::spawn(ops::serve_with(api_listener, tls, ops, extra, shutdown.clone())))
        }
        _ => None,
    };
    server::serve_farm(listener, farm, shutdown.clone()).await?;
    shutdown.cancel();
    if let Some(api) = api {
        api.await.context("the API task")?.context("the API server")?;
    }
    if let Some(metrics) = metrics {
        metrics.await.context("the metrics task")?.context("the metrics server")?;
    }
    if let Some(icemon) = icemon {
        icemon.await.context("the icemon task")?.context("the icemon listener")?;
    }
    Ok(())
}
