//! The two compile farms under test, each on loopback and torn down on drop: Debian's real
//! `distccd`, and discomy's `discomy-compilerd` worker plus agent.

use crate::proc::{Daemon, Job, free_port};
use anyhow::{Context, Result};
use std::ffi::OsString;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A real `distccd` on 127.0.0.1:`port`.
pub struct Distccd {
    daemon: Daemon,
    pub port: u16,
    pub slots: u32,
    log_file: PathBuf,
    client_dir: PathBuf,
    _dir: TempDir,
}

impl Distccd {
    pub fn start(slots: u32) -> Result<Self> {
        let dir = crate::proc::temp_dir("discomy-bench-distccd.")?;
        // Started as root, distccd drops to its own user before opening --log-file: the
        // directory must be searchable and the log writable by that user.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .context("chmod distccd dir")?;
        let log_file = dir.path().join("distccd.log");
        std::fs::write(&log_file, b"").context("creating the distccd log")?;
        std::fs::set_permissions(&log_file, std::fs::Permissions::from_mode(0o666))
            .context("chmod distccd log")?;
        let client_dir = dir.path().join("client");
        std::fs::create_dir(&client_dir).context("creating DISTCC_DIR")?;

        let port = free_port()?;
        let job = Job::new("distccd", dir.path())
            .args(["--daemon", "--no-detach", "--allow", "127.0.0.1", "--listen", "127.0.0.1"])
            .arg("--port")
            .arg(port.to_string())
            .arg("--jobs")
            .arg(slots.to_string())
            .arg("--log-file")
            .arg(&log_file);
        let mut daemon = Daemon::spawn("distccd", &job, &dir.path().join("distccd.console"))?;
        daemon
            .wait_for("TCP port", READY_TIMEOUT, || TcpStream::connect(("127.0.0.1", port)).ok())?;
        Ok(Distccd { daemon, port, slots, log_file, client_dir, _dir: dir })
    }

    /// `DISTCC_HOSTS` and `DISTCC_DIR` for the `distcc` client.
    pub fn client_env(&self) -> Vec<(OsString, OsString)> {
        vec![
            ("DISTCC_HOSTS".into(), format!("127.0.0.1:{}/{}", self.port, self.slots).into()),
            ("DISTCC_DIR".into(), self.client_dir.clone().into()),
        ]
    }

    /// Jobs distccd reports as compiled successfully (`COMPILE_OK` lines in its log).
    pub fn compile_ok_count(&self) -> Result<usize> {
        let log = std::fs::read(&self.log_file)
            .with_context(|| format!("reading {}", self.log_file.display()))?;
        Ok(String::from_utf8_lossy(&log).lines().filter(|l| l.contains(" COMPILE_OK ")).count())
    }

    pub fn report(&self) -> String {
        let log = std::fs::read(&self.log_file)
            .map(|b| crate::proc::tail(&String::from_utf8_lossy(&b), 20))
            .unwrap_or_else(|e| format!("(cannot read: {e})"));
        format!(
            "{}\n--- distccd log {} ---\n{log}",
            self.daemon.report(10),
            self.log_file.display()
        )
    }

    pub fn describe(&self) -> String {
        format!(
            "distccd pid {} on 127.0.0.1:{} (--jobs {})",
            self.daemon.pid(),
            self.port,
            self.slots
        )
    }
}

/// `discomy-compilerd worker` plus `discomy-compilerd agent` on loopback.
pub struct DiscomyFarm {
    // Field order is drop order: the agent goes before the worker, the directory last.
    agent: Daemon,
    worker: Daemon,
    pub socket: PathBuf,
    pub worker_addr: String,
    pub slots: u32,
    _dir: TempDir,
}

