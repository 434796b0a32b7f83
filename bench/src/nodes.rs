//! A discomy agent and worker pair on loopback with everything fresh: its own toolchain stores
//! (`--store`), unit work directory and logs under one temp dir, an optional
//! `--insecure-no-sandbox` worker, a chosen `DISCOMY_LOG` filter, and readiness once the agent
//! answers `Stats` (it binds its socket only after seeding the host's compilers), and the two
//! daemons' counters. Used by `discomy-bench toolchain`; `farm::DiscomyFarm` is the plain pair of
//! the other benchmarks.

use crate::proc::{Daemon, Job};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Worker start-up includes packaging every compiler on PATH (cold when the cache is empty).
const READY_TIMEOUT: Duration = Duration::from_secs(300);

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
        agent.wait_for("an answer to Stats on its socket", READY_TIMEOUT, || {
            let mut client = discomy_wrapper::client::AgentClient::connect(&socket).ok()?;
            matches!(
                client.call(&discomy_protocol::Request::Stats),
                Ok(discomy_protocol::Response::Stats(_))
            )
            .then_some(())
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

    /// The agent's counters (`Request::Stats` on its socket, as `discomy stats` asks).
    pub fn agent_stats(&self) -> Result<discomy_protocol::stats::AgentStats> {
        let mut agent = discomy_wrapper::client::AgentClient::connect(&self.socket)
            .with_context(|| format!("connecting to the agent at {}", self.socket.display()))?;
        match agent.call(&discomy_protocol::Request::Stats)? {
            discomy_protocol::Response::Stats(stats) => Ok(stats),
            other => anyhow::bail!("the agent answered Stats with {other:?}"),
        }
    }

    /// The worker's counters (`Request::Stats` over TCP, as `discomy stats --worker` asks).
    pub fn worker_stats(&self) -> Result<discomy_protocol::stats::WorkerStats> {
        use discomy_protocol::asyncio::{client_handshake, recv, send};
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let addr = self.worker_addr.clone();
        let answer = runtime.block_on(async move {
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            let auth = discomy_protocol::AuthConfig::from_option(None);
            let mut conn = client_handshake(stream, &auth).await?;
            send(&mut conn, &discomy_protocol::Request::Stats).await?;
            anyhow::Ok(recv::<_, discomy_protocol::Response>(&mut conn).await?)
        })?;
        match answer {
            discomy_protocol::Response::WorkerStats(stats) => Ok(stats),
            other => anyhow::bail!("the worker answered Stats with {other:?}"),
        }
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
