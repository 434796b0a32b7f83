//! The `discomy-sandbox` engine: runs one program in a throw-away sandbox, for the worker (see
//! [`crate::sandbox`], which documents the design, the limits and the status file). The binary
//! `discomy-sandbox` is [`run`].
//!
//! `discomy-sandbox [--root TREE] --work DIR [limits] [--env K=V]… -- PROGRAM ARGS…`
//!
//! Two stages, because a new PID namespace applies only to children and its `/proc` can only be
//! mounted from inside it:
//! - stage 1 (this process, in the caller's PID namespace): per-run cgroups (root only), then
//!   `unshare` of the mount, PID, network, IPC and UTS namespaces, and of a user namespace when
//!   not root (mapping uid 0 inside to the caller); private mounts; a scratch tmpfs for every
//!   mount point of the run (nothing to unmount or remove afterwards: the namespace takes its
//!   mounts along, and a later helper removes the one empty directory left in the temporary
//!   directory); the new root (a tmpfs with the unit's files copied in, read-only binds of the
//!   tree around them, the work directory at `/tmp`, a few devices), made read-only; then it
//!   hands stage 2 its options, waits, and records the outcome;
//! - stage 2 (a forked child of stage 1, no second `exec`: see `fork`; PID 1 of the new
//!   namespace): its own mount namespace, `/proc`, cgroup
//!   membership, `pivot_root` with the old root detached, `no_new_privs`, rlimits, the privilege
//!   drop (root: `setresuid` to `--uid`; unprivileged: a nested user namespace where it is the
//!   caller's uid, not root, so `exec` leaves no capabilities), the parent-death signal, and
//!   `exec` of the program, which stays PID 1.
//!
//! `--warm` starts stage 1 ahead of time: it makes the run's cgroups and joins them itself,
//! enters its namespaces, makes the part of the new root that does not depend on the run (`/dev`,
//! `/proc`) and starts stage 2, then waits for the run's own options on stdin (NUL-separated,
//! `--` and the program included).
//! Joining a cgroup (v1) waits for an RCU grace period, about 10 ms on a busy host; a warm
//! helper pays it while the worker is still busy with other units, and stage 2 inherits the
//! cgroups. A warm helper cannot remove its own cgroups; a later helper removes them once this
//! one's pid is gone.
//!
//! `--probe` does all of it with `/` as the tree and a temporary work directory, and stops short
//! of running a program. Every failure before the program runs exits 125 with one line
//! `discomy-sandbox: <what failed>: <errno>` on stderr (and in `--status-file`).

//!
//! Rooms: this file (options, the status file, warm helpers, the entry), `stage1` (namespaces and
//! running stage 2), `fork` (stage 2 started as a child), `tree` (the unit tree and the new
//! root), `workdir` (the size-bounded work directory), `cgroups`, `stage2` (PID 1 of the new namespaces, which execs the program), `error`
//! (what a failed set-up step says).

/// A [`SetupError`] from a format string.
macro_rules! setup_error {
    ($($arg:tt)*) => { $crate::sandbox::engine::SetupError::new(format!($($arg)*)) };
}

/// Returns a [`SetupError`] from a format string.
macro_rules! bail {
    ($($arg:tt)*) => { return Err(setup_error!($($arg)*)) };
}

mod cgroups;
mod error;
mod fork;
mod seccomp;
mod stage1;
mod stage2;
mod tree;
mod workdir;

pub use error::SetupError;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, symlink};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::sandbox::{
    HelperStatus, Limits, SETUP_EXIT_CODE, SETUP_PREFIX, WORK_ELSEWHERE, nul_joined, nul_split,
    work_mount_point,
};
pub(super) use clap::Parser;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::resource::{Resource, UsageWho, getrusage, setrlimit};
use nix::sys::signal::{Signal, kill};
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::sys::time::TimeVal;
use nix::unistd::{Gid, Pid, Uid, chdir, getegid, geteuid, getgid, getuid, pivot_root};

use cgroups::*;
use error::{Context, Result};
use fork::Stage2;
use stage1::*;
use stage2::*;
use tree::*;

/// Top-level entries of the tree never bound: the sandbox provides its own.
pub(super) const RESERVED: &[&str] = &["proc", "dev", "sys", "run"];
/// With `/` as the tree, only these are bound (no `/home`, `/root`, `/var`, `/srv`, …).
pub(super) const HOST_ENTRIES: &[&str] =
    &["bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "opt"];
/// Devices bound into the sandbox's `/dev`.
pub(super) const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];
/// Prefix of per-run cgroup directories, followed by stage 1's pid.
pub(super) const CGROUP_PREFIX: &str = "discomy-sandbox-";
/// Prefix of the new root's mount point in the temporary directory, followed by stage 1's pid.
pub(super) const ROOT_PREFIX: &str = "discomy-sandbox-root-";

