//! `discomy-sandbox`: runs one program in a throw-away sandbox, for the worker (see
//! `discomy_compilerd::sandbox`, which documents the design, the limits and the status file).
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
//!   directory); the new root (a tmpfs with read-only binds of the tree, the work directory at
//!   `/tmp`, a few devices), made read-only; then it runs stage 2, waits, and records the
//!   outcome;
//! - stage 2 (`--stage2`, PID 1 of the new namespace): its own mount namespace, `/proc`, cgroup
//!   membership, `pivot_root` with the old root detached, `no_new_privs`, rlimits, the privilege
//!   drop (root: `setresuid` to `--uid`; unprivileged: a nested user namespace where it is the
//!   caller's uid, not root, so `exec` leaves no capabilities), the parent-death signal, and
//!   `exec` of the program, which stays PID 1.
//!
//! `--warm` starts stage 1 ahead of time: it makes the run's cgroups and joins them itself and
//! enters its namespaces, then waits for the run's own options on stdin (NUL-separated, `--` and the program included).
//! Joining a cgroup (v1) waits for an RCU grace period, about 10 ms on a busy host; a warm
//! helper pays it while the worker is still busy with other units, and stage 2 inherits the
//! cgroups. A warm helper cannot remove its own cgroups; a later helper removes them once this
//! one's pid is gone.
//!
//! `--probe` does all of it with `/` as the tree and a temporary work directory, and stops short
//! of running a program. Every failure before the program runs exits 125 with one line
//! `discomy-sandbox: <what failed>: <errno>` on stderr (and in `--status-file`).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, symlink};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use discomy_compilerd::sandbox::{
    HelperStatus, Limits, SETUP_EXIT_CODE, SETUP_PREFIX, WORK_ELSEWHERE, nul_joined, nul_split,
    work_mount_point,
};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::resource::{Resource, UsageWho, getrusage, setrlimit};
use nix::sys::signal::{Signal, kill};
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::sys::time::TimeVal;
use nix::unistd::{Gid, Pid, Uid, chdir, chown, getegid, geteuid, getgid, getuid, pivot_root};

/// Top-level entries of the tree never bound: the sandbox provides its own.
const RESERVED: &[&str] = &["proc", "dev", "sys", "run"];
/// With `/` as the tree, only these are bound (no `/home`, `/root`, `/var`, `/srv`, …).
const HOST_ENTRIES: &[&str] =
    &["bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "opt"];
/// Devices bound into the sandbox's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];
/// Prefix of per-run cgroup directories, followed by stage 1's pid.
const CGROUP_PREFIX: &str = "discomy-sandbox-";
/// Prefix of the new root's mount point in the temporary directory, followed by stage 1's pid.
const ROOT_PREFIX: &str = "discomy-sandbox-root-";

#[derive(Parser, Debug)]
#[command(
    name = "discomy-sandbox",
    about = "Runs one program in a throw-away sandbox (discomy worker helper)"
)]
struct Cli {
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
    /// Like --overlay, with the unit tree built by the helper in a tmpfs of its own from FILE:
    /// NUL-separated pairs of an absolute path and the file copied there (an empty source
    /// makes a directory).
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
    /// RLIMIT_NPROC, and the cgroup pids.max.
    #[arg(long, default_value_t = Limits::default().nproc)]
    nproc: u64,
    /// Uid the program runs as when started as root.
    #[arg(long, default_value_t = discomy_compilerd::sandbox::DEFAULT_RUN_AS.0)]
    uid: u32,
    /// Gid the program runs as when started as root.
    #[arg(long, default_value_t = discomy_compilerd::sandbox::DEFAULT_RUN_AS.1)]
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
    /// Internal: stage 2 started ahead of time by a warm stage 1; its options (`--stage2=…`
    /// included) come on stdin once the new root is ready.
    #[arg(long, hide = true)]
    stage2_on_stdin: bool,
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

fn main() -> ExitCode {
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
    if cli.stage2_on_stdin {
        return stage2_from_stdin();
    }
    let mut status = open_status(&cli);
    let result = match &cli.stage2 {
        Some(newroot) => stage2(&cli, newroot),
        None if cli.warm => warm(&cli, &mut status),
        None => cgroups_for(&cli).and_then(|cgroups| stage1(&cli, &mut status, cgroups, None)),
    };
    exit_with(result, &mut status)
}

/// The status file, opened before anything else: stage 2 leaves the host's file system behind,
/// and the handle is close-on-exec, so the program never sees it.
fn open_status(cli: &Cli) -> Option<File> {
    cli.status_file.as_ref().and_then(|p| OpenOptions::new().write(true).open(p).ok())
}

/// The exit status for `result`; a set-up failure is also reported on stderr and recorded.
fn exit_with(result: Result<u8>, status: &mut Option<File>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = format!("{e:#}");
            let _ = writeln!(io::stderr(), "{SETUP_PREFIX}{msg}");
            let record = HelperStatus { setup_error: Some(msg), ..HelperStatus::default() };
            write_status(status, &record);
            ExitCode::from(SETUP_EXIT_CODE)
        }
    }
}

