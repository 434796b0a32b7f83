//! Sandboxed execution of one remote compile: the worker's half of the `discomy-sandbox` helper.
//!
//! The worker never runs a client's compile directly. It runs `discomy-sandbox [options] --
//! PROGRAM ARGS…` (built from this crate, installed next to the worker's executable) in its own
//! process group, and the helper puts PROGRAM in a throw-away sandbox:
//!
//! - fresh mount, PID, network, IPC and UTS namespaces (plus user namespaces when the worker is
//!   not root); the network namespace has only a down `lo`, so there is no network at all;
//! - a new root: an empty read-only tmpfs holding read-only, `nosuid`, `nodev` bind mounts of
//!   the toolchain tree's top-level entries (`--root`; for `/` only `bin sbin lib* usr etc opt`),
//!   the unit directory read-write (`noexec`) at `/tmp`, which is also the working directory,
//!   `/dev/{null,zero,full,random,urandom}`, and a `/proc` of the new PID namespace only;
//!   `pivot_root` into it, the old root detached;
//! - `no_new_privs`, rlimits (`RLIMIT_CPU`, `RLIMIT_AS`, `RLIMIT_FSIZE`, `RLIMIT_NPROC`,
//!   `RLIMIT_CORE` = 0), a cleared environment (only the spec's variables);
//! - no privileges: as root the program runs as [`SandboxSpec::run_as`] (default
//!   65534:65534, all capabilities gone); unprivileged, it runs as the worker's uid in a nested
//!   user namespace, which leaves it no capabilities over the sandbox's mounts;
//! - as root, a cgroup (v2, or v1 `pids` and `memory`) per compile with `pids.max` = `nproc`
//!   and a memory limit = `mem_bytes`, when one can be created (see [`probe`]);
//! - the program is PID 1 of its namespace: when it exits, the kernel kills whatever it left
//!   behind; when the helper dies (wall-time kill), the program gets `SIGKILL` (parent-death
//!   signal), which tears the namespace down the same way.
//!
//! Set-up failures of the helper itself are never confused with the program's exit status: the
//! helper exits with [`SETUP_EXIT_CODE`] and prints `discomy-sandbox: <what failed>: <errno>`
//! on stderr, and [`run`] also gives it a status file where it records either the set-up failure
//! or the program's status, CPU time and cgroup events ([`HelperStatus`]).
//!
//! What each limit does, and where it is weaker:
//! - wall time: [`run`] kills the helper's process group with `SIGKILL` ([`LimitHit::WallTime`]);
//! - CPU: `SIGXCPU` at `cpu_secs`, `SIGKILL` one second later ([`LimitHit::CpuTime`]);
//! - memory: `RLIMIT_AS` makes allocations fail (the compiler reports it and exits non-zero,
//!   which the kernel does not count anywhere); the cgroup limit, when present, OOM-kills and is
//!   reported as [`LimitHit::Memory`];
//! - processes: `RLIMIT_NPROC` counts processes per user. Unprivileged, that user lives in the
//!   sandbox's own user namespace, so the count is per sandbox. As root it is the count of all
//!   processes of `run_as` on the host, so give each concurrent slot its own uid; the cgroup
//!   `pids.max`, when present, is per sandbox ([`LimitHit::Processes`]), and the rlimit is then
//!   raised to twice `nproc` as a backstop. Without either, a fork bomb is still confined to the
//!   PID namespace and ends with the wall-time kill;
//! - file size: `SIGXFSZ` ([`LimitHit::FileSize`]); output: stdout and stderr are kept up to
//!   [`MAX_OUTPUT_BYTES`] each ([`LimitHit::Output`]);
//! - the unit directory: a tmpfs of [`Limits::work_bytes`] in the sandbox, holding a copy of the
//!   worker's directory and copied back after the run; filling it is [`LimitHit::WorkDir`].

pub mod engine;
mod run;
pub mod stale;
pub mod warm;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use discomy_protocol::plumbing::GroupKiller;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::Notify;

pub use crate::sandbox::warm::WarmPool;
pub(crate) use run::spawn_helper;
pub use run::{ProbeError, probe, run, run_with};

