//! Process groups: killing a whole group (a compiler driver and its `cc1`/`as`, a sandbox helper
//! and everything under it) when a run is abandoned ([`GroupKiller`]), and the one harness that
//! starts and stops daemons in groups of their own ([`Daemon`]), used by `discomy run`, the
//! benchmarks and the tests.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Sends SIGKILL to process group `pgid`, unless disarmed; [`Drop`] does it too.
#[derive(Debug)]
pub struct GroupKiller(Option<u32>);

impl GroupKiller {
    /// Arms a killer for the group led by process `pid` (`None`: nothing to kill).
    pub fn new(pid: Option<u32>) -> GroupKiller {
        GroupKiller(pid)
    }

    /// Kills the group now (it stays armed: killing twice is harmless).
    pub fn kill(&self) {
        if let Some(pid) = self.0 {
            let _ = killpg(group_of(pid), Signal::SIGKILL);
        }
    }

    /// The run ended normally: nothing to kill on drop.
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A long-running child in its own process group with its output in log files: the one way
/// discomy's programs start daemons (`discomy run`'s embedded farm, the benchmarks, the tests).
/// Dropping it stops the whole group ([`Daemon::stop`]).
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: std::process::Child,
    exit: Option<std::process::ExitStatus>,
    logs: Logs,
    cmdline: String,
    left_behind: bool,
}

/// Where a [`Daemon`]'s standard output and error go.
#[derive(Debug, Clone)]
pub enum Logs {
    /// `<dir>/<name>.stdout` and `<dir>/<name>.stderr`.
    Split(PathBuf),
    /// Both into one file.
    Combined(PathBuf),
    /// Standard output discarded, standard error into the file (daemons log to stderr).
    StderrOnly(PathBuf),
}

/// Why a [`Daemon`] could not be started or did not come up.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A log file could not be created.
    #[error("cannot create {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The program could not be started.
    #[error("cannot start {name} (`{cmdline}`): {source}")]
    Spawn {
        /// The daemon's name.
        name: String,
        /// Its command line.
        cmdline: String,
        /// The error.
        source: std::io::Error,
    },
    /// It exited while it was waited for.
    #[error("{name} exited early ({status})\n{logs}")]
    Exited {
        /// The daemon's name.
        name: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// The tail of its logs.
        logs: String,
    },
    /// What it was waited for did not happen in time.
    #[error("{name}: {what} not ready after {timeout:?}\n{logs}")]
    NotReady {
        /// The daemon's name.
        name: String,
        /// What was waited for.
        what: String,
        /// The limit.
        timeout: Duration,
        /// The tail of its logs.
        logs: String,
    },
}

/// How long a stopped group gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