#[derive(Parser, Debug)]
#[command(
    name = "discomy-sandbox",
    version,
    about = "Runs one program in a throw-away sandbox (discomy worker helper)"
)]
pub(super) struct Cli {
    /// Toolchain tree whose top-level entries become the read-only root.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Directory mounted read-write at /tmp, the program's working directory.
    #[arg(long)]
    work: Option<PathBuf>,
    /// A unit tree (files at their absolute paths) laid over the toolchain tree with overlayfs,
    /// read-only: source-mode units see the client's files where the client saw them.
    #[arg(long, conflicts_with = "overlay_files")]
    overlay: Option<PathBuf>,
    /// Like --overlay, with the unit tree copied by the helper into the new root from FILE:
    /// NUL-separated pairs of an absolute path and the file copied there (an empty source
    /// makes a directory). The toolchain tree is merged around it with read-only binds; the
    /// files count against --mem-bytes.
    #[arg(long, value_name = "FILE")]
    overlay_files: Option<PathBuf>,
    /// The program's working directory (absolute, inside the sandbox) instead of the work
    /// directory; it must exist in the tree or the overlay.
    #[arg(long)]
    cwd: Option<PathBuf>,
    /// RLIMIT_CPU in seconds (SIGXCPU, SIGKILL one second later).
    #[arg(long, default_value_t = Limits::default().cpu_secs)]
    cpu_secs: u64,
    /// RLIMIT_AS in bytes, and the cgroup memory limit.
    #[arg(long, default_value_t = Limits::default().mem_bytes)]
    mem_bytes: u64,
    /// RLIMIT_FSIZE in bytes.
    #[arg(long, default_value_t = Limits::default().file_bytes)]
    file_bytes: u64,
    /// Size of the writable work directory (a tmpfs holding a copy of --work, copied back
    /// after the run); filling it ends the run as over its limit.
    #[arg(long, default_value_t = Limits::default().work_bytes)]
    work_bytes: u64,
    /// RLIMIT_NPROC, and the cgroup pids.max.
    #[arg(long, default_value_t = Limits::default().nproc)]
    nproc: u64,
    /// Uid the program runs as when started as root.
    #[arg(long, default_value_t = crate::sandbox::DEFAULT_RUN_AS.0)]
    uid: u32,
    /// Gid the program runs as when started as root.
    #[arg(long, default_value_t = crate::sandbox::DEFAULT_RUN_AS.1)]
    gid: u32,
    /// A cgroup directory to create the run's cgroup under (repeat for v1 hierarchies).
    /// Failing to use it is an error. Default: the helper's own cgroups, best effort, root only.
    #[arg(long)]
    cgroup_parent: Vec<PathBuf>,
    /// Do not use cgroups.
    #[arg(long)]
    no_cgroup: bool,
    /// An existing file where the outcome is recorded.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// An environment variable of the program (the environment is otherwise empty).
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Check that sandboxes can be created here, then exit.
    #[arg(long)]
    probe: bool,
    /// Make and join the run's cgroups now, then read the run's other options (NUL-separated,
    /// `--` and the program included) from stdin, and go on as if they had been given here.
    #[arg(long)]
    warm: bool,
    /// Internal: run stage 2 with this new root.
    #[arg(long, hide = true)]
    stage2: Option<PathBuf>,
    /// Internal (stage 2): cgroups to join.
    #[arg(long, hide = true)]
    join_cgroup: Vec<PathBuf>,
    /// Internal (stage 2): stage 1 made a user namespace; inner uid/gid 0 is the caller.
    #[arg(long, hide = true)]
    userns: bool,
    /// Internal (stage 2): the caller's uid and gid outside, to map in the nested namespace.
    #[arg(long, hide = true, num_args = 2, value_names = ["UID", "GID"])]
    outer_ids: Vec<u32>,
    /// The program (an absolute path inside the tree) and its arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

/// The `discomy-sandbox` binary: parses the options (or reads them from stdin), runs the stage
/// they ask for and exits with its status.
pub fn run() -> ExitCode {
    let _ = PARENT.set(nix::unistd::getppid());
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let _ = writeln!(io::stderr(), "{SETUP_PREFIX}{}", first.trim_start_matches("error: "));
            return ExitCode::from(SETUP_EXIT_CODE);
        }
    };
    let mut status = open_status(&cli);
    let result = match &cli.stage2 {
        Some(newroot) => stage2(&cli, newroot),
        None if cli.warm => warm(&cli, &mut status),
        None => cgroups_for(&cli).and_then(|cgroups| stage1(&cli, &mut status, cgroups, None)),
    };
    exit_with(result, &mut status)
}

/// The process that started the helper (the worker), as it was when the helper started.
static PARENT: std::sync::OnceLock<Pid> = std::sync::OnceLock::new();