/// File name of the helper binary, looked up next to the worker's executable.
pub const HELPER_NAME: &str = "discomy-sandbox";
/// Exit code of the helper when it failed before the program ran.
pub const SETUP_EXIT_CODE: u8 = 125;
/// Prefix of the helper's own messages on stderr.
pub const SETUP_PREFIX: &str = "discomy-sandbox: ";
/// At most this many bytes of stdout and of stderr are kept; the rest is read and dropped.
pub const MAX_OUTPUT_BYTES: usize = 8 << 20;
/// The uid and gid a root worker runs sandboxed programs as unless told otherwise (`nobody`).
pub const DEFAULT_RUN_AS: (u32, u32) = (65534, 65534);
/// Where the work directory is mounted when a tree has files under `/tmp` itself (a compiler
/// installed under /tmp, or a source-mode unit built there): that `/tmp` is then the tree's.
pub const WORK_ELSEWHERE: &str = "/.discomy-unit";

/// The work directory's mount point in a sandbox made of `trees`: `/tmp`, unless one of them
/// has a `tmp` of its own (`/` as a tree never does: only its system directories are used).
pub fn work_mount_point(trees: &[&Path]) -> &'static str {
    let uses_tmp =
        |t: &&Path| *t != Path::new("/") && std::fs::symlink_metadata(t.join("tmp")).is_ok();
    if trees.iter().any(uses_tmp) { WORK_ELSEWHERE } else { "/tmp" }
}
/// How long the output pipes may stay open after the helper exited.
const READ_GRACE: Duration = Duration::from_secs(2);

/// Resource limits of one sandboxed run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// CPU seconds (`RLIMIT_CPU`: `SIGXCPU`, then `SIGKILL` one second later).
    pub cpu_secs: u64,
    /// Address space per process (`RLIMIT_AS`), and the cgroup memory limit when there is one.
    pub mem_bytes: u64,
    /// Largest file the program may write (`RLIMIT_FSIZE`).
    pub file_bytes: u64,
    /// Processes (`RLIMIT_NPROC`, and the cgroup `pids.max` when there is one).
    pub nproc: u64,
    /// Size of the writable unit directory (a tmpfs in the sandbox, copied back after the run).
    pub work_bytes: u64,
    /// Wall time, after which the whole process group is killed.
    pub wall: Duration,
    /// Also confine each run in fresh pids/memory cgroups (root, or a delegated parent). Exact
    /// per-run limits, but joining a cgroup costs 10-16 ms per run on cgroup v1 hosts
    /// (measured by `discomy-bench toolchain`); without it the rlimits above, per uid, apply.
    pub cgroups: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_secs: 300,
            mem_bytes: 4 << 30,
            file_bytes: 1 << 30,
            nproc: 64,
            work_bytes: 1 << 30,
            wall: Duration::from_secs(600),
            cgroups: true,
        }
    }
}

/// One program to run in a sandbox.
#[derive(Debug, Clone, Copy)]
pub struct SandboxSpec<'a> {
    /// The `discomy-sandbox` helper (installed next to `discomy-compilerd`).
    pub helper: &'a Path,
    /// The toolchain tree: its top-level entries become the sandbox's read-only `/`.
    pub root: &'a Path,
    /// The unit directory, mounted read-write at `/tmp`, the program's working directory.
    pub work: &'a Path,
    /// Absolute path of the program inside `root`.
    pub program: &'a str,
    /// The program's arguments (paths relative to `/tmp`, the work directory).
    pub args: &'a [String],
    /// The program's whole environment.
    pub env: &'a [(String, String)],
    /// Resource limits.
    pub limits: &'a Limits,
    /// Uid and gid the program runs as when the worker is root ([`DEFAULT_RUN_AS`] if `None`).
    /// Ignored when unprivileged. Give concurrent slots different uids so that
    /// `RLIMIT_NPROC` counts per slot.
    pub run_as: Option<(u32, u32)>,
    /// Cgroup directories under which a per-run cgroup is created (for cgroup v1, one per
    /// controller hierarchy). Empty: the helper's own cgroups, best effort.
    pub cgroup_parents: &'a [PathBuf],
    /// A unit tree laid read-only over `root` (source-mode units: the client's files at their
    /// absolute paths).
    pub overlay: Option<&'a Path>,
    /// The same from a list (see the source store's `tree_list`): the helper copies the files
    /// into the new root and merges the toolchain tree around them with binds, no overlayfs;
    /// excludes `overlay`.
    pub overlay_files: Option<&'a Path>,
    /// The program's working directory inside the sandbox, instead of the work directory.
    pub cwd: Option<&'a Path>,
}

