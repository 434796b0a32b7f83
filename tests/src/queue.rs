//! The build queue under test: a coordinator serving the operations API on a fixed loopback port
//! (so it can be killed and restarted at the same address) with its state in the test's
//! directory ([`QueueCoordinator`]), builders with their TOML configuration ([`Builder`]), the
//! `discomy submit`/`discomy jobs` commands ([`discomy_json`]), and the chroot and sources the
//! package builds need ([`chroot_prerequisites`]).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::os::unix::net::UnixStream;

use crate::{
    Proc, START_TIMEOUT, Worker, bin, clean_command, hosts_of, private_tmp, workspace_root,
};

pub use crate::free_port;

/// Queue timings short enough for a test: builders report every second, a silent one loses its
/// job after 6 s, retries wait 1 s; no disk or memory floor.
pub const FAST_QUEUE: &str = "max_upload_bytes = 8388608\n[ops.queue]\nreport_every_secs = 1.0\n\
                              lease_secs = 6.0\nbackoff_secs = 1.0\nmin_free_disk_bytes = 0\n\
                              min_job_memory_bytes = 0\n";

/// The chroot tree (`scripts/setup-chroot.sh`) and the sources directory; `Err` says why the
/// package-build tests cannot run here.
pub fn chroot_prerequisites() -> Result<(PathBuf, PathBuf), String> {
    let base = match std::env::var_os("DISCOMY_CHROOTS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("target").join("chroots"),
    };
    let root = base.join("trixie").join("root");
    let sources = base.join("sources");
    if !root.join("usr/bin/rpmbuild").is_file() || !root.join("usr/bin/eu-strip").exists() {
        return Err(format!(
            "no chroot with rpmbuild and elfutils at {}: run `bash scripts/setup-chroot.sh`",
            root.display()
        ));
    }
    let tarballs = [
        "lua-5.4.4.tar.gz",
        "lpeg-1.0.2.tar.gz",
        "lua-filesystem-1.8.0.tar.gz",
        "argparse-0.7.1.tar.gz",
    ];
    for tarball in tarballs {
        if !sources.join(tarball).is_file() {
            return Err(format!("{} is missing: run `bash scripts/setup-chroot.sh`", tarball));
        }
    }
    let uid = std::process::Command::new("id").arg("-u").output().map(|o| o.stdout);
    if String::from_utf8_lossy(&uid.unwrap_or_default()).trim() != "0" {
        return Err("builders enter chroots (unshare, mount, chroot): root is needed".to_owned());
    }
    Ok((root, sources))
}

/// A package directory for `discomy submit --package`: the test project's spec and its tarball.
pub fn package_dir(dir: &Path, name: &str, tarball: &Path) -> PathBuf {
    let pkg = dir.join("packages").join(name);
    fs::create_dir_all(&pkg).expect("create package dir");
    let spec = workspace_root().join("tests/rpm-projects").join(name).join(format!("{name}.spec"));
    fs::copy(&spec, pkg.join(format!("{name}.spec"))).expect("copy spec");
    fs::copy(tarball, pkg.join(tarball.file_name().expect("tarball name"))).expect("copy tarball");
    pkg
}

/// How to reach the API: its URL and, when it has one, the file holding the farm token.
#[derive(Debug, Clone)]
pub struct Api {
    /// `http://IP:PORT`.
    pub url: String,
    /// `token_file` of the coordinator, given to clients as `--token-file`.
    pub token_file: Option<PathBuf>,
}

/// A coordinator with its build queue API on `IP:PORT`.
pub struct QueueCoordinator {
    /// The process (replaced on restart).
    pub proc: Proc,
    /// Its API.
    pub api: Api,
    dir: PathBuf,
    config: PathBuf,
    port: u16,
    starts: u32,
}

impl QueueCoordinator {
    /// Starts a coordinator on loopback, without a token, whose `[ops]` section is `ops_toml`
    /// plus the API address and the state directory.
    pub fn start(dir: &Path, ops_toml: &str) -> QueueCoordinator {
        QueueCoordinator::start_on(dir, "127.0.0.1", None, ops_toml)
    }

    /// [`QueueCoordinator::start`] with the API on `ip` and, with `token`, a `token_file`.
    pub fn start_on(dir: &Path, ip: &str, token: Option<&str>, ops_toml: &str) -> QueueCoordinator {
        let port = free_port();
        let config = dir.join("coordinator.toml");
        let state = dir.join("coordinator-state");
        let token_file = token.map(|t| {
            let file = dir.join("farm-token");
            fs::write(&file, format!("{t}\n")).expect("write the token file");
            file
        });
        let mut text = String::new();
        if let Some(file) = &token_file {
            text.push_str(&format!("token_file = \"{}\"\n", file.display()));
        }
        text.push_str(&format!(
            "[ops]\napi_listen = \"{ip}:{port}\"\nstate_dir = \"{}\"\n{ops_toml}\n",
            state.display()
        ));
        fs::write(&config, text).expect("write coordinator.toml");
        let proc = Self::spawn(dir, &config, 0);
        let api = Api { url: format!("http://{ip}:{port}"), token_file };
        QueueCoordinator { proc, api, dir: dir.to_path_buf(), config, port, starts: 1 }
    }