fn write_status(file: &mut Option<File>, record: &HelperStatus) {
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
                _ => Err(anyhow!("invalid --env {kv:?}: expected NAME=VALUE")),
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 1
// ---------------------------------------------------------------------------------------------

/// Most bytes of options a warm helper accepts on stdin.
const MAX_WARM_OPTIONS: u64 = 1 << 20;

/// `--warm`: the cgroups first (joined by this process, so stage 2 inherits them without a
/// migration of its own) and the namespaces, then the run's options from stdin, then stage 1 as
/// usual. An empty stdin means the worker let this helper go unused: it exits quietly.
fn warm(base: &Cli, status: &mut Option<File>) -> Result<u8> {
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
    // The namespaces do not depend on the run either.
    let entered = enter_namespaces()?;
    // Stage 2 too: it starts (PID 1 of the new namespace, in these cgroups) and waits for its
    // options, which stage 1 writes once the new root is built.
    let exe = std::env::current_exe().context("find the helper's own executable")?;
    let stage2 = std::process::Command::new(exe)
        .env_clear()
        .arg("--stage2-on-stdin")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("start stage 2")?;
    let base_argv: Vec<OsString> = std::env::args_os().filter(|a| a != "--warm").collect();
    let Some(cli) = options_from_stdin(base_argv)? else {
        return Ok(0);
    };
    if cli.warm || cli.stage2.is_some() || cli.probe || cli.stage2_on_stdin {
        bail!("options on stdin: --warm, --probe and stage 2 options are not accepted there");
    }
    stage1(&cli, status, cgroups, Some((entered, stage2)))
}

/// `argv` followed by the NUL-separated options on stdin, parsed; `None` for an empty stdin.
fn options_from_stdin(mut argv: Vec<OsString>) -> Result<Option<Cli>> {
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
        anyhow!(
            "options on stdin: {}",
            text.lines().next().unwrap_or("invalid").trim_start_matches("error: ")
        )
    })?;
    Ok(Some(cli))
}

/// A stage 2 started ahead of time: its options from stdin, then stage 2 as usual (its own
/// set-up failures recorded in the status file its options name). Nothing on stdin: stage 1
/// went away unused.
fn stage2_from_stdin() -> ExitCode {
    let argv = std::env::args_os().take(1).collect();
    let cli = match options_from_stdin(argv) {
        Ok(Some(cli)) => cli,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "{SETUP_PREFIX}{e:#}");
            return ExitCode::from(SETUP_EXIT_CODE);
        }
    };
    let mut status = open_status(&cli);
    let result = match &cli.stage2 {
        Some(newroot) => stage2(&cli, newroot),
        None => Err(anyhow!("stage 2 options without --stage2")),
    };
    exit_with(result, &mut status)
}

/// The run's cgroups as the options ask for them (none unprivileged without a parent).
fn cgroups_for(cli: &Cli) -> Result<Cgroups> {
    let privileged = geteuid().is_root();
    if cli.no_cgroup || (!privileged && cli.cgroup_parent.is_empty()) {
        Ok(Cgroups::default())
    } else if cli.cgroup_parent.is_empty() {
        Cgroups::create(&own_cgroup_parents(), false, cli)
    } else {
        Cgroups::create(&cli.cgroup_parent, true, cli)
    }
}

/// Stage 1's namespaces, entered (and its mounts made private), and a scratch tmpfs for its
/// mount points.
struct Namespaces {
    privileged: bool,
    outer_uid: Uid,
    outer_gid: Gid,
    scratch: PathBuf,
}