/// A limit that ended or curtailed a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitHit {
    /// The wall-time limit ran out; the process group was killed.
    WallTime,
    /// The CPU-time limit killed the program.
    CpuTime,
    /// The program exceeded the file-size limit.
    FileSize,
    /// The cgroup memory limit OOM-killed a process.
    Memory,
    /// The cgroup process limit refused a fork.
    Processes,
    /// Stdout or stderr was longer than [`MAX_OUTPUT_BYTES`] and was truncated.
    Output,
    /// The program filled its unit directory ([`Limits::work_bytes`]); nothing was copied back.
    WorkDir,
}

/// What a sandboxed run produced.
#[derive(Debug)]
pub struct SandboxOutput {
    /// The program's exit status, 128 + signal when it was killed.
    pub exit_code: i32,
    /// The signal that killed the program (or the helper, on a wall-time kill).
    pub signal: Option<i32>,
    /// Captured standard output (at most [`MAX_OUTPUT_BYTES`]).
    pub stdout: Vec<u8>,
    /// Captured standard error (at most [`MAX_OUTPUT_BYTES`]).
    pub stderr: Vec<u8>,
    /// Wall time, helper included.
    pub elapsed: Duration,
    /// CPU time (user + system) of the program and the descendants it waited for.
    pub cpu_time: Option<Duration>,
    /// The limits that ended or curtailed the run, if any.
    pub limits_hit: Vec<LimitHit>,
}

impl SandboxOutput {
    /// Whether `limit` ended or curtailed the run.
    pub fn hit(&self, limit: LimitHit) -> bool {
        self.limits_hit.contains(&limit)
    }
}

/// Why a sandboxed run could not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The spec cannot be passed to the helper.
    #[error("invalid sandbox request: {0}")]
    Invalid(String),
    /// The status file could not be created.
    #[error("sandbox status file: {0}")]
    StatusFile(std::io::Error),
    /// The helper could not be started.
    #[error("failed to start {helper}: {source}")]
    Spawn {
        /// The helper's path.
        helper: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Waiting for the helper failed.
    #[error("failed to wait for the sandbox helper: {0}")]
    Wait(std::io::Error),
    /// The helper failed before the program ran (namespaces, mounts, limits, exec).
    #[error("sandbox set-up failed: {0}")]
    Setup(String),
}

/// The record the helper writes into its `--status-file`: `key=value` lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HelperStatus {
    /// Set when the helper failed before the program ran.
    pub setup_error: Option<String>,
    /// The program's exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that killed the program.
    pub signal: Option<i32>,
    /// CPU time of the program and its waited-for descendants, in milliseconds.
    pub cpu_ms: Option<u64>,
    /// How many forks the cgroup `pids.max` refused.
    pub pids_max_events: u64,
    /// How many processes the cgroup memory limit OOM-killed.
    pub oom_kills: u64,
    /// The program filled its unit directory.
    pub work_full: bool,
}

impl HelperStatus {
    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        if let Some(msg) = &self.setup_error {
            text.push_str("outcome=setup\nmessage=");
            text.push_str(&msg.replace(['\n', '\r'], " "));
            text.push('\n');
            return text;
        }
        text.push_str("outcome=done\n");
        if let Some(code) = self.code {
            text.push_str(&format!("code={code}\n"));
        }
        if let Some(signal) = self.signal {
            text.push_str(&format!("signal={signal}\n"));
        }
        if let Some(cpu_ms) = self.cpu_ms {
            text.push_str(&format!("cpu_ms={cpu_ms}\n"));
        }
        text.push_str(&format!(
            "pids_max_events={}\noom_kills={}\nwork_full={}\n",
            self.pids_max_events,
            self.oom_kills,
            u8::from(self.work_full)
        ));
        text
    }

    /// Parses a status file; `None` when it holds no complete record.
    pub fn parse(text: &str) -> Option<HelperStatus> {
        let mut status = HelperStatus::default();
        let mut outcome = None;
        let mut message = None;
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else { continue };
            match key {
                "outcome" => outcome = Some(value.to_owned()),
                "message" => message = Some(value.to_owned()),
                "code" => status.code = value.parse().ok(),
                "signal" => status.signal = value.parse().ok(),
                "cpu_ms" => status.cpu_ms = value.parse().ok(),
                "pids_max_events" => status.pids_max_events = value.parse().unwrap_or(0),
                "oom_kills" => status.oom_kills = value.parse().unwrap_or(0),
                "work_full" => status.work_full = value == "1",
                _ => {}
            }
        }
        match outcome.as_deref() {
            Some("setup") => {
                status.setup_error = Some(message.unwrap_or_else(|| "unknown failure".to_owned()));
                Some(status)
            }
            Some("done") if status.code.is_some() || status.signal.is_some() => Some(status),
            _ => None,
        }
    }
}

