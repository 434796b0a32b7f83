//! Processes under test: [`Proc`], the shared daemon harness ([`Daemon`]) with a test's manners;
//! signalling and listing a process group; log tails; [`ShowOnFailure`] for files worth printing
//! when a test fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use discomy_protocol::plumbing::{Daemon, Logs};

/// Sends `signal` (a name such as `KILL`, or `0` to probe) to every process of group `pgid`.
/// True when at least one process received it.
pub fn signal_group(pgid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub use discomy_protocol::plumbing::process::{live_group_members, tail};

/// A child process in its own process group, its output in `<log_dir>/<name>.{stdout,stderr}`:
/// the shared [`Daemon`] harness, with a test's manners (failures panic).
///
/// Dropping it kills the whole group if it is still running (also during a panic), and a
/// panicking test gets the tail of its logs printed.
pub struct Proc {
    daemon: Daemon,
}

impl Proc {
    /// Spawns `cmd` (stdin null, output to log files, a new process group).
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Proc {
        let daemon = Daemon::spawn(name, cmd, Logs::Split(log_dir.to_path_buf()))
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("[e2e] started {name} (pid {}): {}", daemon.pid(), daemon.cmdline());
        Proc { daemon }
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        self.daemon.name()
    }

    /// Its exit status, if it has exited (non-blocking).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.daemon.try_wait();
        if status.is_some() && self.daemon.left_processes_behind() {
            eprintln!("[e2e] {} exited but left processes in its group (killed)", self.name());
        }
        status
    }

    /// Waits for it to exit; past `limit` it is killed and the test fails.
    pub fn wait_timeout(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            if start.elapsed() > limit {
                self.kill();
                panic!("{} did not finish within {limit:?} (killed)", self.name());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the whole process group: SIGTERM (daemons clean up their files), then SIGKILL
    /// after a short grace period; reaps the leader.
    pub fn kill(&mut self) {
        self.daemon.stop();
    }

    /// Whether processes of its group were still running after it had exited (then killed).
    pub fn left_processes_behind(&self) -> bool {
        self.daemon.left_processes_behind()
    }

    /// Its standard output so far.
    pub fn stdout_text(&self) -> String {
        self.log_text(0)
    }

    /// Its standard error so far.
    pub fn stderr_text(&self) -> String {
        self.log_text(1)
    }

    /// The text of log file `i` ([`Daemon::log_files`]: stdout, then stderr).
    fn log_text(&self, i: usize) -> String {
        let files = self.daemon.log_files();
        files
            .get(i)
            .and_then(|p| fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The tails of both logs, labelled.
    pub fn logs(&self, lines: usize) -> String {
        self.daemon.logs_tail(lines)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("{}", self.logs(150));
        }
    }
}

/// Prints labelled files when the test panics (stats, summaries, …).
#[derive(Default)]
pub struct ShowOnFailure(Vec<(String, PathBuf)>);

impl ShowOnFailure {
    /// Registers a file to print.
    pub fn add(&mut self, label: &str, path: &Path) {
        self.0.push((label.to_owned(), path.to_path_buf()));
    }
}

impl Drop for ShowOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (label, path) in &self.0 {
                eprintln!("----- {label} ({}) -----\n{}", path.display(), tail(path, 200));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_drop_kills_the_whole_group() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 60 & sleep 60"]);
        let p = Proc::spawn("sh", &mut cmd, tmp.path());
        let pgid = p.pid();
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            live_group_members(pgid).len() >= 2,
            "sh and its sleeps: {:?}",
            live_group_members(pgid)
        );
        drop(p);
        assert!(live_group_members(pgid).is_empty(), "{:?}", live_group_members(pgid));
    }

    #[test]
    fn proc_reports_processes_left_behind() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 60 & exit 0"]);
        let mut p = Proc::spawn("sh", &mut cmd, tmp.path());
        assert!(p.wait_timeout(Duration::from_secs(20)).success());
        assert!(p.left_processes_behind());
        assert!(live_group_members(p.pid()).is_empty());
    }
}
