//! Helpers for the distcc compatibility tests: real `distccd` and `distcc` from Debian's packages,
//! a compilerd worker with its distcc listener, and raw protocol exchanges.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Proc, START_TIMEOUT, Worker, clean_command};

pub use crate::free_port;

/// Waits until `127.0.0.1:port` accepts connections.
pub fn wait_for_port(port: u16, proc: &mut Proc) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = proc.try_wait() {
            panic!("{} exited ({status}) before listening on {port}", proc.name());
        }
        assert!(start.elapsed() < START_TIMEOUT, "{} did not listen on {port}", proc.name());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A compilerd worker with `--distcc-listen 127.0.0.1:PORT` and `extra` flags.
pub fn distcc_worker(dir: &Path, name: &str, slots: u32, extra: &[&str]) -> (Worker, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut flags = vec!["--distcc-listen", listen.as_str()];
    flags.extend_from_slice(extra);
    let worker = Worker::start_with(dir, name, slots, &flags);
    (worker, port)
}

/// A real `distccd` on 127.0.0.1, killed when dropped.
pub struct Distccd {
    /// The process.
    pub proc: Proc,
    /// Its port.
    pub port: u16,
    /// Its log file.
    pub log: PathBuf,
}

impl Distccd {
    /// Starts `distccd --no-detach --daemon` on a free port, allowing 127.0.0.1 only. `dir` must
    /// sit in a world-traversable directory (a `tempfile::tempdir()` in /tmp does).
    pub fn start(dir: &Path, name: &str, jobs: u32) -> Distccd {
        let port = free_port();
        // distccd drops root to its own user: its log and TMPDIR must be writable for it.
        let log = dir.join(format!("{name}.log"));
        fs::write(&log, b"").expect("create distccd log");
        fs::set_permissions(&log, fs::Permissions::from_mode(0o666)).expect("chmod log");
        let tmp = dir.join(format!("{name}-tmp"));
        fs::create_dir_all(&tmp).expect("distccd tmp");
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777)).expect("chmod tmp");
        // `dir` is a test's private temp dir (0700): let the distccd user through.
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
        let mut cmd = clean_command("distccd");
        cmd.env("TMPDIR", &tmp)
            .args(["--no-detach", "--daemon", "--listen", "127.0.0.1", "--allow", "127.0.0.1"])
            .args(["--port", &port.to_string(), "--jobs", &jobs.to_string()])
            .args(["--log-level", "info", "--log-file"])
            .arg(&log);
        let mut proc = Proc::spawn(name, &mut cmd, dir);
        wait_for_port(port, &mut proc);
        eprintln!("[e2e] {name} (real distccd) listening on 127.0.0.1:{port}");
        Distccd { proc, port, log }
    }

    /// Lines of its log with `COMPILE_OK`.
    pub fn compiles_ok(&self) -> usize {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().filter(|l| l.contains("COMPILE_OK")).count()
    }
}

/// The real `distcc` client for `hosts`, logging verbosely to `log`, with its own `DISTCC_DIR`.
pub fn distcc_env(cmd: &mut Command, dir: &Path, hosts: &str, log: &Path) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DISTCC_") {
            cmd.env_remove(&key);
        }
    }
    let distcc_dir = dir.join("distcc-dir");
    fs::create_dir_all(&distcc_dir).expect("DISTCC_DIR");
    cmd.env("DISTCC_HOSTS", hosts)
        .env("DISTCC_DIR", &distcc_dir)
        .env("DISTCC_LOG", log)
        .env("DISTCC_VERBOSE", "1");
}

/// Sends `request` to `127.0.0.1:port`, half-closes, and reads the answer until the server closes.
pub fn raw_exchange(port: u16, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    // The server may answer (and close) before reading everything; a failed write is fine.
    let _ = s.write_all(request);
    // The end of the request (a truncated one is then an error at once, not a timeout).
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}