/// The helper's arguments for `spec` (without the helper itself), for logging or for running the
/// helper some other way.
pub fn command_line(spec: &SandboxSpec<'_>) -> Result<Vec<OsString>, SandboxError> {
    build_args(spec, None)
}

fn build_args(
    spec: &SandboxSpec<'_>,
    status_file: Option<&Path>,
) -> Result<Vec<OsString>, SandboxError> {
    let mut args = base_args(spec.limits, spec.cgroup_parents, status_file);
    args.extend(unit_args(spec)?);
    Ok(args)
}

/// `items`, each followed by a NUL: how options and unit-tree lists travel to the helper
/// (a NUL cannot occur inside a path or an argument).
pub fn nul_joined<T: AsRef<[u8]>>(items: impl IntoIterator<Item = T>) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend_from_slice(item.as_ref());
        out.push(0);
    }
    out
}

/// The items of [`nul_joined`] bytes (the trailing NUL dropped).
pub fn nul_split(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.strip_suffix(b"\0").unwrap_or(bytes).split(|&b| b == 0)
}

fn option(name: &str, value: &std::ffi::OsStr) -> OsString {
    let mut arg = OsString::from(format!("--{name}="));
    arg.push(value);
    arg
}

/// The options every run under the same limits shares (what a warm helper is started with).
pub(crate) fn base_args(
    limits: &Limits,
    cgroup_parents: &[PathBuf],
    status_file: Option<&Path>,
) -> Vec<OsString> {
    let mut args = vec![
        option("cpu-secs", limits.cpu_secs.to_string().as_ref()),
        option("mem-bytes", limits.mem_bytes.to_string().as_ref()),
        option("file-bytes", limits.file_bytes.to_string().as_ref()),
        option("work-bytes", limits.work_bytes.to_string().as_ref()),
        option("nproc", limits.nproc.to_string().as_ref()),
    ];
    args.extend(cgroup_parents.iter().map(|p| option("cgroup-parent", p.as_os_str())));
    args.extend(status_file.map(|p| option("status-file", p.as_os_str())));
    if !limits.cgroups {
        args.push(OsString::from("--no-cgroup"));
    }
    args
}

/// The options of this run alone: trees, ids, environment, `--` and the program.
fn unit_args(spec: &SandboxSpec<'_>) -> Result<Vec<OsString>, SandboxError> {
    if !spec.program.starts_with('/') {
        return Err(SandboxError::Invalid(format!(
            "program {:?} is not an absolute path",
            spec.program
        )));
    }
    let strings = spec.args.iter().map(String::as_str).chain([spec.program]);
    let env_strings = spec.env.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]);
    if strings.chain(env_strings).any(|s| s.contains('\0')) {
        return Err(SandboxError::Invalid(
            "NUL byte in the program, an argument or the environment".into(),
        ));
    }
    if let Some((key, _)) = spec.env.iter().find(|(k, _)| k.is_empty() || k.contains('=')) {
        return Err(SandboxError::Invalid(format!("invalid environment variable name {key:?}")));
    }
    let path_options = [("root", Some(spec.root)), ("work", Some(spec.work))].into_iter().chain([
        ("overlay", spec.overlay),
        ("overlay-files", spec.overlay_files),
        ("cwd", spec.cwd),
    ]);
    if path_options.clone().any(|(_, p)| p.is_some_and(|p| p.as_os_str().as_bytes().contains(&0))) {
        return Err(SandboxError::Invalid("NUL byte in a directory".into()));
    }
    let mut args: Vec<OsString> =
        path_options.filter_map(|(name, path)| path.map(|p| option(name, p.as_os_str()))).collect();
    let (uid, gid) = spec.run_as.unwrap_or(DEFAULT_RUN_AS);
    args.push(option("uid", uid.to_string().as_ref()));
    args.push(option("gid", gid.to_string().as_ref()));
    for (key, value) in spec.env {
        args.push(option("env", format!("{key}={value}").as_ref()));
    }
    args.push("--".into());
    args.push(spec.program.into());
    args.extend(spec.args.iter().map(OsString::from));
    Ok(args)
}

#[cfg(test)]
mod tests;
