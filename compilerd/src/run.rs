//! `discomy run`: runs a build command against a farm and summarises what the farm did.
//!
//! With `--local-farm N` it starts N real worker processes on loopback plus an agent, for the
//! duration of the command. Otherwise it uses the agent already listening on the socket, or
//! starts a transient agent over the configured hosts (`--hosts`, `DISCOMY_HOSTS`, or the first
//! line of `~/.config/discomy/hosts` / `/etc/discomy/hosts`). The command runs with a masquerade
//! directory first on PATH and `CC`/`CXX` pointing into it; each wrapper call appends its outcome
//! to a stats file, which becomes the summary (and, on a terminal, a progress line: [`progress`]).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use discomy_protocol::plumbing::{Daemon, Logs, env};
use discomy_protocol::stats::{LtransCounts, StatsLine, UnitCounts};
use serde::Serialize;

mod progress;

/// Options of `discomy run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Start an embedded farm of this many workers.
    pub local_farm: Option<usize>,
    /// Host list for a transient agent.
    pub hosts: Option<String>,
    /// Slots per embedded worker (default: cores / workers, at least 1).
    pub slots: Option<usize>,
    /// Where to write the JSON summary.
    pub summary_json: Option<PathBuf>,
    /// Directory holding `discomy-cc` and `discomy-compilerd`.
    pub bin_dir: PathBuf,
    /// The build command.
    pub command: Vec<OsString>,
}

/// What happened, as printed and written to `--summary-json`. Field names are a stable interface.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    /// What the compile units became (`units`, `remote`, `local`, …, at the top level).
    #[serde(flatten)]
    pub counts: UnitCounts,
    /// The build command's exit status.
    pub exit_code: i32,
    /// Wall time of the build command, in seconds.
    pub wall_s: f64,
    /// Workers used.
    pub hosts: Vec<String>,
    /// LTRANS units (partitions of LTO links), counted apart from the compile units: `units`,
    /// `remote`, `fallback`.
    pub ltrans: LtransCounts,
}