/// Leaves the caller's mount, PID (for children), network, IPC and UTS namespaces (and user
/// namespace when not root), after removing mount points that killed helpers left behind.
fn enter_namespaces() -> Result<Namespaces> {
    let privileged = geteuid().is_root();
    let (outer_uid, outer_gid) = (getuid(), getgid());
    // Mount points of helpers that were killed before they could remove them (a mount point
    // is only one in its helper's namespace, which died with it).
    discomy_compilerd::sandbox::stale::remove_dirs_of_dead_pids(&std::env::temp_dir(), ROOT_PREFIX);
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if !privileged {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    unshare(flags).map_err(|e| {
        let hint = if privileged { String::new() } else { userns_hint() };
        anyhow!("unshare namespaces: {e}{hint}")
    })?;
    if !privileged {
        write_id_maps(0, outer_uid.as_raw(), 0, outer_gid.as_raw())
            .map_err(|e| anyhow!("{e:#}{}", userns_hint()))?;
    }
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .context("make mounts private")?;
    // Every mount point of the run lives in this tmpfs, in this namespace only: nothing is left
    // to unmount or remove when the namespace goes with this process, except the one empty
    // directory under the temporary directory, which a later helper removes.
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{ROOT_PREFIX}{}-", std::process::id()))
        .tempdir()
        .context("create the scratch mount point")?
        .keep();
    mount(
        Some("tmpfs"),
        &scratch,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700,size=64k"),
    )
    .context("mount the scratch tmpfs")?;
    Ok(Namespaces { privileged, outer_uid, outer_gid, scratch })
}

/// A fresh mount point `name` in the scratch tmpfs.
fn mount_point(scratch: &Path, name: &str) -> Result<PathBuf> {
    let dir = scratch.join(name);
    fs::create_dir(&dir).with_context(|| format!("create mount point {}", dir.display()))?;
    Ok(dir)
}

fn stage1(
    cli: &Cli,
    status: &mut Option<File>,
    cgroups: Cgroups,
    entered: Option<(Namespaces, std::process::Child)>,
) -> Result<u8> {
    let tree = fs::canonicalize(&cli.root)
        .with_context(|| format!("toolchain tree {}", cli.root.display()))?;
    if !tree.is_dir() {
        bail!("toolchain tree {} is not a directory", tree.display());
    }
    let probe_work;
    let work = if cli.probe {
        probe_work = tempfile::Builder::new()
            .prefix("discomy-sandbox-probe-")
            .tempdir()
            .context("create a probe work directory")?;
        probe_work.path().to_path_buf()
    } else {
        let work = cli.work.as_ref().ok_or_else(|| anyhow!("--work is required"))?;
        fs::canonicalize(work).with_context(|| format!("work directory {}", work.display()))?
    };
    if !work.is_dir() {
        bail!("work directory {} is not a directory", work.display());
    }
    let overlay = match &cli.overlay {
        Some(dir) => {
            let dir =
                fs::canonicalize(dir).with_context(|| format!("overlay tree {}", dir.display()))?;
            if !dir.is_dir() {
                bail!("overlay tree {} is not a directory", dir.display());
            }
            Some(dir)
        }
        None => None,
    };
    if let Some(cwd) = &cli.cwd {
        if !cwd.is_absolute() {
            bail!("--cwd {} is not absolute", cwd.display());
        }
    }
    if !cli.probe {
        match cli.command.first() {
            None => bail!("no program given after --"),
            Some(p) if !p.starts_with('/') => bail!("program {p:?} is not an absolute path"),
            Some(_) => {}
        }
    }
    cli.env_pairs()?;
    let (Namespaces { privileged, outer_uid, outer_gid, scratch }, started_stage2) = match entered {
        Some((ns, stage2)) => (ns, Some(stage2)),
        None => (enter_namespaces()?, None),
    };
    if privileged && (cli.uid == 0 || cli.gid == 0) {
        bail!("refusing to run the program as uid/gid 0 (--uid/--gid)");
    }
    if privileged {
        chown(&work, Some(Uid::from_raw(cli.uid)), Some(Gid::from_raw(cli.gid)))
            .with_context(|| format!("chown {} to {}:{}", work.display(), cli.uid, cli.gid))?;
    }
    let newroot_path = mount_point(&scratch, "root")?;
    let unit_tree = match &cli.overlay_files {
        Some(list) => Some(build_unit_tree(list, &scratch)?),
        None => None,
    };
    let overlay = unit_tree.or(overlay);
    let merged = match &overlay {
        Some(unit) => Some(merge_trees(unit, &tree, &scratch).map_err(|e| {
            let hint = if privileged { String::new() } else { userns_hint() };
            anyhow!("{e:#}{hint}")
        })?),
        None => None,
    };
    let tree = merged.unwrap_or(tree);
    build_root(&tree, &work, &newroot_path).map_err(|e| {
        let hint = if privileged { String::new() } else { userns_hint() };
        anyhow!("{e:#}{hint}")
    })?;

    let mut args: Vec<OsString> = vec![
        stage2_flag("stage2", newroot_path.as_os_str()),
        format!("--cpu-secs={}", cli.cpu_secs).into(),
        format!("--mem-bytes={}", cli.mem_bytes).into(),
        format!("--file-bytes={}", cli.file_bytes).into(),
        format!("--nproc={}", cli.nproc).into(),
        format!("--uid={}", cli.uid).into(),
        format!("--gid={}", cli.gid).into(),
    ];
    args.extend(cli.status_file.iter().map(|p| stage2_flag("status-file", p.as_os_str())));
    if !cgroups.joined_by_stage1 {
        args.extend(cgroups.dirs.iter().map(|d| stage2_flag("join-cgroup", d.as_os_str())));
    }
    args.extend(cli.env.iter().map(|kv| OsString::from(format!("--env={kv}"))));
    args.extend(cli.cwd.iter().map(|p| stage2_flag("cwd", p.as_os_str())));
    if !privileged {
        args.extend(["--userns".into(), "--outer-ids".into()]);
        args.extend([outer_uid.to_string().into(), outer_gid.to_string().into()]);
    }
    if cli.probe {
        args.push("--probe".into());
    }
    args.push("--".into());
    args.extend(cli.command.iter().map(OsString::from));
    let child = match started_stage2 {
        // Started ahead of time: it only waits for its options.
        Some(mut stage2) => {
            let options = nul_joined(args.iter().map(|a| a.as_bytes()));
            let mut stdin = stage2.stdin.take().context("stage 2 has no stdin")?;
            stdin.write_all(&options).context("hand stage 2 its options")?;
            drop(stdin);
            stage2.wait().context("wait for stage 2")?
        }
        None => {
            let exe = std::env::current_exe().context("find the helper's own executable")?;
            std::process::Command::new(exe)
                .env_clear()
                .args(&args)
                .status()
                .context("run stage 2")?
        }
    };
    let cpu_ms = getrusage(UsageWho::RUSAGE_CHILDREN)
        .ok()
        .map(|u| millis(u.user_time()) + millis(u.system_time()));
    let (pids_max_events, oom_kills) = cgroups.events();
    let cgroup_dirs: Vec<String> = cgroups.dirs.iter().map(|d| d.display().to_string()).collect();
    drop(cgroups);

    let stage2_failed = cli
        .status_file
        .as_ref()
        .and_then(|p| fs::read_to_string(p).ok())
        .and_then(|text| HelperStatus::parse(&text))
        .is_some_and(|s| s.setup_error.is_some());
    if stage2_failed {
        return Ok(SETUP_EXIT_CODE);
    }
    let record = HelperStatus {
        code: child.code(),
        signal: child.signal(),
        cpu_ms,
        pids_max_events,
        oom_kills,
        ..HelperStatus::default()
    };
    write_status(status, &record);
    let exit = match (child.code(), child.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 255,
    };
    if cli.probe && exit == 0 {
        let mode = if privileged {
            format!(
                "root: program runs as {}:{}, RLIMIT_NPROC counts that uid host-wide",
                cli.uid, cli.gid
            )
        } else {
            "unprivileged: user namespaces, RLIMIT_NPROC counts per sandbox".to_owned()
        };
        let cgroups =
            if cgroup_dirs.is_empty() { "none".to_owned() } else { cgroup_dirs.join(",") };
        let _ = writeln!(io::stdout(), "mode={mode}; cgroups={cgroups}");
    } else {
        // The record is written: closing the output pipes tells the worker the run is over, so
        // leaving the namespaces (unmounting, an RCU grace period) is not on its path.
        close_output();
    }
    Ok(u8::try_from(exit).unwrap_or(255))
}

/// Points standard output and error at `/dev/null`, closing the worker's pipes.
fn close_output() {
    if let Ok(null) = OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        for fd in [1, 2] {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
}

fn millis(t: TimeVal) -> u64 {
    let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
    let micros = u64::try_from(t.tv_usec()).unwrap_or(0);
    secs * 1000 + micros / 1000
}

/// Explains why user namespaces may be unavailable, from the usual sysctls.
fn userns_hint() -> String {
    let knobs = [
        ("/proc/sys/kernel/unprivileged_userns_clone", "0"),
        ("/proc/sys/user/max_user_namespaces", "0"),
        ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1"),
    ];
    let set: Vec<String> = knobs
        .iter()
        .filter(|(path, bad)| fs::read_to_string(path).is_ok_and(|v| v.trim() == *bad))
        .map(|(path, bad)| format!("{path} is {bad}"))
        .collect();
    let why = if set.is_empty() { String::new() } else { format!(" ({})", set.join(", ")) };
    format!(
        " (unprivileged user namespaces are not usable here{why}; allow them, or run the worker as root)"
    )
}

/// Maps `inner_uid`/`inner_gid` of the new user namespace to `outer_uid`/`outer_gid`.
fn write_id_maps(inner_uid: u32, outer_uid: u32, inner_gid: u32, outer_gid: u32) -> Result<()> {
    match fs::write("/proc/self/setgroups", "deny") {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(e).context("write /proc/self/setgroups");
        }
        _ => {}
    }
    fs::write("/proc/self/uid_map", format!("{inner_uid} {outer_uid} 1\n"))
        .context("write /proc/self/uid_map")?;
    fs::write("/proc/self/gid_map", format!("{inner_gid} {outer_gid} 1\n"))
        .context("write /proc/self/gid_map")?;
    Ok(())
}

/// Mounts a read-only overlayfs of `unit` over `tree` on a fresh mount point, which is
/// unmounted and removed when the returned guard is dropped.
/// Most bytes of a unit tree list.
const MAX_TREE_LIST: u64 = 64 << 20;

/// The unit tree of `--overlay-files`, in a fresh tmpfs sized for it: directories as listed,
/// files copied from their sources. Paths must be absolute and normalised.
fn build_unit_tree(list: &Path, scratch: &Path) -> Result<PathBuf> {
    let mut text = Vec::new();
    io::Read::read_to_end(
        &mut io::Read::take(File::open(list).context("open the unit tree list")?, MAX_TREE_LIST),
        &mut text,
    )
    .context("read the unit tree list")?;
    let fields: Vec<&[u8]> = nul_split(&text).collect();
    if fields.len() % 2 != 0 {
        bail!("unit tree list: an odd number of fields");
    }
    let mut entries = Vec::with_capacity(fields.len() / 2);
    let mut bytes: u64 = 0;
    for pair in fields.chunks(2) {
        let path = std::str::from_utf8(pair[0]).context("unit tree list: a path is not UTF-8")?;
        if let Err(why) = discomy_protocol::sources::check_path(path) {
            bail!("unit tree list: {path:?} is not an absolute normalised path ({why})");
        }
        let source =
            (!pair[1].is_empty()).then(|| PathBuf::from(OsString::from_vec(pair[1].to_vec())));
        if let Some(src) = &source {
            bytes += fs::metadata(src).with_context(|| format!("{}", src.display()))?.len();
        }
        entries.push((path, source));
    }
    let root = mount_point(scratch, "unit")?;
    // Data plus room for the directories and rounding to pages.
    let size = bytes + (entries.len() as u64 + 64) * 8192;
    mount(
        Some("tmpfs"),
        &root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("mode=0755,size={size}").as_str()),
    )
    .context("mount the unit tree's tmpfs")?;
    let mut made: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    // Directories 0755 and files 0644 whatever umask the worker has.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let built = fill_unit_tree(&root, entries, &mut made);
    nix::sys::stat::umask(umask);
    built?;
    Ok(root)
}

