//! `discomy`: the operator's command. `discomy run` builds against a farm (see the library's
//! `run`); `discomy status` shows the coordinator's view (`discomy top`, live), `discomy stats` an
//! agent's counters; `discomy plan` plans a rebuild (`discomy_coordinator::plan`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::time::Duration;

use discomy_compilerd::coord::api::ApiClient;
use discomy_compilerd::coord::api_tls::ApiArgs;
use discomy_compilerd::run::RunOptions;
use discomy_compilerd::submit::{Options, What};
use discomy_coordinator::plan;
use discomy_protocol::ops::{JobState, Target};

#[derive(Parser)]
#[command(name = "discomy", version, about = "discomy distributed compile farm")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a build command with CC/CXX going through the farm, then print a summary.
    Run {
        /// Start an embedded farm of N worker processes on loopback for the duration.
        #[arg(long, value_name = "N")]
        local_farm: Option<usize>,
        /// Workers for a transient agent (distcc syntax); default DISCOMY_HOSTS or the config file.
        #[arg(long)]
        hosts: Option<String>,
        /// Slots per embedded worker.
        #[arg(long)]
        slots: Option<usize>,
        /// Write the summary as JSON to this file.
        #[arg(long, value_name = "FILE")]
        summary_json: Option<PathBuf>,
        /// The build command.
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
    /// The farm as the coordinator sees it: nodes, slots, load, learned speed, submitters.
    Status {
        #[command(flatten)]
        coord: CoordArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A live view of the farm: nodes, units per build host, the build queue (keys: `s` sort,
    /// `r` reverse, `/` filter, Esc clear, `q` quit).
    Top {
        #[command(flatten)]
        coord: CoordArgs,
        /// The coordinator's build-queue API (`http://HOST:PORT`); without it, no queue pane.
        #[arg(long, env = "DISCOMY_API")]
        api: Option<String>,
        /// Seconds between refreshes.
        #[arg(long, value_name = "SECS", default_value_t = 1.0)]
        refresh: f64,
    },
    /// A running agent's counters since it started: units, remote, local, fallback, cache hits,
    /// failed, and why units stayed local.
    Stats {
        /// The agent's socket.
        #[arg(long, env = "DISCOMY_SOCKET", default_value = discomy_wrapper::client::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// A worker's counters instead (`host:port`; the farm token from `DISCOMY_TOKEN`):
        /// its toolchain store, and its distcc jobs by result.
        #[arg(long, value_name = "ADDR")]
        worker: Option<String>,
        /// Print JSON (the field names are a stable interface).
        #[arg(long)]
        json: bool,
    },
    /// Queue a package build: a .src.rpm, a .spec and its sources, or a dist-git repository at a
    /// ref. Prints the job's id.
    Submit(SubmitArgs),
    /// Published repositories: `verify NAME --public-key FILE`, `sync NAME DEST` (run on the
    /// coordinator's host: this runs `discomy-coordinator repo …` next to this program).
    Repo {
        /// `verify` or `sync` and their arguments (`discomy repo verify --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<OsString>,
    },
    /// Queued package builds: list, show, cancel, retry, logs.
    Jobs {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: JobsCmd,
    },
    /// Plan a rebuild: the lower bound on wall time, the simulated makespan, the bottleneck and
    /// the storage it needs, on an inventory's fleet or the live one; what-ifs; an SVG plot.
    Plan {
        #[command(flatten)]
        args: Box<plan::cli::Args>,
        /// Where the live fleet is (without `--inventory`).
        #[command(flatten)]
        coord: CoordArgs,
    },
    /// The working fleet: join tokens, pending requests, approve, reject, revoke (admin
    /// certificate from the coordinator's fleet directory).
    Nodes(Box<discomy_compilerd::fleet::cli::NodesArgs>),
    /// Tenant tokens for people and CI (create, list, revoke; farm token or an admin token).
    Tokens(Box<discomy_compilerd::submit::tokens::TokensArgs>),
    /// Write man pages and shell completions (for packages).
    #[command(hide = true)]
    GenerateDocs(discomy_protocol::plumbing::docs::Args),
}

/// Where the coordinator is (`discomy status`, `discomy top`), and the farm token.
#[derive(clap::Args)]
struct CoordArgs {
    /// Coordinator `host[:port]` (or several, comma-separated); without one, the coordinator
    /// of `--farm` is discovered over mDNS, as nodes and agents do.
    #[arg(long, env = "DISCOMY_COORDINATOR")]
    coordinator: Option<String>,
    /// The farm to discover when no coordinator is given.
    #[arg(long, env = "DISCOMY_FARM", default_value = "default")]
    farm: String,
    /// No mDNS discovery (`DISCOMY_NO_MDNS` takes 1/0, true/false, yes/no).
    #[arg(
        long,
        env = discomy_protocol::plumbing::env::NO_MDNS,
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::SetTrue
    )]
    no_mdns: bool,
    /// Farm token (prefer `DISCOMY_TOKEN` or `--token-file`: arguments show in `ps`).
    #[arg(long, env = "DISCOMY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the farm token (its first line).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// A fleet directory (a node's, or the coordinator's with `admin.pem`): talk mutual TLS.
    #[arg(long, env = "DISCOMY_FLEET_DIR", value_name = "DIR")]
    fleet_dir: Option<PathBuf>,
}