/// Makes the helper die (SIGKILL) with the process that started it, so a killed worker leaves
/// no helper, and so no compile, behind: stage 2 dies with stage 1, and the program, PID 1 of
/// its namespace, with stage 2. Called once the namespaces are entered (entering a user
/// namespace changes credentials, which clears the setting). A parent already gone: exit now.
pub(super) fn die_with_parent() -> Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("set the parent-death signal")?;
    if PARENT.get().is_some_and(|p| *p != nix::unistd::getppid()) {
        bail!("the process that started the helper is gone");
    }
    Ok(())
}

/// The status file, opened before anything else: stage 2 leaves the host's file system behind,
/// and the handle is close-on-exec, so the program never sees it.
pub(super) fn open_status(cli: &Cli) -> Option<File> {
    cli.status_file.as_ref().and_then(|p| OpenOptions::new().write(true).open(p).ok())
}

/// The exit status for `result`; a set-up failure is also reported on stderr and recorded.
pub(super) fn exit_with(result: Result<u8>, status: &mut Option<File>) -> ExitCode {
    ExitCode::from(exit_code(result, status))
}

/// [`exit_with`]'s number.
pub(super) fn exit_code(result: Result<u8>, status: &mut Option<File>) -> u8 {
    match result {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = writeln!(io::stderr(), "{SETUP_PREFIX}{msg}");
            let record = HelperStatus { setup_error: Some(msg), ..HelperStatus::default() };
            write_status(status, &record);
            SETUP_EXIT_CODE
        }
    }
}

pub(super) fn write_status(file: &mut Option<File>, record: &HelperStatus) {
    if let Some(f) = file.as_mut() {
        let _ = f.set_len(0);
        let _ = f.write_all_at(record.to_text().as_bytes(), 0);
    }
}

impl Cli {
    fn env_pairs(&self) -> Result<Vec<(String, String)>> {
        self.env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
                _ => Err(setup_error!("invalid --env {kv:?}: expected NAME=VALUE")),
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 1
// ---------------------------------------------------------------------------------------------

/// Most bytes of options a warm helper accepts on stdin.
pub(super) const MAX_WARM_OPTIONS: u64 = 1 << 20;

/// `--warm`: the cgroups first (joined by this process, so stage 2 inherits them without a
/// migration of its own) and the namespaces, then the run's options from stdin, then stage 1 as
/// usual. An empty stdin means the worker let this helper go unused: it exits quietly.
pub(super) fn warm(base: &Cli, status: &mut Option<File>) -> Result<u8> {
    let mut cgroups = cgroups_for(base)?;
    for dir in &cgroups.dirs {
        // This process counts against pids.max too.
        if dir.join("pids.max").exists() {
            fs::write(dir.join("pids.max"), base.nproc.saturating_add(1).to_string())
                .with_context(|| format!("set pids.max of {}", dir.display()))?;
        }
        fs::write(dir.join("cgroup.procs"), "0")
            .with_context(|| format!("join cgroup {}", dir.display()))?;
    }
    cgroups.joined_by_stage1 = true;
    // The namespaces do not depend on the run either, nor does the skeleton of its root.
    let mut entered = enter_namespaces()?;
    die_with_parent()?;
    entered.root = Some(prepare_root(&entered.scratch).map_err(|e| {
        let hint = if geteuid().is_root() { String::new() } else { userns_hint() };
        setup_error!("{e:#}{hint}")
    })?);
    // Stage 2 too: it starts (PID 1 of the new namespace, in these cgroups) and waits for its
    // options, which stage 1 writes once the new root is built.
    let stage2 = Stage2::start()?;
    let base_argv: Vec<OsString> = std::env::args_os().filter(|a| a != "--warm").collect();
    let opts = options_from_stdin(base_argv);
    let Some(cli) = opts? else {
        return Ok(0);
    };
    if cli.warm || cli.stage2.is_some() || cli.probe {
        bail!("options on stdin: --warm, --probe and stage 2 options are not accepted there");
    }
    stage1(&cli, status, cgroups, Some((entered, stage2)))
}

/// `argv` followed by the NUL-separated options on stdin, parsed; `None` for an empty stdin.
pub(super) fn options_from_stdin(mut argv: Vec<OsString>) -> Result<Option<Cli>> {
    let mut options = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(io::stdin(), MAX_WARM_OPTIONS + 1), &mut options)
        .context("read the run's options from stdin")?;
    if options.is_empty() {
        return Ok(None);
    }
    if options.len() as u64 > MAX_WARM_OPTIONS {
        bail!("more than {MAX_WARM_OPTIONS} bytes of options on stdin");
    }
    argv.extend(nul_split(&options).map(|option| OsString::from_vec(option.to_vec())));
    let cli = Cli::try_parse_from(argv).map_err(|e| {
        let text = e.render().to_string();
        setup_error!(
            "options on stdin: {}",
            text.lines().next().unwrap_or("invalid").trim_start_matches("error: ")
        )
    })?;
    Ok(Some(cli))
}
