//! Processes under test: [`Proc`], a child in its own process group with its output in log
//! files, killed with its whole group on drop; signalling and listing a process group; log tails;
//! [`ShowOnFailure`] for files worth printing when a test fails.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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

/// Processes of group `pgid` that are not zombies, as `pid command line` (from `/proc`).
pub fn live_group_members(pgid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
        // "pid (comm) state ppid pgrp …"; comm may hold spaces and parentheses.
        let Some(after_comm) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        if fields.len() < 3 || fields[0] == "Z" || fields[2].parse::<u32>() != Ok(pgid) {
            continue;
        }
        let cmdline = fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_owned())
            .unwrap_or_default();
        out.push(format!("{pid} {cmdline}"));
    }
    out
}

/// Last `lines` lines of a file, for failure output.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let skip = all.len().saturating_sub(lines);
    let mut out = String::new();
    if skip > 0 {
        let _ = writeln!(out, "[… {skip} earlier lines …]");
    }
    for line in &all[skip..] {
        let _ = writeln!(out, "{line}");
    }
    out
}

/// A child process in its own process group, its output in `<log_dir>/<name>.{stdout,stderr}`.
///
/// Dropping it kills the whole group if it is still running (also during a panic), and a
/// panicking test gets the tail of its logs printed.
pub struct Proc {
    name: String,
    child: Child,
    exit: Option<ExitStatus>,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
    left_behind: bool,
}

impl Proc {
    /// Spawns `cmd` (stdin null, output to log files, a new process group).
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Proc {
        let stdout_log = log_dir.join(format!("{name}.stdout"));
        let stderr_log = log_dir.join(format!("{name}.stderr"));
        let out = fs::File::create(&stdout_log).expect("create stdout log");
        let err = fs::File::create(&stderr_log).expect("create stderr log");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        eprintln!("[e2e] started {name} (pid {}): {cmd:?}", child.id());
        Proc {
            name: name.to_owned(),
            child,
            exit: None,
            stdout_log,
            stderr_log,
            left_behind: false,
        }
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its exit status, if it has exited (non-blocking).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited(status);
            }
        }
        self.exit
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
                panic!("{} did not finish within {limit:?} (killed)", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the whole process group: SIGTERM (daemons clean up their files), then SIGKILL
    /// after a short grace period; reaps the leader.
    pub fn kill(&mut self) {
        if self.exit.is_some() {
            return;
        }
        signal_group(self.pid(), "TERM");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
                // Anything left in the group gets no more grace.
                signal_group(self.pid(), "KILL");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_group(self.pid(), "KILL");
        let status = self.child.wait().expect("wait after kill");
        self.exit = Some(status);
    }

    /// Whether processes of its group were still running after it had exited (then killed).
    pub fn left_processes_behind(&self) -> bool {
        self.left_behind
    }

    /// Its standard output so far.
    pub fn stdout_text(&self) -> String {
        fs::read(&self.stdout_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Its standard error so far.
    pub fn stderr_text(&self) -> String {
        fs::read(&self.stderr_log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The tails of both logs, labelled.
    pub fn logs(&self, lines: usize) -> String {
        format!(
            "----- {} (pid {}) stdout ({}) -----\n{}----- {} stderr ({}) -----\n{}",
            self.name,
            self.child.id(),
            self.stdout_log.display(),
            tail(&self.stdout_log, lines),
            self.name,
            self.stderr_log.display(),
            tail(&self.stderr_log, lines),
        )
    }

    fn exited(&mut self, status: ExitStatus) {
        self.exit = Some(status);
        // The leader is gone; give the rest of its group a moment, then kill what is left and
        // wait until it is gone too (a SIGKILLed process lives on until the kernel reaps it).
        let pgid = self.pid();
        let start = Instant::now();
        loop {
            let members = live_group_members(pgid);
            if members.is_empty() || start.elapsed() > Duration::from_secs(15) {
                break;
            }
            if !self.left_behind && start.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "[e2e] {} exited but left processes in its group; killing them:\n  {}",
                    self.name,
                    members.join("\n  ")
                );
                self.left_behind = true;
                signal_group(pgid, "KILL");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
