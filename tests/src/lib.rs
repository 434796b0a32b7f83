//! Shared helpers for discomy's end-to-end tests (see `tests/`).
//!
//! The tests run the real binaries (`discomy`, `discomy-cc`, `discomy-compilerd`) as separate
//! processes on loopback, against real gcc and a real open-source project (Lua 5.4 from its
//! Debian source package). Everything here is about running those processes safely:
//!
//! - [`Proc`]: a child process in its own process group, with stdout/stderr in log files. Its
//!   `Drop` kills the whole group (so also on panic), and prints the logs when the test panics.
//! - [`Worker`], [`Agent`], [`Farm`]: compile daemons on port 0 / a private Unix socket.
//! - [`extract_lua`], [`make_lua`]: the project, unpacked into a per-test temporary directory.
//! - [`objects`], [`assert_same_objects`]: byte-for-byte comparison of build outputs.
//! - [`capture`], [`diff_captures`]: one compiler invocation's exit status, output and new files.
//! - [`distcc`]: real `distccd`/`distcc` peers and raw distcc exchanges.
//! - [`read_stats`], [`read_summary`]: what the wrapper and `discomy run` report.

#![allow(clippy::print_stderr)] // progress and failure logs are the point of a test helper

pub mod distcc;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use discomy_protocol::stats::UnitCounts;

/// How long a whole Lua build may take before the test gives up (and kills it).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a daemon may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Parallelism of the builds (`make -jN`).
pub const MAKE_JOBS: &str = "-j4";

/// The workspace root (`tests/..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// Where `scripts/setup-debian.sh` put the projects' source packages.
pub fn projects_dir() -> PathBuf {
    match std::env::var_os("DISCOMY_PROJECTS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("target").join("projects"),
    }
}

/// The Lua 5.4 upstream tarball of the Debian source package. Panics (never skips) when missing.
pub fn lua_tarball() -> PathBuf {
    let dir = projects_dir();
    let mut found: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().and_then(OsStr::to_str).unwrap_or("");
                    name.starts_with("lua5.4_") && name.ends_with(".orig.tar.gz")
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.pop() {
        Some(path) => path,
        None => panic!(
            "the Lua source tarball (lua5.4_*.orig.tar.gz) is not in {}: run scripts/setup-debian.sh \
             first (it downloads the Debian source package), or point DISCOMY_PROJECTS_DIR at it",
            dir.display()
        ),
    }
}

/// Unpacks Lua into `into` and returns the source tree (the directory holding `src/Makefile`).
pub fn extract_lua(into: &Path) -> PathBuf {
    let tarball = lua_tarball();
    let out = clean_command("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(into)
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar xzf {} failed: {}",
        tarball.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = fs::read_dir(into)
        .expect("read extraction dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.join("src").join("Makefile").is_file())
        .unwrap_or_else(|| panic!("no lua-*/src/Makefile inside {}", tarball.display()));
    eprintln!("[e2e] extracted {} into {}", tarball.display(), tree.display());
    tree
}

/// The directory holding the workspace's binaries: `$DISCOMY_BIN_DIR`, or the profile directory
/// of this test executable (`<target>/<triple>/<profile>/deps/<test>` → `<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DISCOMY_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("test exe has a parent").to_path_buf();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir = dir.parent().expect("deps has a parent").to_path_buf();
    }
    dir
}

/// A workspace binary by name. Panics with a hint when it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "binary {name} not found at {}: build the workspace first (cargo build --workspace, same \
         profile as the tests) or set DISCOMY_BIN_DIR",
        path.display()
    );
    path
}