fn fill_unit_tree(
    root: &Path,
    entries: Vec<(&str, Option<PathBuf>)>,
    made: &mut std::collections::HashSet<PathBuf>,
) -> Result<()> {
    for (path, source) in entries {
        let dst = root.join(&path[1..]);
        match source {
            None => fs::create_dir_all(&dst).with_context(|| format!("create {path}"))?,
            Some(src) => {
                if let Some(parent) = dst.parent().filter(|p| !made.contains(*p)) {
                    fs::create_dir_all(parent)
                        .with_context(|| format!("create the directory of {path}"))?;
                    made.insert(parent.to_path_buf());
                }
                copy_small(&src, &dst)
                    .with_context(|| format!("copy {} to {path}", src.display()))?;
            }
        }
    }
    Ok(())
}

/// Copies one unit file into the unit tree, readable by all (the compiler runs as a slot uid):
/// one read and one write, where `fs::copy` first tries `copy_file_range` (which always fails
/// across file systems, as here) and then sets permissions. A unit's files are headers and
/// sources, so they are read whole. The caller has set the umask to 022.
fn copy_small(src: &Path, dst: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = fs::read(src)?;
    let mut out =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(dst)?;
    io::Write::write_all(&mut out, &bytes)
}

fn merge_trees(unit: &Path, tree: &Path, scratch: &Path) -> Result<PathBuf> {
    for dir in [unit, tree] {
        let text = dir.to_str().ok_or_else(|| anyhow!("{} is not UTF-8", dir.display()))?;
        if text.contains([':', ',', '\\']) || dir == Path::new("/") {
            bail!("{} cannot be an overlay layer", dir.display());
        }
    }
    let merged = mount_point(scratch, "merged")?;
    let options = format!("lowerdir={}:{}", unit.display(), tree.display());
    mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .with_context(|| format!("mount overlay {options}"))?;
    Ok(merged)
}

