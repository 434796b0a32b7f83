//! Child processes: timed one-shot commands (with a kill-on-timeout watchdog), daemon guards that
//! stop their whole process group on drop or on Ctrl-C, readiness polling, free ports and the
//! lookup of discomy's own binaries.

use anyhow::{Context, Result, bail};
use discomy_protocol::plumbing::{self, Logs};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

/// Process groups of the daemons that are running now, for the Ctrl-C handler.
static LIVE_GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn live_groups() -> std::sync::MutexGuard<'static, Vec<i32>> {
    LIVE_GROUPS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Temp dirs to remove if interrupted (normally their `TempDir` guards remove them).
static TEMP_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A fresh temp dir named `<prefix>XXXXXX`, also removed by the Ctrl-C handler.
pub fn temp_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .with_context(|| format!("creating a temp dir {prefix}*"))?;
    TEMP_DIRS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(dir.path().to_owned());
    Ok(dir)
}

/// On SIGINT/SIGTERM/SIGHUP, stop every daemon still running, remove the temp dirs, then exit
/// with 130.
/// (Daemons live in their own process groups, so a terminal's Ctrl-C does not reach them.)
pub fn install_interrupt_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        let groups = live_groups().clone();
        for &g in &groups {
            let _ = killpg(Pid::from_raw(g), Signal::SIGTERM);
        }
        std::thread::sleep(Duration::from_millis(500));
        for &g in &groups {
            let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
        }
        let dirs = TEMP_DIRS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        for d in &dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        eprintln!("discomy-bench: interrupted; stopped {} daemon process group(s)", groups.len());
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")
}

/// A command line with its directory and environment changes, run once and timed.
#[derive(Clone, Debug)]
pub struct Job {
    program: OsString,
    args: Vec<OsString>,
    cwd: PathBuf,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
    timeout: Duration,
}

/// What a finished [`Job`] left behind.
#[derive(Debug)]
pub struct Finished {
    pub elapsed: Duration,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn ms(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1000.0
    }
}

impl Job {
    pub fn new(program: impl AsRef<OsStr>, cwd: &Path) -> Self {
        Job {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            cwd: cwd.to_owned(),
            // The farm benchmarks time compiles, not the object cache (`discomy-bench cache` does).
            env: vec![("DISCOMY_CACHE".into(), "0".into())],
            env_remove: Vec::new(),
            timeout: Duration::from_secs(600),
        }
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.env.push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    pub fn envs(mut self, kv: &[(OsString, OsString)]) -> Self {
        self.env.extend(kv.iter().cloned());
        self
    }

    pub fn env_remove(mut self, k: impl AsRef<OsStr>) -> Self {
        self.env_remove.push(k.as_ref().to_owned());
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// A shell-like rendering for error messages: `cd DIR && K=V prog args…`.
    pub fn describe(&self) -> String {
        let mut s = format!("cd {} && ", self.cwd.display());
        for k in &self.env_remove {
            let _ = write!(s, "-u {} ", k.to_string_lossy());
        }
        for (k, v) in &self.env {
            let _ = write!(s, "{}={} ", k.to_string_lossy(), shell_word(v));
        }
        s.push_str(&shell_word(&self.program));
        for a in &self.args {
            s.push(' ');
            s.push_str(&shell_word(a));
        }
        s
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).current_dir(&self.cwd).stdin(Stdio::null());
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Run to completion, timing from just before spawn to just after wait. Standard output and
    /// error go to files in `scratch` (so a hung child can be killed and its output still read).
    pub fn run(&self, scratch: &Path) -> Result<Finished> {
        let out_path = scratch.join("job.stdout");
        let err_path = scratch.join("job.stderr");
        let out =
            File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
        let err =
            File::create(&err_path).with_context(|| format!("creating {}", err_path.display()))?;
        let mut cmd = self.command();
        cmd.stdout(out).stderr(err);

        // The watchdog thread is started before the clock so that it costs nothing inside it.
        let (pid_tx, pid_rx) = mpsc::channel::<i32>();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let timeout = self.timeout;
        let watchdog = std::thread::spawn(move || {
            let Ok(pid) = pid_rx.recv() else { return false };
            match done_rx.recv_timeout(timeout) {
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    true
                }
                _ => false,
            }
        });

        let start = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                drop(pid_tx);
                let _ = watchdog.join();
                return Err(e).with_context(|| format!("cannot start `{}`", self.describe()));
            }
        };
        let _ = pid_tx.send(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let status = child.wait();
        let elapsed = start.elapsed();
        let _ = done_tx.send(());
        let timed_out = watchdog.join().unwrap_or(false);
        let status = status.with_context(|| format!("waiting for `{}`", self.describe()))?;

        let stdout = read_lossy(&out_path)?;
        let stderr = read_lossy(&err_path)?;
        if timed_out {
            bail!(
                "`{}` did not finish within {:?} and was killed\n--- stderr ---\n{}",
                self.describe(),
                self.timeout,
                tail(&stderr, 40)
            );
        }
        Ok(Finished { elapsed, status, stdout, stderr })
    }