/// A command with the test's environment minus anything that would change what it does:
/// `DISCOMY_*` settings, make's job-server and flags, `CC`/`CXX`. The object cache is off
/// (`DISCOMY_CACHE=0`) so a test sees the farm, not an earlier run's results; the cache tests
/// turn it on with a private directory.
pub fn clean_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("DISCOMY_")
            || matches!(k.as_ref(), "MAKEFLAGS" | "MFLAGS" | "MAKELEVEL" | "CC" | "CXX")
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("DISCOMY_CACHE", "0");
    cmd.stdin(Stdio::null());
    cmd
}

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
        let start = Instant::now();
        let addr = loop {
            let text = fs::read_to_string(&addr_file).unwrap_or_default();
            if text.ends_with('\n') {
                let trimmed = text.trim();
                break trimmed.parse::<SocketAddr>().unwrap_or_else(|e| {
                    panic!("{name}: address file {} holds {trimmed:?}: {e}", addr_file.display())
                });
            }
            if let Some(status) = proc.try_wait() {
                panic!("{name} exited ({status}) before writing {}", addr_file.display());
            }
            assert!(
                start.elapsed() < START_TIMEOUT,
                "{name} did not write {} within {START_TIMEOUT:?}",
                addr_file.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
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
        let socket = dir.join(format!("{name}.sock"));
        let mut cmd = clean_command(bin("discomy-compilerd"));
        cmd.env("TMPDIR", private_tmp(dir, name));
        cmd.arg("agent").arg("--socket").arg(&socket).args(["--hosts", hosts]);
        cmd.arg("--store").arg(dir.join(format!("{name}.store")));
        let mut proc = Proc::spawn(name, &mut cmd, dir);
        let start = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            if let Some(status) = proc.try_wait() {
                panic!("{name} exited ({status}) before accepting on {}", socket.display());
            }
            assert!(
                start.elapsed() < START_TIMEOUT,
                "{name} did not accept on {} within {START_TIMEOUT:?}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("[e2e] {name} accepting on {}", socket.display());
        Agent { proc, socket }
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

/// A fresh directory `<dir>/<name>-tmpdir`, for a process's `TMPDIR`: keeps temporary files of the
/// processes under test inside the test's directory, where leftovers can be checked.
pub fn private_tmp(dir: &Path, name: &str) -> PathBuf {
    let tmp = dir.join(format!("{name}-tmpdir"));
    fs::create_dir_all(&tmp).expect("create private TMPDIR");
    tmp
}

/// Everything under `dir`, as relative paths (files and directories).
pub fn temp_leftovers(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok) {
            let path = entry.path();
            out.push(path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Asserts that the processes that used `tmp` as `TMPDIR` left nothing in it. `discomy run`
/// deliberately keeps its daemon logs (`discomy-run-logs-*`) when nothing ran remotely; those are
/// allowed.
pub fn assert_no_temp_leftovers(tmp: &Path, context: &str) {
    let left: Vec<String> =
        temp_leftovers(tmp).into_iter().filter(|p| !p.starts_with("discomy-run-logs-")).collect();
    assert!(
        left.is_empty(),
        "{context}: temporary files left behind in TMPDIR {}:\n  {}",
        tmp.display(),
        left.join("\n  ")
    );
}

/// `discomy run` in the Lua tree, with `TMPDIR` private to the test
/// (`<scratch>/discomy-run-tmpdir`).
/// Callers add the options, `--` and the build command.
pub fn discomy_run(tree: &Path, scratch: &Path) -> Command {
    let mut cmd = clean_command(bin("discomy"));
    cmd.current_dir(tree).env("TMPDIR", private_tmp(scratch, "discomy-run")).arg("run");
    cmd
}

/// `make -C src -j4 linux EXTRA…` in the Lua tree with plain gcc; asserts success.
pub fn make_lua(tree: &Path, name: &str, extra: &[&str], log_dir: &Path) {
    let mut cmd = clean_command("make");
    cmd.current_dir(tree).args(["-C", "src", MAKE_JOBS, "linux"]).args(extra);
    run_to_success(name, &mut cmd, log_dir);
}

/// Lua extracted under `dir` and built once locally with plain gcc: the tree, its `src`, and
/// the reference objects (the tree is cleaned afterwards, ready for the build under test).
pub fn lua_with_reference(dir: &Path) -> (PathBuf, PathBuf, BTreeMap<String, Vec<u8>>) {
    let tree = extract_lua(dir);
    let src = tree.join("src");
    make_lua(&tree, "make-local", &[], dir);
    let reference = objects(&src);
    make_clean(&tree, dir);
    (tree, src, reference)
}

/// `make -C src clean` in the Lua tree; asserts that no object is left.
pub fn make_clean(tree: &Path, log_dir: &Path) {
    let mut cmd = clean_command("make");
    cmd.current_dir(tree).args(["-C", "src", "clean"]);
    run_to_success("make-clean", &mut cmd, log_dir);
    let left = objects(&tree.join("src"));
    assert!(left.is_empty(), "make clean left objects: {:?}", left.keys().collect::<Vec<_>>());
}

/// Runs a command to completion (logged, with [`BUILD_TIMEOUT`]) and asserts it succeeded.
pub fn run_to_success(name: &str, cmd: &mut Command, log_dir: &Path) -> Proc {
    let start = Instant::now();
    let mut proc = Proc::spawn(name, cmd, log_dir);
    let status = proc.wait_timeout(BUILD_TIMEOUT);
    assert!(status.success(), "{name} failed ({status}):\n{}", proc.logs(80));
    eprintln!("[e2e] {name} done in {:.1?}", start.elapsed());
    proc
}

/// Checks that the freshly built Lua interpreter works.
pub fn assert_lua_runs(tree: &Path) {
    let out = clean_command(tree.join("src").join("lua"))
        .args(["-e", "print(1+1)"])
        .output()
        .expect("run the built lua");
    assert!(
        out.status.success() && out.stdout == b"2\n",
        "built lua did not print 2: status {}, stdout {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `*.o` directly in `dir`, by file name.
pub fn objects(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).expect("read object dir").filter_map(Result::ok) {
        let path = entry.path();
        if path.extension() == Some(OsStr::new("o")) && path.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            out.insert(name, fs::read(&path).expect("read object"));
        }
    }
    out
}

/// How two byte strings differ, in one line.
pub fn describe_difference(a: &[u8], b: &[u8]) -> String {
    let first = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    format!("{} vs {} bytes, first difference at offset {first}", a.len(), b.len())
}

/// Differences between two sets of named files: missing, extra, and differing ones.
pub fn file_mismatches(
    expected: &BTreeMap<String, Vec<u8>>,
    actual: &BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, want) in expected {
        match actual.get(name) {
            None => out.push(format!("{name}: missing")),
            Some(got) if got != want => {
                out.push(format!("{name}: differs ({})", describe_difference(want, got)));
            }
            Some(_) => {}
        }
    }
    for name in actual.keys().filter(|n| !expected.contains_key(*n)) {
        out.push(format!("{name}: unexpected extra file"));
    }
    out
}

/// Asserts that two object sets are byte-identical, listing every mismatch.
pub fn assert_same_objects(
    expected: &BTreeMap<String, Vec<u8>>,
    actual: &BTreeMap<String, Vec<u8>>,
    context: &str,
) {
    assert!(!expected.is_empty(), "{context}: the reference build produced no objects");
    let mismatches = file_mismatches(expected, actual);
    assert!(
        mismatches.is_empty(),
        "{context}: {} of {} objects differ from the local build:\n  {}",
        mismatches.len(),
        expected.len(),
        mismatches.join("\n  ")
    );
    eprintln!("[e2e] {context}: all {} objects byte-identical", expected.len());
}

/// One line of a `DISCOMY_STATS_FILE`, as the wrapper writes it (`protocol::stats::StatsLine`),
/// with the outcome and reason as their words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatLine {
    /// `remote`, `local`, `fallback` or `cache`.
    pub outcome: String,
    /// The wrapper's exit code.
    pub exit_code: i32,
    /// The source file (may be empty, e.g. for links).
    pub source: String,
    /// Why it was not remote (`discomy stats`' reason keys; `none` for remote and cache).
    pub reason: String,
}

impl StatLine {
    /// Whether this invocation compiled a C or C++ source.
    pub fn is_compile(&self) -> bool {
        [".c", ".cc", ".cpp", ".cxx", ".C"].iter().any(|ext| self.source.ends_with(ext))
    }
}

/// Parses a stats file with the wrapper's own parser; a line it cannot read fails the test.
/// Missing file → no lines.
pub fn read_stats(path: &Path) -> Vec<StatLine> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let parsed = discomy_protocol::stats::StatsLine::parse(line)
                .unwrap_or_else(|| panic!("malformed stats line in {}: {line:?}", path.display()));
            StatLine {
                outcome: parsed.outcome.as_str().to_owned(),
                exit_code: parsed.exit_code,
                source: parsed.source,
                reason: parsed.reason.key().to_owned(),
            }
        })
        .collect()
}