/// Builds the sandbox's root in a fresh tmpfs on `newroot`, then makes that tmpfs read-only.
fn build_root(tree: &Path, work: &Path, newroot: &Path) -> Result<()> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(Some("tmpfs"), newroot, Some("tmpfs"), nosuid_nodev, Some("mode=0755,size=1m"))
        .with_context(|| format!("mount tmpfs on {}", newroot.display()))?;

    let names: Vec<OsString> = if tree == Path::new("/") {
        HOST_ENTRIES.iter().map(OsString::from).collect()
    } else {
        let mut names: Vec<OsString> = fs::read_dir(tree)
            .with_context(|| format!("read {}", tree.display()))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        names
    };
    let work_at = work_mount_point(&[tree]);
    for name in names {
        if RESERVED.iter().any(|r| name == *r) || (work_at == "/tmp" && name == "tmp") {
            continue;
        }
        let src = tree.join(&name);
        let dst = newroot.join(&name);
        let Ok(meta) = fs::symlink_metadata(&src) else { continue };
        let kind = meta.file_type();
        if kind.is_symlink() {
            // Recreated, not followed: inside the sandbox it resolves against the new root.
            let target =
                fs::read_link(&src).with_context(|| format!("read link {}", src.display()))?;
            symlink(&target, &dst).with_context(|| format!("create link {}", dst.display()))?;
        } else if kind.is_dir() {
            fs::create_dir(&dst).with_context(|| format!("create {}", dst.display()))?;
            bind(&src, &dst, MsFlags::MS_RDONLY)?;
        } else if kind.is_file() {
            File::create(&dst).with_context(|| format!("create {}", dst.display()))?;
            bind(&src, &dst, MsFlags::MS_RDONLY)?;
        }
    }

    let tmp = newroot.join(work_at.trim_start_matches('/'));
    fs::create_dir(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    bind(work, &tmp, MsFlags::MS_NOEXEC)?;

    let dev = newroot.join("dev");
    fs::create_dir(&dev).with_context(|| format!("create {}", dev.display()))?;
    for name in DEVICES {
        let src = Path::new("/dev").join(name);
        let dst = dev.join(name);
        File::create(&dst).with_context(|| format!("create {}", dst.display()))?;
        mount(Some(&src), &dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("bind {} on {}", src.display(), dst.display()))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(name)).with_context(|| format!("create /dev/{name}"))?;
    }
    let proc_dir = newroot.join("proc");
    fs::create_dir(&proc_dir).with_context(|| format!("create {}", proc_dir.display()))?;

    mount(
        None::<&str>,
        newroot,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nosuid_nodev,
        None::<&str>,
    )
    .with_context(|| format!("remount {} read-only", newroot.display()))?;
    Ok(())
}

