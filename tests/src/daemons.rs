//! The compile daemons under test: a `discomy-compilerd worker` on `127.0.0.1:0`
//! ([`Worker`]), an agent on a private Unix socket ([`Agent`]), and both together ([`Farm`]).

use std::fs;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Proc, START_TIMEOUT, bin, clean_command, private_tmp};

/// A `discomy-compilerd worker` on `127.0.0.1:0`.
pub struct Worker {
    /// The process.
    pub proc: Proc,
    /// Where it listens (from its `--addr-file`).
    pub addr: SocketAddr,
    /// Its slot count.
    pub slots: u32,
    /// Its `--work-dir` (a `unit-*` directory per compile in flight).
    pub work_dir: PathBuf,
}

impl Worker {
    /// Starts a worker and waits until it has written its address.
    pub fn start(dir: &Path, name: &str, slots: u32) -> Worker {
        Worker::start_with(dir, name, slots, &[])
    }

    /// [`Worker::start`] with extra worker flags (limits, for instance).
    pub fn start_with(dir: &Path, name: &str, slots: u32, extra: &[&str]) -> Worker {
        let addr_file = dir.join(format!("{name}.addr"));
        let work_dir = dir.join(format!("{name}.work"));
        let mut cmd = clean_command(bin("discomy-compilerd"));
        cmd.env("TMPDIR", private_tmp(dir, name));
        cmd.args(["worker", "--listen", "127.0.0.1:0", "--slots", &slots.to_string()])
            .arg("--seed-compilers")
            .arg(default_compiler_names().join(","))
            .arg("--addr-file")
            .arg(&addr_file)
            .arg("--work-dir")
            .arg(&work_dir)
            .arg("--store")
            .arg(dir.join(format!("{name}.store")))
            .args(extra);
        let mut proc = Proc::spawn(name, &mut cmd, dir);
        let what = format!("write {}", addr_file.display());
        let text = wait_until_ready(&mut proc, &what, || {
            fs::read_to_string(&addr_file).ok().filter(|t| t.ends_with('\n'))
        });
        let trimmed = text.trim();
        let addr = trimmed.parse::<SocketAddr>().unwrap_or_else(|e| {
            panic!("{name}: address file {} holds {trimmed:?}: {e}", addr_file.display())
        });
        eprintln!("[e2e] {name} listening on {addr}");
        Worker { proc, addr, slots, work_dir }
    }

    /// How many units it is compiling right now (its `unit-*` directories).
    pub fn units_in_flight(&self) -> usize {
        fs::read_dir(&self.work_dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().starts_with("unit-"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// `IP:PORT/LIMIT` for `--hosts`.
    pub fn host_spec(&self) -> String {
        format!("{}/{}", self.addr, self.slots)
    }
}

/// The names of this host's default C and C++ compilers (`cc`, `gcc`, `gcc-12`,
/// `x86_64-linux-gnu-gcc-12`, … for the `gcc` on PATH): what test workers offer, so that they see
/// only the compilers a test gives them whatever else is installed (Debian's `gcc-11`, say).
pub fn default_compiler_names() -> Vec<String> {
    let out = Command::new("gcc").arg("-dumpversion").output().expect("gcc -dumpversion");
    let major =
        String::from_utf8_lossy(&out.stdout).trim().split('.').next().unwrap_or("").to_owned();
    let mut names: Vec<String> = ["cc", "c++", "gcc", "g++"].map(String::from).to_vec();
    for tool in ["gcc", "g++"] {
        names.push(format!("{tool}-{major}"));
        names.push(format!("x86_64-linux-gnu-{tool}"));
        names.push(format!("x86_64-linux-gnu-{tool}-{major}"));
    }
    names
}

/// `--hosts` value for a set of workers.
pub fn hosts_of(workers: &[Worker]) -> String {
    workers.iter().map(Worker::host_spec).collect::<Vec<_>>().join(",")
}

/// A `discomy-compilerd agent` on a private Unix socket.
pub struct Agent {
    /// The process.
    pub proc: Proc,
    /// Its socket (for `DISCOMY_SOCKET`).
    pub socket: PathBuf,
}

impl Agent {
    /// Starts an agent for `hosts` and waits until its socket accepts connections.
    pub fn start(dir: &Path, name: &str, hosts: &str) -> Agent {
        Agent::start_with(dir, name, hosts, &[], &[])
    }

    /// [`Agent::start`] with extra environment variables (`DISCOMY_VERIFY_RATE`, say) and flags.
    pub fn start_with(
        dir: &Path,
        name: &str,
        hosts: &str,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Agent {
        let socket = dir.join(format!("{name}.sock"));
        let mut cmd = clean_command(bin("discomy-compilerd"));
        cmd.env("TMPDIR", private_tmp(dir, name));
        cmd.arg("agent").arg("--socket").arg(&socket).args(["--hosts", hosts]);
        cmd.arg("--store").arg(dir.join(format!("{name}.store")));
        cmd.envs(env.iter().copied()).args(extra);
        let mut proc = Proc::spawn(name, &mut cmd, dir);
        let what = format!("accept on {}", socket.display());
        wait_until_ready(&mut proc, &what, || UnixStream::connect(&socket).ok());
        eprintln!("[e2e] {name} accepting on {}", socket.display());
        Agent { proc, socket }
    }
}

/// Polls `ready` until it gives a value; panics, saying it could not `what`, when the daemon
/// exits first or [`START_TIMEOUT`] runs out.
fn wait_until_ready<T>(proc: &mut Proc, what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = ready() {
            return value;
        }
        if let Some(status) = proc.try_wait() {
            panic!("{} exited ({status}) before it could {what}", proc.name());
        }
        assert!(
            start.elapsed() < START_TIMEOUT,
            "{} did not {what} within {START_TIMEOUT:?}",
            proc.name()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Workers plus an agent that knows them. Dropping it kills them all.
pub struct Farm {
    /// The agent (declared first: dropped, i.e. killed, first).
    pub agent: Agent,
    /// The workers.
    pub workers: Vec<Worker>,
}

impl Farm {
    /// Starts `workers` workers with `slots` slots each, and an agent.
    pub fn start(dir: &Path, workers: usize, slots: u32) -> Farm {
        let workers: Vec<Worker> =
            (0..workers).map(|i| Worker::start(dir, &format!("worker{i}"), slots)).collect();
        let agent = Agent::start(dir, "agent", &hosts_of(&workers));
        Farm { agent, workers }
    }

    /// Fails the test if a daemon has died.
    pub fn assert_alive(&mut self) {
        assert!(self.agent.proc.try_wait().is_none(), "the agent died");
        for w in &mut self.workers {
            let name = w.proc.name().to_owned();
            assert!(w.proc.try_wait().is_none(), "{name} died");
        }
    }
}