/// Outcome → count.
pub fn outcome_counts(lines: &[StatLine]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for l in lines {
        *out.entry(l.outcome.clone()).or_insert(0) += 1;
    }
    out
}

/// What `discomy run --summary-json` reports: the unit counts (read through `Deref`, as
/// `summary.remote`), and the whole JSON for messages.
#[derive(Debug, Clone)]
pub struct Summary {
    /// `units`, `remote`, `local`, `fallback`, `cache_hits`, `failed` and the reasons.
    pub counts: UnitCounts,
    /// The whole JSON, for messages.
    pub raw: String,
}

impl std::ops::Deref for Summary {
    type Target = UnitCounts;
    fn deref(&self) -> &UnitCounts {
        &self.counts
    }
}

/// Reads a summary file; panics clearly on a missing file or field.
pub fn read_summary(path: &Path) -> Summary {
    let raw = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("summary {} not written: {e}", path.display()));
    let counts = serde_json::from_str(&raw).unwrap_or_else(|e| {
        panic!("summary {} lacks the unit counts ({e}): {raw}", path.display())
    });
    Summary { counts, raw }
}

/// `discomy ARGS… --json`, parsed; fails the test when it fails or prints no JSON.
fn discomy_json(args: &[&OsStr]) -> serde_json::Value {
    let out = clean_command(bin("discomy")).args(args).arg("--json").output().expect("run discomy");
    assert!(
        out.status.success(),
        "discomy {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("discomy {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

/// `discomy stats --worker ADDR --json`: a worker's counters (`store`: installs, blobs received,
/// toolchains pushed; `distcc`: jobs by result).
pub fn worker_stats(addr: &SocketAddr) -> serde_json::Value {
    let addr = addr.to_string();
    discomy_json(&["stats".as_ref(), "--worker".as_ref(), addr.as_ref()])
}

/// `discomy stats --json` of the agent listening on `socket`.
pub fn agent_stats(socket: &Path) -> serde_json::Value {
    discomy_json(&["stats".as_ref(), "--socket".as_ref(), socket.as_os_str()])
}

/// Every regular file under `dir`, by path relative to it.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).expect("read dir").filter_map(Result::ok) {
            let path = entry.path();
            let ty = entry.file_type().expect("file type");
            if ty.is_dir() {
                walk(root, &path, out);
            } else if ty.is_file() {
                let rel =
                    path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
                out.insert(rel, fs::read(&path).expect("read file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// One compiler run: its status, output, and the files it created or changed.
#[derive(Debug, Clone)]
pub struct Capture {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Files created or modified under the directory, relative path → contents.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Runs `cmd` in `dir`, records what it did, then removes the files it created (so the next run
/// starts from the same state).
pub fn capture(dir: &Path, cmd: &mut Command) -> Capture {
    let before = snapshot(dir);
    let out = cmd.current_dir(dir).output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let after = snapshot(dir);
    let files: BTreeMap<String, Vec<u8>> =
        after.into_iter().filter(|(name, data)| before.get(name) != Some(data)).collect();
    for name in files.keys() {
        if !before.contains_key(name) {
            fs::remove_file(dir.join(name)).expect("remove output");
        }
    }
    Capture { code: out.status.code(), stdout: out.stdout, stderr: out.stderr, files }
}

/// Differences between a plain gcc run and a discomy-cc run of the same command.
pub fn diff_captures(what: &str, gcc: &Capture, ours: &Capture) -> Vec<String> {
    let mut out = Vec::new();
    if gcc.code != ours.code {
        out.push(format!("{what}: exit code gcc {:?}, discomy-cc {:?}", gcc.code, ours.code));
    }
    for (stream, a, b) in
        [("stdout", &gcc.stdout, &ours.stdout), ("stderr", &gcc.stderr, &ours.stderr)]
    {
        if a != b {
            out.push(format!(
                "{what}: {stream} differs\n--- gcc {stream} ---\n{}--- discomy-cc {stream} ---\n{}---",
                String::from_utf8_lossy(a),
                String::from_utf8_lossy(b)
            ));
        }
    }
    out.extend(
        file_mismatches(&gcc.files, &ours.files).into_iter().map(|m| format!("{what}: {m}")),
    );
    out
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