    fn spawn(dir: &Path, config: &Path, n: u32) -> Proc {
        let addr_file = dir.join(format!("coordinator-api-{n}.addr"));
        let mut cmd = clean_command(bin("discomy-coordinator"));
        cmd.env("TMPDIR", private_tmp(dir, "coordinator"))
            .args(["--listen", "127.0.0.1:0", "--no-mdns", "--config"])
            .arg(config)
            .arg("--api-addr-file")
            .arg(&addr_file);
        let mut proc = Proc::spawn(&format!("coordinator-{n}"), &mut cmd, dir);
        let start = Instant::now();
        while !addr_file.exists() {
            if let Some(status) = proc.try_wait() {
                panic!("the coordinator exited ({status}):\n{}", proc.logs(30));
            }
            assert!(start.elapsed() < START_TIMEOUT, "the coordinator API did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        proc
    }

    /// `kill -9` of the coordinator, no clean-up of any kind.
    pub fn kill9(&mut self) {
        crate::signal_group(self.proc.pid(), "KILL");
        let _ = self.proc.try_wait();
        std::thread::sleep(Duration::from_millis(200));
    }

    /// Starts it again on the same port, configuration and state.
    pub fn restart(&mut self) {
        // The port is free again once the killed process is gone.
        let start = Instant::now();
        while TcpListener::bind(("127.0.0.1", self.port)).is_err() {
            assert!(start.elapsed() < START_TIMEOUT, "port {} stays busy", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proc = Self::spawn(&self.dir, &self.config, self.starts);
        self.starts += 1;
    }
}

/// A `discomy-compilerd builder` with its configuration file.
pub struct Builder {
    /// The process.
    pub proc: Proc,
    /// Its name.
    pub name: String,
    /// Its `/metrics` (`http://IP:PORT/metrics`).
    pub metrics: String,
}

impl Builder {
    /// Starts builder `name` of `api`, with one chroot `el9` (the test chroot with Rocky 9's
    /// macros and flags installed) and `extra` TOML lines at the top level. `farm`: the agent's
    /// socket directory and the masquerade directory, to build through the farm. `netns`: the
    /// network namespace it runs in (`ip netns exec`), the test's own otherwise.
    pub fn start(
        dir: &Path,
        name: &str,
        api: &Api,
        root: &Path,
        farm: Option<(&Path, &Path)>,
        netns: Option<&str>,
    ) -> Builder {
        let rpm = workspace_root().join("rpm");
        let work = dir.join(format!("{name}-work"));
        let mut text = format!(
            "name = \"{name}\"\napi = \"{}\"\nwork_dir = \"{}\"\nslots = 1\n\
             arches = [\"x86_64\"]\nmemory_limit = \"4G\"\ncpus = 2\nreport_every = 1\n\
             runner = \"{}\"\n",
            api.url,
            work.display(),
            rpm.join("chroot-run.sh").display(),
        );
        if let Some(file) = &api.token_file {
            text.push_str(&format!("token_file = \"{}\"\n", file.display()));
        }
        // In a network namespace of its own, only that namespace's loopback is reachable.
        let metrics = format!("127.0.0.1:{}", free_port());
        text.push_str(&format!("metrics_listen = \"{metrics}\"\n"));
        if let Some((socket_dir, libexec)) = farm {
            text.push_str(&format!(
                "[farm]\nsocket_dir = \"{}\"\nlibexec_dir = \"{}\"\nsmp_ncpus = 4\n",
                socket_dir.display(),
                libexec.display()
            ));
        }
        text.push_str(&format!(
            "[[chroot]]\nname = \"el9\"\nroot = \"{}\"\nnodeps = true\n[chroot.install]\n\
             \"/etc/rpm/macros.el9\" = \"{}\"\n\"/etc/rpmrc\" = \"{}\"\n\
             \"/usr/lib/rpm/redhat/redhat-hardened-cc1\" = \"{}\"\n\
             \"/usr/lib/rpm/redhat/redhat-hardened-ld\" = \"{}\"\n",
            root.display(),
            rpm.join("el9/macros.el9").display(),
            rpm.join("el9/rpmrc").display(),
            rpm.join("el9/redhat-hardened-cc1").display(),
            rpm.join("el9/redhat-hardened-ld").display(),
        ));
        let config = dir.join(format!("{name}.toml"));
        fs::write(&config, text).expect("write builder config");
        let mut cmd = match netns {
            Some(ns) => {
                let mut cmd = clean_command("ip");
                cmd.args(["netns", "exec", ns]).arg(bin("discomy-compilerd"));
                cmd
            }
            None => clean_command(bin("discomy-compilerd")),
        };
        cmd.env("TMPDIR", private_tmp(dir, name)).arg("builder").arg("--config").arg(&config);
        let proc = Proc::spawn(name, &mut cmd, dir);
        Builder { proc, name: name.to_owned(), metrics: format!("http://{metrics}/metrics") }
    }
}

/// `discomy ARGS --api URL [--token-file FILE]`, not yet run.
pub fn discomy_command(api: &Api, args: &[&str]) -> std::process::Command {
    let mut cmd = clean_command(bin("discomy"));
    cmd.args(args).args(["--api", &api.url]);
    if let Some(file) = &api.token_file {
        cmd.arg("--token-file").arg(file);
    }
    cmd
}

/// Runs `discomy ARGS` against `api` and returns its exit success, stdout parsed as JSON (or
/// `Null`), and stderr.
pub fn discomy_json(api: &Api, args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = discomy_command(api, args).output().expect("run discomy");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.success(), json, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `discomy jobs show ID --json`.
pub fn job_detail(api: &Api, id: u64) -> serde_json::Value {
    let (ok, json, err) = discomy_json(api, &["jobs", "show", &id.to_string(), "--json"]);
    assert!(ok, "discomy jobs show {id}: {err}");
    json
}

/// Polls until `pred` holds for job `id`'s detail; panics after `limit`. A coordinator that is
/// down (being restarted) just makes it poll again.
pub fn wait_for_job(
    api: &Api,
    id: u64,
    limit: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    let mut last = serde_json::Value::Null;
    loop {
        let (ok, json, _) = discomy_json(api, &["jobs", "show", &id.to_string(), "--json"]);
        if ok {
            if pred(&json) {
                return json;
            }
            last = json;
        }
        assert!(start.elapsed() < limit, "job {id} did not {what} within {limit:?}: {last:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The job's state in a detail.
pub fn state_of(detail: &serde_json::Value) -> &str {
    detail["job"]["state"].as_str().unwrap_or("?")
}

/// The agent on a socket of its own directory, the workers, and the masquerade directory.
pub struct RpmFarm {
    /// The agent (its socket in `socket_dir`).
    pub agent: Proc,
    /// The agent's socket.
    pub socket: PathBuf,
    /// The directory builders bind-mount as `/run/discomy`.
    pub socket_dir: PathBuf,
    /// The masquerade directory (`/usr/libexec/discomy`).
    pub libexec: PathBuf,
    _workers: Vec<Worker>,
}

impl RpmFarm {
    /// Two workers (2 slots each), an agent whose socket anyone may use, and the masquerade
    /// directory made for the chroot `root`'s compilers.
    pub fn start(dir: &Path, root: &Path) -> RpmFarm {
        let workers: Vec<Worker> =
            (0..2).map(|i| Worker::start(dir, &format!("worker{i}"), 2)).collect();
        let socket_dir = dir.join("run-discomy");
        fs::create_dir_all(&socket_dir).expect("create the socket directory");
        let socket = socket_dir.join("agent.sock");
        let mut cmd = clean_command(bin("discomy-compilerd"));
        cmd.env("TMPDIR", private_tmp(dir, "agent"))
            .arg("agent")
            .arg("--socket")
            .arg(&socket)
            .args(["--hosts", &hosts_of(&workers), "--socket-group", "everyone"])
            .arg("--store")
            .arg(dir.join("agent.store"));
        let mut agent = Proc::spawn("agent", &mut cmd, dir);
        let start = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            assert!(agent.try_wait().is_none(), "the agent exited:\n{}", agent.logs(40));
            assert!(start.elapsed() < START_TIMEOUT, "the agent did not accept");
            std::thread::sleep(Duration::from_millis(20));
        }
        let libexec = dir.join("libexec-discomy");
        let out = clean_command("sh")
            .arg(workspace_root().join("rpm/mock/make-masquerade.sh"))
            .arg(&libexec)
            .arg(bin("discomy-cc"))
            .arg(root)
            .output()
            .expect("run make-masquerade.sh");
        assert!(
            out.status.success(),
            "make-masquerade.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        RpmFarm { agent, socket, socket_dir, libexec, _workers: workers }
    }
}
