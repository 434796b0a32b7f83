//! A private, throwaway PostgreSQL server for tests and benchmarks: Debian's `initdb` and
//! `postgres` (`/usr/lib/postgresql/*/bin`), a data directory under the temporary directory, and
//! a Unix socket in it (`listen_addresses=''`: no TCP port, so it works inside a network
//! namespace that holds only `lo`, and two runs never collide). Run as the `postgres` user when
//! started by root (PostgreSQL refuses root). The server is killed when the process that started
//! it exits, however it exits (`setpriv --pdeathsig KILL`, from a thread that never ends), and
//! data directories of dead processes are removed by the next start.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Why no server could be had.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    /// PostgreSQL's server programs are not installed.
    #[error("PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on PATH)")]
    NotInstalled,
    /// Running as root, but there is no `postgres` user to run the server as.
    #[error("no postgres user in /etc/passwd to run the server as")]
    NoUser,
    /// A file or a program could not be used.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The server did not come up.
    #[error("{0}")]
    Start(String),
    /// A statement failed.
    #[error("{0}")]
    Sql(#[from] postgres::Error),
}

/// A running private server; stopped (and its directory removed) when dropped.
pub struct ScratchPostgres {
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

const PREFIX: &str = "discomy-pg-";

impl ScratchPostgres {
    /// Starts a server. `durable`: keep PostgreSQL's default fsync and synchronous commits
    /// (benchmarks); otherwise turn them off (tests).
    pub fn start(durable: bool) -> Result<ScratchPostgres, ScratchError> {
        let bin = bin_dir().ok_or(ScratchError::NotInstalled)?;
        let user = run_as()?;
        remove_stale();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{PREFIX}{}-{n}", std::process::id()));
        let io = |what: &str, e| ScratchError::Io(format!("{what} {}", dir.display()), e);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| io("create", e))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| io("chown", e))?;
        }
        let server = ScratchPostgres { dir: dir.clone(), child: Mutex::new(None) };
        let log =
            |name: &str| fs::File::create(dir.join(name)).map_err(|e| io("create a log in", e));
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-D", "data", "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log("initdb.log")?)
            .stderr(log("initdb.err")?);
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let status = initdb.status().map_err(|e| io("initdb in", e))?;
        if !status.success() {
            let err = fs::read_to_string(dir.join("initdb.err")).unwrap_or_default();
            return Err(ScratchError::Start(format!("initdb failed ({status}): {err}")));
        }
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"])
            .arg(bin.join("postgres"))
            .args(["-D", "data", "-p", "5432", "-c", "listen_addresses=", "-k"])
            .arg(&dir)
            .args(["-c", "max_connections=200", "-c", "shared_buffers=64MB"]);
        if !durable {
            cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"]);
        }
        cmd.current_dir(&dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log("server.log")?);
        if let Some((uid, gid)) = user {
            cmd.uid(uid).gid(gid);
        }
        *server.child.lock().map_err(|_| ScratchError::Start("lock poisoned".into()))? =
            Some(spawn_from_lasting_thread(cmd).map_err(|e| io("start postgres in", e))?);
        server.wait_ready()?;
        Ok(server)
    }

    /// The connection string (libpq `key=value` words) of database `name`.
    pub fn database(&self, name: &str) -> String {
        format!("host={} port=5432 user=postgres dbname={name}", self.dir.display())
    }

    /// The Unix socket directory (the `host`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// Creates database `name` (lowercase letters, digits, `_`) and returns its connection string.
    pub fn create_database(&self, name: &str) -> Result<String, ScratchError> {
        if name.is_empty()
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(ScratchError::Start(format!("{name:?} is not a plain database name")));
        }
        let mut client = postgres::Client::connect(&self.database("postgres"), postgres::NoTls)?;
        client.batch_execute(&format!("CREATE DATABASE {name}"))?;
        Ok(self.database(name))
    }

    fn wait_ready(&self) -> Result<(), ScratchError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match postgres::Client::connect(&self.database("postgres"), postgres::NoTls) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    let log = fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                    return Err(ScratchError::Start(format!("postgres did not start: {e}\n{log}")));
                }
                Err(_) => {}
            }
            if let Ok(mut child) = self.child.lock() {
                if let Some(Ok(Some(status))) = child.as_mut().map(Child::try_wait) {
                    let log = fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                    return Err(ScratchError::Start(format!("postgres exited ({status}): {log}")));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Starts `cmd` from a thread that lives as long as the process: the parent-death signal is
/// sent when the thread that started the child ends, not the process.
fn spawn_from_lasting_thread(mut cmd: Command) -> std::io::Result<Child> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("scratch-postgres".into()).spawn(move || {
        let _ = tx.send(cmd.spawn());
        loop {
            std::thread::park();
        }
    })?;
    rx.recv().map_err(|e| std::io::Error::other(e.to_string()))?
}

/// The newest installed server's programs.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
}

/// The `postgres` user's ids when running as root (the server refuses root), else none.
fn run_as() -> Result<Option<(u32, u32)>, ScratchError> {
    let me = fs::metadata("/proc/self").map_err(|e| ScratchError::Io("/proc/self".into(), e))?;
    if me.uid() != 0 {
        return Ok(None);
    }
    let passwd =
        fs::read_to_string("/etc/passwd").map_err(|e| ScratchError::Io("/etc/passwd".into(), e))?;
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .map(Some)
        .ok_or(ScratchError::NoUser)
}

/// Removes the directories of servers whose process is gone (killed before its cleanup).
fn remove_stale() {
    for entry in fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else { continue };
        let Some(pid) = rest.split('-').next() else { continue };
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