impl Daemon {
    /// Starts `cmd` (stdin null, output into `logs`, a new process group).
    pub fn spawn(name: &str, cmd: &mut Command, logs: Logs) -> Result<Daemon, DaemonError> {
        let create = |path: &Path| {
            std::fs::File::create(path)
                .map_err(|source| DaemonError::Log { path: path.to_path_buf(), source })
        };
        let (out, err) = match &logs {
            Logs::Split(dir) => (
                Stdio::from(create(&dir.join(format!("{name}.stdout")))?),
                Stdio::from(create(&dir.join(format!("{name}.stderr")))?),
            ),
            Logs::Combined(path) => {
                let file = create(path)?;
                let copy = file
                    .try_clone()
                    .map_err(|source| DaemonError::Log { path: path.clone(), source })?;
                (Stdio::from(file), Stdio::from(copy))
            }
            Logs::StderrOnly(path) => (Stdio::null(), Stdio::from(create(path)?)),
        };
        let cmdline = describe(cmd);
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().map_err(|source| DaemonError::Spawn {
            name: name.to_owned(),
            cmdline: cmdline.clone(),
            source,
        })?;
        Ok(Daemon { name: name.to_owned(), child, exit: None, logs, cmdline, left_behind: false })
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The command line, for reports.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Its exit status, if it has exited (without blocking). Once the leader is gone, what is
    /// left of its group gets a few seconds, then is killed ([`Daemon::left_processes_behind`]).
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
                self.reap_group();
            }
        }
        self.exit
    }

    /// Polls `probe` every 20 ms until it yields a value; fails when the daemon exits first or
    /// `timeout` passes.
    pub fn wait_until<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> Option<T>,
    ) -> Result<T, DaemonError> {
        let start = Instant::now();
        loop {
            if let Some(v) = probe() {
                return Ok(v);
            }
            if let Some(status) = self.try_wait() {
                return Err(DaemonError::Exited {
                    name: self.name.clone(),
                    status,
                    logs: self.logs_tail(40),
                });
            }
            if start.elapsed() > timeout {
                return Err(DaemonError::NotReady {
                    name: self.name.clone(),
                    what: what.to_owned(),
                    timeout,
                    logs: self.logs_tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the whole group: SIGTERM (daemons clean up their files), SIGKILL to what is left
    /// after [`STOP_GRACE`] or once the leader exited; reaps the leader. Idempotent.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let group = self.group();
        let _ = killpg(group, Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < STOP_GRACE {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Stragglers (compilers it started, sandbox helpers) get no more grace.
        let _ = killpg(group, Signal::SIGKILL);
        if self.exit.is_none() {
            self.exit = self.child.wait().ok();
        }
        // So that what the group held (ports, files, mounts) is free when this returns.
        wait_group_gone(self.child.id(), STOP_GRACE);
        self.exit
    }

    /// Whether processes of its group were still running after it had exited (then killed).
    pub fn left_processes_behind(&self) -> bool {
        self.left_behind
    }

    /// The files its output goes to.
    pub fn log_files(&self) -> Vec<PathBuf> {
        match &self.logs {
            Logs::Split(dir) => vec![
                dir.join(format!("{}.stdout", self.name)),
                dir.join(format!("{}.stderr", self.name)),
            ],
            Logs::Combined(path) | Logs::StderrOnly(path) => vec![path.clone()],
        }
    }

    /// The last `lines` lines of each log file, labelled, with the command line.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out =
            format!("----- {} (pid {}): `{}` -----\n", self.name, self.pid(), self.cmdline);
        for path in self.log_files() {
            out.push_str(&format!("----- {} -----\n{}", path.display(), tail(&path, lines)));
        }
        out
    }

    fn group(&self) -> Pid {
        group_of(self.child.id())
    }

    /// The leader is gone: gives the rest of its group 5 s to exit on its own, then kills it and
    /// waits for it to be gone.
    fn reap_group(&mut self) {
        let pgid = self.child.id();
        if !wait_group_gone(pgid, Duration::from_secs(5)) {
            self.left_behind = true;
            let _ = killpg(self.group(), Signal::SIGKILL);
            wait_group_gone(pgid, Duration::from_secs(10));
        }
    }
}

fn group_of(pgid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pgid).unwrap_or(i32::MAX))
}

/// Waits up to `limit` until no live process is left in group `pgid` (a SIGKILLed process
/// lives on until the kernel has torn it down); whether it is gone.
fn wait_group_gone(pgid: u32, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        if live_group_members(pgid).is_empty() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A command line as a shell would show it (for reports, not for running).
pub fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words
        .iter()
        .map(|w| {
            if !w.is_empty()
                && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Processes of group `pgid` that are not zombies, as `pid command line` (from `/proc`).
pub fn live_group_members(pgid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // "pid (comm) state ppid pgrp …"; comm may hold spaces and parentheses.
        let Some(after_comm) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        if fields.len() < 3 || fields[0] == "Z" || fields[2].parse::<u32>() != Ok(pgid) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_owned())
            .unwrap_or_default();
        out.push(format!("{pid} {cmdline}"));
    }
    out
}

/// The last `lines` lines of a file (a note when earlier ones were left out), for reports.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("(cannot read: {e})\n"));
    let all: Vec<&str> = text.lines().collect();
    let skip = all.len().saturating_sub(lines);
    let mut out = String::new();
    if skip > 0 {
        out.push_str(&format!("[… {skip} earlier lines …]\n"));
    }
    for line in &all[skip..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_a_daemon_stops_its_whole_group() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 60 & sleep 60"]);
        let d = Daemon::spawn("sh", &mut cmd, Logs::Split(tmp.path().into())).expect("spawn");
        let pgid = d.pid();
        std::thread::sleep(Duration::from_millis(200));
        assert!(live_group_members(pgid).len() >= 2, "{:?}", live_group_members(pgid));
        drop(d);
        assert!(live_group_members(pgid).is_empty(), "{:?}", live_group_members(pgid));
    }

    #[test]
    fn processes_left_behind_are_killed_and_reported() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 60 & exit 0"]);
        let mut d =
            Daemon::spawn("sh", &mut cmd, Logs::Combined(tmp.path().join("log"))).expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(30);
        while d.try_wait().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(d.left_processes_behind());
        assert!(live_group_members(d.pid()).is_empty());
    }

    #[test]
    fn waiting_for_a_daemon_that_exits_says_so_with_its_logs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo no config >&2; exit 3"]);
        let mut d =
            Daemon::spawn("sh", &mut cmd, Logs::StderrOnly(tmp.path().join("err"))).expect("spawn");
        let err = d.wait_until("never", Duration::from_secs(30), || None::<()>).unwrap_err();
        assert!(matches!(err, DaemonError::Exited { .. }), "{err}");
        assert!(err.to_string().contains("no config"), "{err}");
    }
}