/// Errors setting up the farm around a build.
#[derive(Debug, thiserror::Error)]
pub enum FarmError {
    /// A process or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A daemon did not come up in time.
    #[error("{0}")]
    Startup(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> FarmError {
    let what = what.into();
    move |source| FarmError::Io { what, source }
}

/// How long a daemon of the embedded farm may take to come up.
const STARTUP: Duration = Duration::from_secs(60);

/// Runs the build; returns the summary (the command's status is in it).
pub fn run(opts: &RunOptions) -> Result<Summary, FarmError> {
    let dir = tempfile::Builder::new()
        .prefix("discomy-run-")
        .tempdir()
        .map_err(io_err("failed to create a run directory"))?;
    let compilerd = opts.bin_dir.join("discomy-compilerd");
    let wrapper = opts.bin_dir.join("discomy-cc");
    for bin in [&compilerd, &wrapper] {
        if !bin.is_file() {
            return Err(FarmError::Startup(format!(
                "{} not found (set DISCOMY_BIN_DIR)",
                bin.display()
            )));
        }
    }
    // Each in its own process group, stopped (group and all) when dropped.
    let mut daemons: Vec<Daemon> = Vec::new();
    let mut hosts = Vec::new();
    if let Some(n) = opts.local_farm.filter(|n| *n > 0) {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let slots = opts.slots.unwrap_or_else(|| cores.div_ceil(n).max(1));
        for i in 0..n {
            let addr_file = dir.path().join(format!("worker{i}.addr"));
            let mut cmd = Command::new(&compilerd);
            // On loopback: it discovers and joins nothing (compilerd's rule for loopback).
            cmd.args(["worker", "--listen", "127.0.0.1:0", "--slots", &slots.to_string()])
                .arg("--addr-file")
                .arg(&addr_file)
                .arg("--store")
                .arg(dir.path().join(format!("worker{i}.store")));
            let mut worker = spawn_daemon(&format!("worker{i}"), cmd, dir.path())?;
            let addr = worker
                .wait_until("a local worker to listen", STARTUP, || {
                    fs::read_to_string(&addr_file).ok().filter(|s| s.ends_with('\n'))
                })
                .map_err(|e| FarmError::Startup(e.to_string()))?;
            daemons.push(worker);
            hosts.push(format!("{}/{slots}", addr.trim()));
        }
    }

    let default_socket = discomy_wrapper::client::socket_path();
    let socket = if opts.local_farm.is_none_or(|n| n == 0) && agent_alive(&default_socket) {
        default_socket
    } else {
        if opts.local_farm.is_none_or(|n| n == 0) {
            if let Some(list) = crate::hosts::configured_hosts(opts.hosts.as_deref()) {
                for word in list.split([',', ' ']).filter(|s| !s.is_empty()) {
                    // distcc options (`,lzo`) stay with their `distcc://` entry.
                    match hosts.last_mut() {
                        Some(last) if crate::hosts::is_option(word) => {
                            last.push(',');
                            last.push_str(word);
                        }
                        _ => hosts.push(word.to_string()),
                    }
                }
            }
        }
        let socket = dir.path().join("agent.sock");
        let mut cmd = Command::new(&compilerd);
        cmd.arg("agent").arg("--socket").arg(&socket).arg("--hosts").arg(hosts.join(","));
        cmd.arg("--store").arg(dir.path().join("agent.store"));
        if opts.local_farm.is_some_and(|n| n > 0) {
            // Its workers are this command's own children, on this host, with its compilers.
            cmd.arg("--no-verify");
        }
        cmd.env_remove("DISCOMY_HOSTS");
        let mut agent = spawn_daemon("agent", cmd, dir.path())?;
        agent
            .wait_until("the agent to listen", STARTUP, || agent_alive(&socket).then_some(()))
            .map_err(|e| FarmError::Startup(e.to_string()))?;
        daemons.push(agent);
        socket
    };

    let masquerade = dir.path().join("bin");
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    make_masquerade_dir(&masquerade, &wrapper, &path_var)?;
    let mut new_path = OsString::from(masquerade.as_os_str());
    new_path.push(":");
    new_path.push(&path_var);
    let stats_file = dir.path().join("stats");

    let Some((program, args)) = opts.command.split_first() else {
        return Err(FarmError::Startup("no command given".into()));
    };
    let started = Instant::now();
    // On a terminal, a progress line until the command ends (cleared before the summary).
    let progress = progress::Progress::start(&stats_file, started);
    let mut command = Command::new(program);
    // LTO links: as many LTRANS units at once as the farm has slots (gcc's own count is the
    // host's cores), unless the user set it; the partitions, and so the bytes, are gcc's.
    if std::env::var_os(env::LTRANS_JOBS).is_none()
        && let Some(slots) = farm_slots(&hosts)
    {
        command.env(env::LTRANS_JOBS, slots.to_string());
    }
    let status = command
        .args(args)
        .env("PATH", &new_path)
        .env("CC", masquerade.join("cc"))
        .env("CXX", masquerade.join("c++"))
        .env(discomy_wrapper::ENV_SOCKET, &socket)
        .env(discomy_wrapper::stats::ENV_STATS_FILE, &stats_file)
        .status()
        .map_err(io_err(format!("failed to run {}", program.to_string_lossy())))?;
    let wall_s = started.elapsed().as_secs_f64();
    drop(progress);
    drop(daemons);

    let mut summary = summarise(&fs::read_to_string(&stats_file).unwrap_or_default());
    summary.exit_code = exit_code(status);
    summary.wall_s = (wall_s * 1000.0).round() / 1000.0;
    summary.hosts = hosts;
    if let Some(path) = &opts.summary_json {
        let json =
            serde_json::to_vec_pretty(&summary).map_err(|e| FarmError::Startup(e.to_string()))?;
        fs::write(path, json).map_err(io_err(format!("failed to write {}", path.display())))?;
    }
    // The farm delivered nothing it was asked for: keep the daemon logs for a post-mortem.
    if summary.counts.fallback > 0 && summary.counts.remote == 0 {
        keep_logs(dir.path());
    }
    Ok(summary)
}

/// Counts the stats file's lines ([`StatsLine`]) into a summary.
pub fn summarise(stats: &str) -> Summary {
    let mut counts = UnitCounts::default();
    let mut ltrans = LtransCounts::default();
    for line in stats.lines().filter_map(StatsLine::parse) {
        if line.ltrans {
            ltrans.record(line.outcome == discomy_protocol::stats::Outcome::Remote);
        } else {
            counts.record(line.outcome, line.reason, line.exit_code);
        }
    }
    Summary { counts, ltrans, ..Summary::default() }
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Starts a daemon with its stderr in `dir/log_name`.
/// Starts one of the farm's daemons, its log (stderr) in `<dir>/<name>.log`.
fn spawn_daemon(name: &str, mut cmd: Command, dir: &Path) -> Result<Daemon, FarmError> {
    let log = dir.join(format!("{name}.log"));
    Daemon::spawn(name, &mut cmd, Logs::StderrOnly(log))
        .map_err(|e| FarmError::Startup(e.to_string()))
}

/// Copies daemon logs somewhere that outlives the run directory, for a post-mortem.
fn keep_logs(dir: &Path) {
    let keep = std::env::temp_dir().join(format!("discomy-run-logs-{}", std::process::id()));
    if fs::create_dir_all(&keep).is_ok() {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().ends_with(".log") {
                    let _ = fs::copy(entry.path(), keep.join(entry.file_name()));
                }
            }
        }
        tracing::warn!(logs = %keep.display(), "farm logs kept");
    }
}

fn agent_alive(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// Creates `dir` with a link to `wrapper` for every compiler name on `path_var`.
pub fn make_masquerade_dir(
    dir: &Path,
    wrapper: &Path,
    path_var: &std::ffi::OsStr,
) -> Result<Vec<String>, FarmError> {
    fs::create_dir_all(dir).map_err(io_err(format!("failed to create {}", dir.display())))?;
    let names = discomy_wrapper::names::compiler_names_on_path(path_var);
    for name in &names {
        let link = dir.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(wrapper, &link)
            .map_err(io_err(format!("failed to link {}", link.display())))?;
    }
    Ok(names)
}

/// The slots of the farm `hosts` name (`host:port/N`, …); `None` when none is known.
fn farm_slots(hosts: &[String]) -> Option<usize> {
    let specs = crate::hosts::parse_host_list(&hosts.join(",")).ok()?;
    let slots: usize = specs.iter().map(|h| h.limit).sum();
    (slots > 0).then_some(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ltrans_jobs_default_to_the_farm_s_slots() {
        let hosts = ["127.0.0.1:4000/2".to_string(), "127.0.0.1:4001/3".to_string()];
        assert_eq!(farm_slots(&hosts), Some(5));
        assert_eq!(farm_slots(&[]), None);
    }

    #[test]
    fn summary_counts_outcomes_and_failures() {
        let s = summarise(
            "remote\t0\ta.c\tnone\nremote\t0\tb.c\tnone\nlocal\t1\tconftest.c\tconftest\n\
             fallback\t0\td.c\tno_worker\n",
        );
        let c = &s.counts;
        assert_eq!(c.units, 4);
        assert_eq!((c.remote, c.local, c.fallback, c.failed), (2, 1, 1, 1));
        assert_eq!(c.local_reasons.get("conftest"), Some(&1));
        assert_eq!(c.fallback_reasons.get("no_worker"), Some(&1));
    }

    #[test]
    fn ltrans_units_are_counted_apart() {
        let s = summarise(
            "remote\t0\ta.c\tnone\nltrans\tremote\t0\t./lua.ltrans0.ltrans\tnone\n\
             ltrans\tfallback\t0\t./lua.ltrans1.ltrans\tno_agent\n",
        );
        assert_eq!((s.counts.units, s.counts.remote, s.counts.fallback), (1, 1, 0));
        assert_eq!(s.ltrans, LtransCounts { units: 2, remote: 1, fallback: 1 });
    }
}