    /// [`Job::run`], and fail (with the command and its stderr) unless it exited 0.
    pub fn run_ok(&self, scratch: &Path) -> Result<Finished> {
        let f = self.run(scratch)?;
        if !f.status.success() {
            bail!(
                "`{}` failed: {}\n--- stderr ---\n{}\n--- stdout ---\n{}",
                self.describe(),
                f.status,
                tail(&f.stderr, 40),
                tail(&f.stdout, 10)
            );
        }
        Ok(f)
    }
}

fn shell_word(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c)) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn read_lossy(p: &Path) -> Result<String> {
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A long-running child in its own process group, stopped (group-wide) when dropped: the
/// shared harness ([`discomy_protocol::plumbing::Daemon`]), registered for the Ctrl-C handler.
pub struct Daemon(plumbing::Daemon);

impl Daemon {
    /// Start `job` with stdout and stderr appended to `console`.
    pub fn spawn(name: &str, job: &Job, console: &Path) -> Result<Self> {
        let mut cmd = job.command();
        let daemon = plumbing::Daemon::spawn(name, &mut cmd, Logs::Combined(console.to_owned()))?;
        live_groups().push(daemon.pid() as i32);
        Ok(Daemon(daemon))
    }

    pub fn pid(&self) -> i32 {
        self.0.pid() as i32
    }

    /// A labelled block with the command line and the console tail, for error reports.
    pub fn report(&self, n: usize) -> String {
        self.0.logs_tail(n)
    }

    /// Fail if the daemon has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(st) = self.0.try_wait() {
            bail!("{} exited early ({st})\n{}", self.0.name(), self.report(40));
        }
        Ok(())
    }

    /// Poll `probe` every 20 ms until it yields a value, the daemon dies, or `timeout` passes.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        probe: impl FnMut() -> Option<T>,
    ) -> Result<T> {
        Ok(self.0.wait_until(what, timeout, probe)?)
    }

    /// SIGTERM the process group, wait up to 3 s for the leader, then SIGKILL whatever is left.
    pub fn stop(&mut self) {
        self.0.stop();
        let pgid = self.pid();
        live_groups().retain(|&g| g != pgid);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr().context("local_addr")?.port())
}

/// Find one of discomy's binaries: in `$DISCOMY_BIN_DIR`, else next to this executable.
pub fn find_discomy_bin(name: &str) -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(dir) = std::env::var_os("DISCOMY_BIN_DIR") {
        tried.push(PathBuf::from(dir).join(name));
    }
    let exe = std::env::current_exe().context("locating the discomy-bench executable")?;
    if let Some(dir) = exe.parent() {
        tried.push(dir.join(name));
    }
    if let Some(p) = tried.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "{name} not found (looked at {}); build the workspace (`cargo build --release --workspace`) \
         or set DISCOMY_BIN_DIR",
        list.join(", ")
    )
}
