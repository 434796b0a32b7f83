//! A discomy agent and worker pair on loopback with everything fresh: its own toolchain stores
//! (`--store`), unit work directory and logs under one temp dir, an optional
//! `--insecure-no-sandbox` worker, a chosen `DISCOMY_LOG` filter, and readiness that waits for the
//! agent to finish seeding the host's compilers (it accepts wrappers only after that, although
//! its socket already answers). Used by `discomy-bench toolchain`; `farm::DiscomyFarm` is the
//! plain pair of the other benchmarks.

use crate::proc::{Daemon, Job};
use anyhow::{Context, Result};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Worker start-up includes packaging every compiler on PATH (cold when the cache is empty).
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// The line the agent and the worker log once the host's compilers are in their store.
pub const SEEDED: &str = "local compilers seeded into the toolchain store";

/// How to start a [`Nodes`] pair.
pub struct NodeOpts<'a> {
    /// Short name for reports (`sandboxed`, `unsandboxed`, `install#1`).
    pub label: &'a str,
    /// Worker `--slots` and agent host limit.
    pub slots: u32,
    /// false: start the worker with `--insecure-no-sandbox`.
    pub sandbox: bool,
    /// `DISCOMY_LOG` of both daemons.
    pub log_filter: &'a str,
}

/// A running agent and worker with fresh stores; stopped (agent first) and removed on drop.
pub struct Nodes {
    // Field order is drop order: the agent goes before the worker, the directory last.
    agent: Daemon,
    worker: Daemon,
    pub label: String,
    pub socket: PathBuf,
    pub worker_addr: String,
    pub sandbox: bool,
    /// Wall time from starting the worker to the agent having seeded its store.
    pub startup_ms: f64,
    agent_log: PathBuf,
    worker_log: PathBuf,
    dir: TempDir,
}

impl Nodes {
    pub fn start(compilerd: &Path, opts: &NodeOpts<'_>) -> Result<Self> {
        let started = Instant::now();
        let dir = crate::proc::temp_dir(&format!("discomy-bench-{}.", opts.label))?;
        let d = dir.path();
        let addr_file = d.join("worker.addr");
        let worker_log = d.join("worker.log");
        let mut worker_job = Job::new(compilerd, d)
            .env("DISCOMY_LOG", opts.log_filter)
            .args(["worker", "--listen", "127.0.0.1:0", "--slots"])
            .arg(opts.slots.to_string())
            .arg("--addr-file")
            .arg(&addr_file)
            .arg("--store")
            .arg(d.join("worker-store"))
            .arg("--work-dir")
            .arg(d.join("units"));
        if !opts.sandbox {
            worker_job = worker_job.arg("--insecure-no-sandbox");
        }
        let name = format!("discomy-compilerd worker ({})", opts.label);
        let mut worker = Daemon::spawn(&name, &worker_job, &worker_log)?;
        // The address file is written after seeding, once the worker listens.
        let worker_addr = worker.wait_for("address file", READY_TIMEOUT, || {
            let s = std::fs::read_to_string(&addr_file).ok()?;
            s.ends_with('\n').then(|| s.trim().to_owned()).filter(|a| !a.is_empty())
        })?;

        let socket = d.join("agent.sock");
        let agent_log = d.join("agent.log");
        let agent_job = Job::new(compilerd, d)
            .env("DISCOMY_LOG", opts.log_filter)
            .arg("agent")
            .arg("--socket")
            .arg(&socket)
            .arg("--hosts")
            .arg(format!("{worker_addr}/{}", opts.slots))
            .arg("--store")
            .arg(d.join("agent-store"));
        let name = format!("discomy-compilerd agent ({})", opts.label);
        let mut agent = Daemon::spawn(&name, &agent_job, &agent_log)?;
        agent.wait_for("seeded store and unix socket", READY_TIMEOUT, || {
            let log = std::fs::read(&agent_log).ok()?;
            let seeded = String::from_utf8_lossy(&log).contains(SEEDED);
            (seeded && UnixStream::connect(&socket).is_ok()).then_some(())
        })?;
        worker.ensure_running()?;
        Ok(Nodes {
            agent,
            worker,
            label: opts.label.to_owned(),
            socket,
            worker_addr,
            sandbox: opts.sandbox,
            startup_ms: started.elapsed().as_secs_f64() * 1000.0,
            agent_log,
            worker_log,
            dir,
        })
    }

