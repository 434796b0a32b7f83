//! Stage 1: per-run cgroups, the namespaces, private mounts, the new root, then stage 2 run
//! (or handed its options when started ahead of time), waited for and its outcome recorded.

use super::*;

/// Stage 1's namespaces, entered (and its mounts made private), and a scratch tmpfs for its
/// mount points.
pub(super) struct Namespaces {
    privileged: bool,
    outer_uid: Uid,
    outer_gid: Gid,
    pub(super) scratch: PathBuf,
    /// The new root's [`root_skeleton`], when a warm helper made it ahead of its run.
    pub(super) root: Option<PathBuf>,
}

/// Leaves the caller's mount, PID (for children), network, IPC and UTS namespaces (and user
/// namespace when not root), after removing mount points that killed helpers left behind.
pub(super) fn enter_namespaces() -> Result<Namespaces> {
    let privileged = geteuid().is_root();
    let (outer_uid, outer_gid) = (getuid(), getgid());
    // Mount points of helpers that were killed before they could remove them (a mount point
    // is only one in its helper's namespace, which died with it).
    crate::sandbox::stale::remove_dirs_of_dead_pids(&std::env::temp_dir(), ROOT_PREFIX);
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
        setup_error!("unshare namespaces: {e}{hint}")
    })?;
    if !privileged {
        write_id_maps(0, outer_uid.as_raw(), 0, outer_gid.as_raw())
            .map_err(|e| setup_error!("{e:#}{}", userns_hint()))?;
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
    Ok(Namespaces { privileged, outer_uid, outer_gid, scratch, root: None })
}

/// The new root's mount point in the scratch tmpfs, with its [`root_skeleton`].
pub(super) fn prepare_root(scratch: &Path) -> Result<PathBuf> {
    let root = mount_point(scratch, "root")?;
    root_skeleton(&root)?;
    Ok(root)
}

/// A fresh mount point `name` in the scratch tmpfs.
pub(super) fn mount_point(scratch: &Path, name: &str) -> Result<PathBuf> {
    let dir = scratch.join(name);
    fs::create_dir(&dir).with_context(|| format!("create mount point {}", dir.display()))?;
    Ok(dir)
}

pub(super) fn stage1(
    cli: &Cli,
    status: &mut Option<File>,
    cgroups: Cgroups,
    entered: Option<(Namespaces, Stage2)>,
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
        let work = cli.work.as_ref().ok_or_else(|| setup_error!("--work is required"))?;
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
    let (Namespaces { privileged, outer_uid, outer_gid, scratch, root }, started_stage2) =
        match entered {
            Some((ns, stage2)) => (ns, Some(stage2)),
            None => (enter_namespaces()?, None),
        };
    if started_stage2.is_none() {
        // A warm helper did this before it forked stage 2.
        die_with_parent()?;
    }
    if privileged && (cli.uid == 0 || cli.gid == 0) {
        bail!("refusing to run the program as uid/gid 0 (--uid/--gid)");
    }
    if privileged {
        // On the directory itself, never through a link someone put in its place.
        use std::os::unix::fs::OpenOptionsExt;
        let flags = nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_NOFOLLOW;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits())
            .open(&work)
            .and_then(|dir| std::os::unix::fs::fchown(&dir, Some(cli.uid), Some(cli.gid)))
            .with_context(|| format!("chown {} to {}:{}", work.display(), cli.uid, cli.gid))?;
    }
    let newroot_path = match root {
        Some(root) => root,
        None => prepare_root(&scratch).map_err(|e| {
            let hint = if privileged { String::new() } else { userns_hint() };
            setup_error!("{e:#}{hint}")
        })?,
    };
    // A listed unit tree is copied into the new root itself; the toolchain is merged around it
    // with binds (no overlayfs: its lookups cost the compiler about a millisecond per unit).
    let unit_in_root = match &cli.overlay_files {
        Some(list) => {
            // Bounded like the program's memory: the files live in a tmpfs.
            copy_unit_tree(list, &newroot_path, cli.mem_bytes)?;
            true
        }
        None => false,
    };
    let merged = match &overlay {
        Some(unit) => Some(merge_trees(unit, &tree, &scratch).map_err(|e| {
            let hint = if privileged { String::new() } else { userns_hint() };
            setup_error!("{e:#}{hint}")
        })?),
        None => None,
    };
    let tree = merged.unwrap_or(tree);
    let (work_mount, copied_in) =
        build_root(&tree, &work, &newroot_path, unit_in_root, cli.work_bytes).map_err(|e| {
            let hint = if privileged { String::new() } else { userns_hint() };
            setup_error!("{e:#}{hint}")
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
    // Started ahead of time, stage 2 only waits for its options; otherwise it starts now.
    let mut stage2 = match started_stage2 {
        Some(stage2) => stage2,
        None => Stage2::start()?,
    };
    stage2.hand(&nul_joined(args.iter().map(|a| a.as_bytes())))?;
    let child = stage2.wait()?;
    // Before anything tells the worker the run is over: it reads the outputs from `work`.
    let work_full = workdir::copy_back(&work_mount, &work, &copied_in)?;
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
        work_full,
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
pub(super) fn close_output() {
    if let Ok(null) = OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        for fd in [1, 2] {
            let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
        }
    }
}

pub(super) fn millis(t: TimeVal) -> u64 {
    let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
    let micros = u64::try_from(t.tv_usec()).unwrap_or(0);
    secs * 1000 + micros / 1000
}

/// Explains why user namespaces may be unavailable, from the usual sysctls.
pub(super) fn userns_hint() -> String {
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
pub(super) fn write_id_maps(
    inner_uid: u32,
    outer_uid: u32,
    inner_gid: u32,
    outer_gid: u32,
) -> Result<()> {
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

pub(super) fn stage2_flag(name: &str, value: &std::ffi::OsStr) -> OsString {
    let mut arg = OsString::from(format!("--{name}="));
    arg.push(value);
    arg
}