/// A farm CA and fleet directories for a worker and an agent (`--fleet-dir`), made in `dir`.
fn fleet_dirs(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    use discomy_protocol::fleet::FleetRole;
    use discomy_protocol::plumbing::fs::{WriteOptions, write_atomically_with};
    let (ca, _) = discomy_protocol::tls::Ca::create("bench")?;
    let day = Duration::from_secs(86_400);
    let mut out = Vec::new();
    for (name, role) in [("worker", FleetRole::Worker), ("agent", FleetRole::Agent)] {
        let fleet = dir.join(format!("{name}-fleet"));
        std::fs::create_dir(&fleet).with_context(|| format!("creating {}", fleet.display()))?;
        let (issued, key) = ca.issue_with_key(name, &[role], day)?;
        for (file, text, mode) in [
            ("ca.pem", ca.pem(), 0o644),
            ("node.pem", issued.pem.as_str(), 0o644),
            ("node.key", key.as_str(), 0o600),
        ] {
            let how = WriteOptions { mode: Some(mode), ..WriteOptions::default() };
            write_atomically_with(&fleet.join(file), &[text.as_bytes()], how)?;
        }
        out.push(fleet);
    }
    let agent = out.pop().context("two fleet directories")?;
    let worker = out.pop().context("two fleet directories")?;
    Ok((worker, agent))
}

impl DiscomyFarm {
    /// Plain TCP between agent and worker (a lab farm's default).
    pub fn start(compilerd: &Path, slots: u32) -> Result<Self> {
        Self::start_with(compilerd, slots, false)
    }

    /// With `tls`, the working fleet's mutual TLS between agent and worker (certificates of a
    /// CA made for the run).
    pub fn start_with(compilerd: &Path, slots: u32, tls: bool) -> Result<Self> {
        let dir = crate::proc::temp_dir("discomy-bench-farm.")?;
        let fleet = if tls { Some(fleet_dirs(dir.path())?) } else { None };
        let addr_file = dir.path().join("worker.addr");
        let mut worker_job = Job::new(compilerd, dir.path());
        if let Some((worker_fleet, _)) = &fleet {
            worker_job = worker_job.arg("--fleet-dir").arg(worker_fleet);
        }
        let worker_job = worker_job
            .args(["worker", "--listen", "127.0.0.1:0", "--slots"])
            .arg(slots.to_string())
            .arg("--addr-file")
            .arg(&addr_file);
        let mut worker =
            Daemon::spawn("discomy-compilerd worker", &worker_job, &dir.path().join("worker.log"))?;
        let worker_addr = worker.wait_for("address file", READY_TIMEOUT, || {
            let s = std::fs::read_to_string(&addr_file).ok()?;
            // The file is complete once its line ends.
            s.ends_with('\n').then(|| s.trim().to_owned()).filter(|a| !a.is_empty())
        })?;

        let socket = dir.path().join("agent.sock");
        let mut agent_job = Job::new(compilerd, dir.path());
        if let Some((_, agent_fleet)) = &fleet {
            agent_job = agent_job.arg("--fleet-dir").arg(agent_fleet);
        }
        let agent_job = agent_job
            .arg("agent")
            .arg("--socket")
            .arg(&socket)
            .arg("--hosts")
            .arg(format!("{worker_addr}/{slots}"));
        let mut agent =
            Daemon::spawn("discomy-compilerd agent", &agent_job, &dir.path().join("agent.log"))?;
        agent.wait_for("unix socket", READY_TIMEOUT, || UnixStream::connect(&socket).ok())?;
        worker.ensure_running()?;
        Ok(DiscomyFarm { agent, worker, socket, worker_addr, slots, _dir: dir })
    }

    /// The daemons' command lines and last log lines, for error reports.
    pub fn report(&self) -> String {
        format!("{}\n{}", self.worker.report(30), self.agent.report(30))
    }

    pub fn describe(&self) -> String {
        format!(
            "discomy worker pid {} on {} (--slots {}), agent pid {} on {}",
            self.worker.pid(),
            self.worker_addr,
            self.slots,
            self.agent.pid(),
            self.socket.display()
        )
    }
}