impl CoordArgs {
    /// The coordinator's address(es), discovered over mDNS when none was given, and the token.
    fn resolve(self) -> Result<(String, Option<String>)> {
        let CoordArgs { coordinator, farm, no_mdns, token, token_file, fleet_dir } = self;
        if let Some(dir) = fleet_dir {
            discomy_compilerd::fleet::install_dir(dir)?;
        }
        let (token, _) = discomy_protocol::plumbing::secret::token(token, token_file.as_deref())?;
        let coordinator = match (coordinator, no_mdns) {
            (Some(addr), _) => addr,
            (None, true) => anyhow::bail!("no --coordinator, and mDNS discovery is off"),
            (None, false) => {
                use discomy_compilerd::coord::discover;
                let found = discover::browse_all(&farm, std::time::Duration::from_secs(3));
                anyhow::ensure!(
                    !found.is_empty(),
                    "no coordinator of farm {farm:?} answered over mDNS within 3 s; \
                     give --coordinator HOST:PORT"
                );
                found.join(",")
            }
        };
        Ok((coordinator, token))
    }
}

#[derive(clap::Args)]
struct SubmitArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// A .src.rpm, or a .spec followed by its sources and patches; with `--batch`, any number
    /// of .src.rpm files.
    #[arg(required_unless_present_any = ["git", "package"])]
    files: Vec<PathBuf>,
    /// A package directory (one .spec, its sources and patches beside it, like a dist-git
    /// checkout). Several, with `--batch`, are built in the order their BuildRequires ask.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["files", "git"])]
    package: Vec<PathBuf>,
    /// Build a dist-git repository (any URL git takes) instead: its top-level .spec, with every
    /// other top-level file as a source.
    #[arg(long, requires = "git_ref", conflicts_with = "files")]
    git: Option<String>,
    /// The branch, tag or commit of `--git`.
    #[arg(long = "ref", value_name = "REF")]
    git_ref: Option<String>,
    /// The chroot to build in, as the builders name it.
    #[arg(long)]
    chroot: String,
    /// The architecture.
    #[arg(long, default_value = std::env::consts::ARCH)]
    arch: String,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// A batch name: its jobs build in the order their BuildRequires ask, with the RPMs of the
    /// batch's earlier builds installed. Several packages go in one batch, all or none.
    #[arg(long)]
    batch: Option<String>,
    /// Who submits (fair share is between submitters); default `$USER`.
    #[arg(long)]
    submitter: Option<String>,
    /// Timeout of one attempt, in seconds (the coordinator's default otherwise).
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Wait for the job to end; exit 0 only if it succeeded.
    #[arg(long)]
    wait: bool,
    /// With `--wait`: download the artefacts (RPMs, build log) into this directory.
    #[arg(long, value_name = "DIR", requires = "wait")]
    download: Option<PathBuf>,
    /// Print JSON: `{"ids": [N, …]}`, and the jobs with `--wait`.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum JobsCmd {
    /// Jobs, oldest first.
    List {
        /// Only jobs in this state (waiting, scheduled, running, succeeded, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only this batch's jobs.
        #[arg(long)]
        batch: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One job: its state, artefacts and history.
    Show {
        /// The job.
        id: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job that has not ended (its builder stops it).
    Cancel {
        /// The job.
        id: u64,
    },
    /// Queue a failed or cancelled job again.
    Retry {
        /// The job.
        id: u64,
    },
    /// Give a waiting job a new priority (higher runs first; -1000 to 1000).
    Priority {
        /// The job.
        id: u64,
        /// The new priority.
        #[arg(allow_hyphen_values = true)]
        priority: i32,
    },
    /// Download a job's artefacts (RPMs, build log), each checked against its blake3 and size.
    Download {
        /// The job.
        id: u64,
        /// Into this directory.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
    /// A job's build log.
    Logs {
        /// The job.
        id: u64,
        /// Of this attempt (the current one by default).
        #[arg(long)]
        attempt: Option<u32>,
        /// Keep printing as the log grows, until the job ends.
        #[arg(long)]
        follow: bool,
    },
}

fn main() -> ExitCode {
    discomy_protocol::plumbing::daemon::init_tracing();
    match run() {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::from(2)
        }
    }
}

#[allow(clippy::print_stdout)]
fn print_out(text: &str) {
    print!("{text}");
}

fn run() -> Result<ExitCode> {
    match Cli::parse().command {
        Cmd::GenerateDocs(args) => {
            use clap::CommandFactory;
            discomy_protocol::plumbing::docs::generate(Cli::command(), &args.out)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Nodes(args) => {
            print_out(&args.run()?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Tokens(args) => {
            print_out(&args.run()?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { local_farm, hosts, slots, summary_json, command } => {
            let bin_dir = match std::env::var_os("DISCOMY_BIN_DIR") {
                Some(dir) => PathBuf::from(dir),
                None => std::env::current_exe()
                    .context("cannot locate the discomy executable")?
                    .parent()
                    .context("executable has no directory")?
                    .to_path_buf(),
            };
            let opts = RunOptions { local_farm, hosts, slots, summary_json, bin_dir, command };
            let summary = discomy_compilerd::run::run(&opts)?;
            tracing::info!(
                units = summary.counts.units,
                remote = summary.counts.remote,
                local = summary.counts.local,
                fallback = summary.counts.fallback,
                cache_hits = summary.counts.cache_hits,
                failed = summary.counts.failed,
                ltrans = summary.ltrans.units,
                ltrans_remote = summary.ltrans.remote,
                wall_s = summary.wall_s,
                "discomy: build finished"
            );
            Ok(ExitCode::from(u8::try_from(summary.exit_code & 0xff).unwrap_or(1)))
        }
        Cmd::Status { coord, json } => {
            let (coordinator, token) = coord.resolve()?;
            status(&coordinator, token.as_deref(), json)
        }
        Cmd::Top { coord, api, refresh } => {
            anyhow::ensure!(
                refresh.is_finite() && (0.1..=3600.0).contains(&refresh),
                "--refresh takes 0.1 to 3600 seconds"
            );
            let fleet_dir = coord.fleet_dir.clone();
            let (coordinator, token) = coord.resolve()?;
            let api = api.filter(|a| !a.is_empty());
            let refresh = Duration::from_secs_f64(refresh);
            discomy_compilerd::top::run(&discomy_compilerd::top::TopOptions {
                coordinator,
                token,
                api,
                fleet_dir,
                refresh,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stats { socket, worker: None, json } => stats(&socket, json),
        Cmd::Stats { worker: Some(addr), json, .. } => worker_stats(&addr, json),
        Cmd::Submit(args) => submit(&args),
        Cmd::Repo { args } => {
            let exe = std::env::current_exe().context("cannot locate the discomy executable")?;
            let coordinator = exe.with_file_name("discomy-coordinator");
            let status = std::process::Command::new(&coordinator)
                .arg("repo")
                .args(&args)
                .status()
                .with_context(|| format!("cannot run {}", coordinator.display()))?;
            Ok(ExitCode::from(u8::try_from(status.code().unwrap_or(2)).unwrap_or(2)))
        }
        Cmd::Jobs { api, command } => jobs(&api.client()?, command),
        Cmd::Plan { args, coord } => plan(&args, coord),
    }
}

/// `discomy submit`: the product is the job's id (and, with `--wait`, its end).
#[allow(clippy::print_stdout)]
fn submit(args: &SubmitArgs) -> Result<ExitCode> {
    let api = args.api.client()?;
    let whats: Vec<What> = match (&args.git, &args.git_ref) {
        (Some(url), Some(git_ref)) => {
            vec![What::DistGit { url: url.clone(), git_ref: git_ref.clone() }]
        }
        _ if !args.package.is_empty() => args
            .package
            .iter()
            .map(|dir| {
                let (spec, sources) = discomy_compilerd::submit::package_dir(dir)?;
                Ok(What::Spec { spec, sources })
            })
            .collect::<Result<_>>()?,
        _ => match args.files.split_first() {
            Some((first, rest)) if first.to_string_lossy().ends_with(".spec") => {
                vec![What::Spec { spec: first.clone(), sources: rest.to_vec() }]
            }
            Some(_) if args.files.iter().all(|f| f.to_string_lossy().ends_with(".src.rpm")) => {
                args.files.iter().cloned().map(What::Srpm).collect()
            }
            _ => anyhow::bail!("give .src.rpm files, or a .spec followed by its sources"),
        },
    };
    let submitter = match &args.submitter {
        Some(s) => s.clone(),
        None => std::env::var("USER").unwrap_or_else(|_| "anonymous".into()),
    };
    let options = Options {
        target: Target { chroot: args.chroot.clone(), arch: args.arch.clone() },
        priority: args.priority,
        batch: args.batch.clone(),
        submitter,
        timeout_secs: args.timeout,
    };
    let ids = match (&args.batch, whats.as_slice()) {
        (Some(batch), _) => discomy_compilerd::submit::submit_batch(&api, batch, &whats, &options)?,
        (None, [what]) => vec![discomy_compilerd::submit::submit(&api, what, &options)?],
        (None, _) => anyhow::bail!("several packages go together in a --batch"),
    };
    if !args.wait {
        if args.json {
            println!("{}", serde_json::json!({ "ids": ids }));
        } else {
            for id in &ids {
                println!("{id}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut jobs = Vec::new();
    for &id in &ids {
        let job = discomy_compilerd::submit::wait(&api, id, Duration::from_secs(30 * 24 * 3600))?;
        if let Some(dir) = &args.download {
            discomy_compilerd::submit::download(&api, &job, dir)?;
        }
        if !args.json {
            print!("{}", discomy_compilerd::submit::render_detail(&api.job(id)?));
        }
        jobs.push(job);
    }
    if args.json {
        println!("{}", serde_json::json!({ "ids": ids, "jobs": jobs }));
    }
    let all_built = jobs.iter().all(|j| j.state == JobState::Succeeded);
    Ok(if all_built { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `discomy jobs`: the product is the printed report.
#[allow(clippy::print_stdout)]
fn jobs(api: &ApiClient, command: JobsCmd) -> Result<ExitCode> {
    use discomy_compilerd::submit::{render_detail, render_list};
    match command {
        JobsCmd::List { state, batch, json } => {
            let state = match state {
                Some(name) => {
                    Some(JobState::parse(&name).with_context(|| format!("no job state {name:?}"))?)
                }
                None => None,
            };
            let jobs = api.list_jobs(state, batch.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                print!("{}", render_list(&jobs));
            }
        }
        JobsCmd::Show { id, json } => {
            let detail = api.job(id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&detail)?);
            } else {
                print!("{}", render_detail(&detail));
            }
        }
        JobsCmd::Cancel { id } => println!("job {id}: {}", api.cancel(id)?.state.as_str()),
        JobsCmd::Retry { id } => println!("job {id}: {}", api.retry(id)?.state.as_str()),
        JobsCmd::Priority { id, priority } => {
            let job = api.set_priority(id, priority)?;
            println!("job {id}: priority {}", job.priority);
        }
        JobsCmd::Download { id, dir } => {
            let job = api.job(id)?.job;
            for path in discomy_compilerd::submit::download(api, &job, &dir)? {
                println!("{}", path.display());
            }
        }
        JobsCmd::Logs { id, attempt, follow } => {
            use std::io::Write;
            let mut shown = 0usize;
            loop {
                let ended = api.job(id)?.job.state.is_final();
                let log = api.log(id, attempt)?;
                let mut out = std::io::stdout().lock();
                out.write_all(log.get(shown..).unwrap_or_default())?;
                out.flush()?;
                shown = shown.max(log.len());
                if !follow || ended {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `discomy stats --worker`: the product is the printed report.
#[allow(clippy::print_stdout)]
fn worker_stats(addr: &str, json: bool) -> Result<ExitCode> {
    let token = std::env::var("DISCOMY_TOKEN").ok();
    let auth = discomy_protocol::AuthConfig::from_option(token.as_deref());
    if let Some(dir) = std::env::var_os("DISCOMY_FLEET_DIR") {
        discomy_compilerd::fleet::install_dir(dir.into())?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stats = runtime.block_on(discomy_compilerd::coord::status::worker_stats(addr, &auth))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{}", discomy_compilerd::coord::status::render_worker_stats(&stats));
    }
    Ok(ExitCode::SUCCESS)
}

/// `discomy stats`: the product is the printed report.
#[allow(clippy::print_stdout)]
fn stats(socket: &std::path::Path, json: bool) -> Result<ExitCode> {
    let stats =
        discomy_compilerd::coord::status::agent_stats(socket).map_err(anyhow::Error::msg)?;
    if json {
        let view = discomy_compilerd::coord::status::AgentStatsJson::from(&stats);
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", discomy_compilerd::coord::status::render_agent_stats(&stats));
    }
    Ok(ExitCode::SUCCESS)
}

/// `discomy status`: the product is the printed report.
#[allow(clippy::print_stdout)]
fn status(coordinator: &str, token: Option<&str>, json: bool) -> Result<ExitCode> {
    use discomy_compilerd::coord::discover::CoordinatorAddr;
    let addr = CoordinatorAddr::explicit(coordinator).to_string();
    let auth = discomy_protocol::AuthConfig::from_option(token);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let farm = runtime
        .block_on(discomy_compilerd::coord::status::fetch(&addr, &auth))
        .map_err(anyhow::Error::msg)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&farm)?);
    } else {
        print!("{}", discomy_compilerd::coord::status::render(&farm));
    }
    Ok(ExitCode::SUCCESS)
}

/// `discomy plan` ([`plan::cli::Args::run`]), given the coordinator's answers when asked:
/// the queue's history, the live fleet. The product is the printed report.
#[allow(clippy::print_stdout)]
fn plan(args: &plan::cli::Args, coord: CoordArgs) -> Result<ExitCode> {
    let out = args.run(
        |url| {
            let token = std::env::var("DISCOMY_TOKEN").ok().filter(|t| !t.is_empty());
            Ok::<_, anyhow::Error>(discomy_compilerd::coord::api::queue_history(&ApiClient::new(
                url, token,
            )?)?)
        },
        |link| {
            let (coordinator, token) = coord.resolve()?;
            let addr = discomy_compilerd::coord::discover::CoordinatorAddr::explicit(&coordinator);
            let auth = discomy_protocol::AuthConfig::from_option(token.as_deref());
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let farm = runtime
                .block_on(discomy_compilerd::coord::status::fetch(&addr.to_string(), &auth))
                .map_err(anyhow::Error::msg)?;
            Ok(plan::inventory::from_status(&farm, &coordinator, link)?)
        },
    )?;
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
