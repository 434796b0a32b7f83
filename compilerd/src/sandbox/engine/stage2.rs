//! Stage 2, PID 1 of the new namespaces: `/proc`, cgroup membership, `pivot_root`,
//! `no_new_privs`, rlimits, the privilege drop, the parent-death signal, the syscall filter
//! (`seccomp`), and `exec` of the program.

use super::*;

pub(super) fn stage2(cli: &Cli, newroot: &Path) -> Result<u8> {
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
    // Last: from here on the program's kernel interfaces are filtered (see `seccomp`).
    super::seccomp::install()?;
    let err = std::process::Command::new(program).args(args).env_clear().envs(env).exec();
    Err(setup_error!("exec {program}: {err}"))
}