/// Binds `src` on `dst` (not recursively when allowed), then remounts it `nosuid`, `nodev`
/// and `extra`, keeping the flags the source mount had locked (`noexec`, `ro`).
fn bind(src: &Path, dst: &Path, extra: MsFlags) -> Result<()> {
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .or_else(|e| {
            // In a user namespace, a non-recursive bind that would uncover what locked mounts
            // hide is refused; take the submounts along then.
            if e == Errno::EINVAL {
                mount(
                    Some(src),
                    dst,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
            } else {
                Err(e)
            }
        })
        .with_context(|| format!("bind {} on {}", src.display(), dst.display()))?;
    let locked = statvfs(src).map(|s| s.flags()).unwrap_or(FsFlags::empty());
    let mut flags =
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | extra;
    if locked.contains(FsFlags::ST_NOEXEC) {
        flags |= MsFlags::MS_NOEXEC;
    }
    if locked.contains(FsFlags::ST_RDONLY) {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(None::<&str>, dst, None::<&str>, flags, None::<&str>)
        .with_context(|| format!("remount {} ({flags:?})", dst.display()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Cgroups
// ---------------------------------------------------------------------------------------------

/// The run's cgroups (one per hierarchy); removed when dropped, unless stage 1 is in them.
#[derive(Default)]
struct Cgroups {
    dirs: Vec<PathBuf>,
    /// A warm helper joined them itself: they cannot be removed while it lives.
    joined_by_stage1: bool,
}

impl Cgroups {
    /// Creates `<parent>/discomy-sandbox-<pid>` under each parent that offers a pids or memory
    /// controller, with `pids.max` and the memory limit set. `explicit`: failures are errors.
    fn create(parents: &[PathBuf], explicit: bool, cli: &Cli) -> Result<Cgroups> {
        let name = format!("{CGROUP_PREFIX}{}", std::process::id());
        let mut made = Cgroups::default();
        for parent in parents {
            remove_stale(parent);
            match make_cgroup(parent, &name, cli) {
                Ok(Some(dir)) => made.dirs.push(dir),
                Ok(None) if explicit => {
                    bail!("cgroup {} offers neither pids nor memory", parent.display())
                }
                Err(e) if explicit => return Err(e),
                Ok(None) | Err(_) => {}
            }
        }
        Ok(made)
    }

    /// (forks refused by `pids.max`, OOM kills) over all of the run's cgroups.
    fn events(&self) -> (u64, u64) {
        let mut pids = 0;
        let mut oom = 0;
        for dir in &self.dirs {
            pids += keyed_value(&dir.join("pids.events"), "max");
            oom += keyed_value(&dir.join("memory.events"), "oom_kill");
            oom += keyed_value(&dir.join("memory.oom_control"), "oom_kill");
        }
        (pids, oom)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        if self.joined_by_stage1 {
            return; // removed by a later helper once this pid is gone
        }
        for dir in &self.dirs {
            // The namespace's processes are gone once PID 1 is reaped, but the cgroup may take
            // a moment to notice.
            for _ in 0..40 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
        }
    }
}

fn make_cgroup(parent: &Path, name: &str, cli: &Cli) -> Result<Option<PathBuf>> {
    let dir = parent.join(name);
    fs::create_dir(&dir).with_context(|| format!("create cgroup {}", dir.display()))?;
    let result = (|| -> Result<bool> {
        let subtree = parent.join("cgroup.subtree_control");
        if subtree.exists() && !dir.join("pids.max").exists() {
            // cgroup v2: controllers must be enabled for the parent's children (refused when
            // the parent has processes of its own and is not the root).
            let _ = fs::write(&subtree, "+pids");
            let _ = fs::write(&subtree, "+memory");
        }
        let mut any = false;
        let set = |file: &str, value: &str| -> Result<()> {
            fs::write(dir.join(file), value)
                .with_context(|| format!("write {} to {}/{file}", value, dir.display()))
        };
        if dir.join("pids.max").exists() {
            set("pids.max", &cli.nproc.to_string())?;
            any = true;
        }
        if dir.join("memory.max").exists() {
            set("memory.max", &cli.mem_bytes.to_string())?;
            let _ = set("memory.swap.max", "0");
            any = true;
        } else if dir.join("memory.limit_in_bytes").exists() {
            set("memory.limit_in_bytes", &cli.mem_bytes.to_string())?;
            any = true;
        }
        Ok(any)
    })();
    match result {
        Ok(true) => Ok(Some(dir)),
        Ok(false) => {
            let _ = fs::remove_dir(&dir);
            Ok(None)
        }
        Err(e) => {
            let _ = fs::remove_dir(&dir);
            Err(e)
        }
    }
}

/// Removes run cgroups left by helpers that were killed (their pid no longer exists).
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) =
            name.to_str().and_then(|n| n.strip_prefix(CGROUP_PREFIX)).and_then(|p| p.parse().ok())
        else {
            continue;
        };
        if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

/// The helper's own cgroup directories: the unified one on a pure v2 host, else the v1 `pids`
/// and `memory` ones.
fn own_cgroup_parents() -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/cgroup") else { return Vec::new() };
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| vec![base.join(p.trim_start_matches('/'))])
            .unwrap_or_default();
    }
    let mut dirs = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "pids" || c == "memory") {
            let dir = base.join(controllers).join(path.trim_start_matches('/'));
            if dir.is_dir() {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// The number after `key` in a `key value` lines file (0 when absent).
fn keyed_value(path: &Path, key: &str) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Stage 2
// ---------------------------------------------------------------------------------------------

fn stage2_flag(name: &str, value: &std::ffi::OsStr) -> OsString {
    let mut arg = OsString::from(format!("--{name}="));
    arg.push(value);
    arg
}

fn stage2(cli: &Cli, newroot: &Path) -> Result<u8> {
    let mut env = cli.env_pairs()?;
    // TMPDIR=/tmp means "the work directory", wherever it is mounted.
    for (key, value) in &mut env {
        let elsewhere = newroot.join(WORK_ELSEWHERE.trim_start_matches('/')).is_dir();
        if key == "TMPDIR" && value == "/tmp" && elsewhere {
            *value = WORK_ELSEWHERE.to_owned();
        }
    }
    // Our own mount namespace, so that pivot_root does not move stage 1's root too.
    unshare(CloneFlags::CLONE_NEWNS).context("unshare the mount namespace (stage 2)")?;
    let proc_dir = newroot.join("proc");
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .with_context(|| format!("mount proc on {}", proc_dir.display()))?;
    for dir in &cli.join_cgroup {
        fs::write(dir.join("cgroup.procs"), "0")
            .with_context(|| format!("join cgroup {}", dir.display()))?;
    }
    // With a pids cgroup, that is the exact per-run limit (and it counts refusals, which the
    // rlimit does not); the rlimit, per user, is then only a backstop.
    let pids_cgroup = cli.join_cgroup.iter().any(|d| d.join("pids.max").exists());

    chdir(newroot).with_context(|| format!("chdir {}", newroot.display()))?;
    pivot_root(".", ".").context("pivot_root into the new root")?;
    umount2(".", MntFlags::MNT_DETACH).context("detach the old root")?;
    // Stage 1 mounted the work directory at /tmp, or elsewhere when the tree uses /tmp.
    let work_at = if Path::new(WORK_ELSEWHERE).is_dir() { WORK_ELSEWHERE } else { "/tmp" };
    let cwd = cli.cwd.as_deref().unwrap_or(Path::new(work_at));
    chdir(cwd).with_context(|| format!("chdir {}", cwd.display()))?;

    nix::sys::prctl::set_no_new_privs().context("set no_new_privs")?;
    let limit = |resource: Resource, soft: u64, hard: u64| {
        setrlimit(resource, soft, hard)
            .with_context(|| format!("setrlimit {resource:?} {soft}/{hard}"))
    };
    limit(Resource::RLIMIT_CORE, 0, 0)?;
    limit(Resource::RLIMIT_CPU, cli.cpu_secs, cli.cpu_secs.saturating_add(1))?;
    limit(Resource::RLIMIT_AS, cli.mem_bytes, cli.mem_bytes)?;
    limit(Resource::RLIMIT_FSIZE, cli.file_bytes, cli.file_bytes)?;
    let nproc = if pids_cgroup { cli.nproc.saturating_mul(2) } else { cli.nproc };
    limit(Resource::RLIMIT_NPROC, nproc, nproc)?;

    if cli.userns {
        // We are uid 0 of stage 1's user namespace, with every capability in it. A nested user
        // namespace in which we are the caller's own (non-zero) uid makes exec drop them all,
        // and RLIMIT_NPROC then counts this sandbox's processes only.
        let [outer_uid, outer_gid] = cli.outer_ids[..] else {
            bail!("--userns needs --outer-ids");
        };
        unshare(CloneFlags::CLONE_NEWUSER).context("unshare the nested user namespace")?;
        write_id_maps(outer_uid, 0, outer_gid, 0)?;
    } else {
        let (uid, gid) = (Uid::from_raw(cli.uid), Gid::from_raw(cli.gid));
        nix::unistd::setgroups(&[]).context("setgroups []")?;
        nix::unistd::setresgid(gid, gid, gid).with_context(|| format!("setresgid {gid}"))?;
        nix::unistd::setresuid(uid, uid, uid).with_context(|| format!("setresuid {uid}"))?;
        if getuid().is_root() || geteuid().is_root() || getegid().as_raw() == 0 {
            bail!("privileges were not dropped");
        }
    }
    // Set after the credential changes, which clear it. When stage 1 dies, the program (PID 1)
    // is killed, and with it the whole namespace.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).context("set the parent-death signal")?;

    if cli.probe {
        let _ = writeln!(
            io::stdout(),
            "probe: pid={} uid={} proc={}",
            std::process::id(),
            getuid(),
            Path::new("/proc/self").exists()
        );
        return Ok(0);
    }
    let Some((program, args)) = cli.command.split_first() else {
        bail!("no program given after --");
    };
    let err = std::process::Command::new(program).args(args).env_clear().envs(env).exec();
    Err(anyhow!("exec {program}: {err}"))
}