    /// The worker's `--store` directory.
    pub fn worker_store(&self) -> PathBuf {
        self.dir.path().join("worker-store")
    }

    pub fn agent_log(&self) -> Result<String> {
        read_log(&self.agent_log)
    }

    pub fn worker_log(&self) -> Result<String> {
        read_log(&self.worker_log)
    }

    /// CPU time (user + system, ms) of the worker's reaped children so far: the compilers (and
    /// sandbox helpers) it ran. 10 ms resolution.
    pub fn worker_children_cpu_ms(&self) -> Option<f64> {
        children_cpu_ms(self.worker.pid())
    }

    /// Fail (with both logs' tails) if either daemon has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.worker.ensure_running()?;
        self.agent.ensure_running()
    }

    /// The daemons' command lines and last log lines, for error reports.
    pub fn report(&self) -> String {
        format!("{}\n{}", self.worker.report(30), self.agent.report(30))
    }

    pub fn describe(&self) -> String {
        format!(
            "{}: worker pid {} on {}{}, agent pid {} (fresh --store dirs)",
            self.label,
            self.worker.pid(),
            self.worker_addr,
            if self.sandbox { "" } else { " --insecure-no-sandbox" },
            self.agent.pid(),
        )
    }
}

fn read_log(p: &Path) -> Result<String> {
    let b = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

/// `cutime + cstime` of `/proc/PID/stat`, in ms. The kernel reports them in USER_HZ ticks,
/// which the ABI fixes at 100 per second.
pub fn children_cpu_ms(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): field 3 (state) is index 0, so
    // fields 16 (cutime) and 17 (cstime) are indices 13 and 14.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(13)?.parse::<f64>().ok()? + f.get(14)?.parse::<f64>().ok()?;
    Some(ticks * 10.0)
}

/// Seconds since midnight UTC of a tracing log line's timestamp (`2025-01-01T12:34:56.789Z`).
pub fn log_time_of_day(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let t = ts.split_once('T')?.1.trim_end_matches('Z');
    let mut it = t.split(':');
    let (h, m, s) = (it.next()?, it.next()?, it.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// Seconds since midnight UTC now, comparable with [`log_time_of_day`].
pub fn now_time_of_day() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() % 86400.0)
}

/// `later - earlier` in ms for two times of day, across midnight if need be.
pub fn time_of_day_diff_ms(later: f64, earlier: f64) -> f64 {
    let mut d = later - earlier;
    if d < -43200.0 {
        d += 86400.0;
    }
    d * 1000.0
}

/// The value of `key=` in a tracing log line (up to the next space).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let at = line.find(&pat)? + pat.len();
    line[at..].split_whitespace().next()
}

/// `key=` of a log line as a number.
pub fn num_field(line: &str, key: &str) -> Option<f64> {
    field(line, key)?.trim_matches('"').parse().ok()
}

/// The lines of `log` after the seeding line (none if it never appeared).
pub fn after_seeding(log: &str) -> Vec<&str> {
    let mut seen = false;
    let mut out = Vec::new();
    for l in log.lines() {
        if seen {
            out.push(l);
        } else if l.contains(SEEDED) {
            seen = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let l = "2025-01-01T00:00:00Z  INFO discomy_compilerd::store::tools: toolchain installed \
                 toolchain=abc name=gcc 11.4.0 bytes=123 ms=45";
        assert_eq!(field(l, "toolchain"), Some("abc"));
        assert_eq!(num_field(l, "bytes"), Some(123.0));
        assert_eq!(num_field(l, "ms"), Some(45.0));
        assert_eq!(field(l, "nope"), None);
        let log = format!("a ms=1\nx {SEEDED}\nb ms=2\n");
        assert_eq!(after_seeding(&log), vec!["b ms=2"]);
        let t = log_time_of_day(l).unwrap_or_default();
        assert!(t.abs() < 1e-9, "{t}");
        let t = log_time_of_day("2025-01-01T01:02:03.5Z  INFO x").unwrap_or_default();
        assert!((t - 3723.5).abs() < 1e-9, "{t}");
        assert!((time_of_day_diff_ms(1.0, 86399.0) - 2000.0).abs() < 1e-6);
        assert!(children_cpu_ms(std::process::id() as i32).is_some());
    }
}
