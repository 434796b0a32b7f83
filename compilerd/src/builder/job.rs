//! One build, local and without the network: inputs already on disk → rpmbuild in a private
//! overlay of a chroot as uid 1000 on the host, root only in a user namespace of its own
//! (`chroot-run.sh --user`), in its own process group and cgroup, under a timeout → the outcome, the log and the RPMs, checked.
//!
//! The build is hostile: its output tree is walked without following a symbolic link (each
//! component from the overlay's upper directory down), only regular `*.rpm` files with plain
//! names and sane sizes are taken, and its log is capped. The HTTP side is [`super::run`].

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use discomy_protocol::ops::{CheckKind, Failure, FailureKind, Outcome, is_plain_file_name};
use discomy_protocol::plumbing::GroupKiller;

use super::cgroup::{JobCgroup, Limits};
use super::config::{ChrootConfig, FarmConfig};

/// The most of a build's log kept (the rest is counted and dropped).
pub const MAX_LOG_BYTES: u64 = 256 << 20;
/// The largest RPM taken.
pub const MAX_RPM_BYTES: u64 = 16 << 30;
/// The most RPMs one build may produce.
pub const MAX_RPMS: usize = 2000;
/// Lines of the log's end in a build failure's message.
const TAIL_LINES: usize = 20;
/// rpm's top directory inside the chroot.
const TOPDIR: &str = "/builddir/build";

/// Where and how a build runs.
#[derive(Debug, Clone)]
pub struct BuildSettings<'a> {
    /// `chroot-run.sh`.
    pub runner: &'a Path,
    /// The chroot.
    pub chroot: &'a ChrootConfig,
    /// Farm use, when configured.
    pub farm: Option<&'a FarmConfig>,
    /// The build's cgroup limits.
    pub limits: Limits,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Binary RPMs installed in the chroot before the build (`chroot-run.sh --rpm`): build
    /// dependencies made earlier in the job's batch.
    pub deps: &'a [LocalFile],
}

/// A file on the host and its name in the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    /// Its name (a plain name).
    pub name: String,
    /// Where it is on the host.
    pub path: PathBuf,
}

/// What to build.
#[derive(Debug, Clone)]
pub enum Inputs {
    /// `rpmbuild --rebuild` of a source RPM.
    Srpm(LocalFile),
    /// `rpmbuild -ba` of a spec with its sources.
    Spec {
        /// The spec.
        spec: LocalFile,
        /// Its sources and patches.
        sources: Vec<LocalFile>,
    },
    /// A check of the batch's RPMs (`rpmlint`, or `abipkgdiff` against `baseline`).
    Check {
        /// Which.
        check: CheckKind,
        /// A failing check still succeeds (its log is the report).
        warn_only: bool,
        /// The RPMs checked.
        new: Vec<LocalFile>,
        /// The previously published RPMs (abidiff).
        baseline: Vec<LocalFile>,
    },
}

/// Shared between a build and whoever watches it.
#[derive(Debug, Default)]
pub struct Control {
    /// Set to stop the build (the coordinator's `stop`, or shutdown).
    pub stop: AtomicBool,
    /// Set by the build once the chroot runs.
    pub started: AtomicBool,
}

/// How a build went.
#[derive(Debug)]
pub struct BuildResult {
    /// The outcome to report (RPM uploads still to come on success).
    pub outcome: Outcome,
    /// The build's log (stdout and stderr of the runner, merged).
    pub log: PathBuf,
    /// The RPMs found (binary under `RPMS/`, source under `SRPMS/`), checked.
    pub artifacts: Vec<LocalFile>,
    /// What was not taken from the output and why (symbolic links, odd names, sizes).
    pub refused: Vec<String>,
    /// Whether the build ran in its own cgroup.
    pub in_cgroup: bool,
    /// Whether it was stopped through [`Control::stop`].
    pub stopped: bool,
}

fn failed(kind: FailureKind, message: impl Into<String>) -> Outcome {
    Outcome::Failed(Failure { kind, message: message.into() })
}

/// Builds `inputs` under `work` (an existing private directory: the log goes to
/// `WORK/build.log`, the chroot's overlay to `WORK/chroot`). `name` names the cgroup.
pub fn build(
    settings: &BuildSettings<'_>,
    work: &Path,
    name: &str,
    inputs: &Inputs,
    control: &Control,
) -> BuildResult {
    let log = work.join("build.log");
    let mut result = BuildResult {
        outcome: Outcome::Succeeded,
        log: log.clone(),
        artifacts: Vec::new(),
        refused: Vec::new(),
        in_cgroup: false,
        stopped: false,
    };
    let cgroup = match JobCgroup::create(name, settings.limits) {
        Ok(cg) => Some(cg),
        Err(e) => {
            super::note_cgroup_failure(&e);
            None
        }
    };
    result.in_cgroup = cgroup.is_some();
    let procs = cgroup.as_ref().map(JobCgroup::procs_files).unwrap_or_default();
    let ran = run_runner(settings, work, inputs, &procs, &log, control);
    let oom = cgroup.as_ref().is_some_and(JobCgroup::oom_killed);
    if let Some(cg) = cgroup {
        cg.remove();
    }
    match ran {
        Err(e) => {
            result.outcome = failed(FailureKind::Infrastructure, format!("starting the build: {e}"))
        }
        Ok(Ended::Stopped) => {
            result.stopped = true;
            result.outcome = failed(FailureKind::Infrastructure, "stopped");
        }
        Ok(Ended::TimedOut) => {
            result.outcome = failed(
                FailureKind::Timeout,
                format!(
                    "the build ran past its {} s timeout and was killed",
                    settings.timeout.as_secs()
                ),
            );
        }
        Ok(Ended::Exited(status)) if matches!(inputs, Inputs::Check { .. }) => {
            let warn_only = matches!(inputs, Inputs::Check { warn_only: true, .. });
            if !status.success() && !warn_only {
                result.outcome = failed(
                    FailureKind::Build,
                    format!(
                        "the check failed ({status}); its report ends:\n{}",
                        log_tail(&log, TAIL_LINES)
                    ),
                );
            }
        }
        Ok(Ended::Exited(status)) if !status.success() => {
            let oom = if oom { " (the memory limit killed a process)" } else { "" };
            result.outcome = failed(
                FailureKind::Build,
                format!(
                    "rpmbuild failed ({status}){oom}; the log ends:\n{}",
                    log_tail(&log, TAIL_LINES)
                ),
            );
        }
        Ok(Ended::Exited(_)) => {
            let (rpms, refused) = collect_rpms(&work.join("chroot/upper"));
            result.refused = refused;
            if rpms.is_empty() {
                result.outcome = failed(FailureKind::Build, "rpmbuild succeeded but left no RPM");
            }
            result.artifacts = rpms;
        }
    }
    result
}

enum Ended {
    Exited(std::process::ExitStatus),
    TimedOut,
    Stopped,
}

/// The shell command of a check, run in the chroot over `TOPDIR/check/{new,old}/*.rpm`.
fn check_command(check: CheckKind) -> String {
    let dir = format!("{TOPDIR}/check");
    match check {
        CheckKind::Rpmlint => format!(
            "echo '== rpmlint'; ls {dir}/new/*.rpm >/dev/null 2>&1 || {{ echo 'no RPM to check'; exit 0; }}; \
             rpmlint {dir}/new/*.rpm"
        ),
        // Each new package against the published build of the same name, when there is one.
        CheckKind::Abidiff => format!(
            "echo '== abipkgdiff'; rc=0; for new in {dir}/new/*.rpm; do [ -e \"$new\" ] || continue; \
             name=$(rpm -qp --qf '%{{NAME}}' \"$new\" 2>/dev/null); case \"$name\" in *-debuginfo|*-debugsource) continue;; esac; \
             for old in {dir}/old/*.rpm; do [ -e \"$old\" ] || continue; \
             [ \"$(rpm -qp --qf '%{{NAME}}' \"$old\" 2>/dev/null)\" = \"$name\" ] || continue; \
             echo \"== $name: $(basename \"$old\") -> $(basename \"$new\")\"; \
             abipkgdiff \"$old\" \"$new\" || rc=1; done; done; exit $rc"
        ),
    }
}

/// Single-quoted for `bash -c`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The runner's arguments after `sh RUNNER`.
fn runner_args(settings: &BuildSettings<'_>, work: &Path, inputs: &Inputs) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--root".into(),
        settings.chroot.root.to_string_lossy().into_owned(),
        "--work".into(),
        work.join("chroot").to_string_lossy().into_owned(),
        "--user".into(),
    ];
    if let Some(farm) = settings.farm {
        args.extend([
            "--discomy".into(),
            "--map".into(),
            format!("/run/discomy={}", farm.socket_dir.display()),
            "--map".into(),
            format!("/usr/libexec/discomy={}", farm.libexec_dir.display()),
            "--macro".into(),
            format!("_smp_build_ncpus={}", farm.smp_ncpus),
        ]);
    }
    args.extend(["--macro".into(), format!("_topdir={TOPDIR}")]);
    for (name, value) in &settings.chroot.macros {
        args.extend(["--macro".into(), format!("{name}={value}")]);
    }
    for dep in settings.deps {
        args.extend(["--rpm".into(), dep.path.to_string_lossy().into_owned()]);
    }
    for (inside, host) in &settings.chroot.install {
        args.extend(["--install".into(), format!("{}={inside}", host.display())]);
    }
    let mut install = |file: &LocalFile, dir: &str| {
        args.extend([
            "--install".into(),
            format!("{}={TOPDIR}/{dir}/{}", file.path.display(), file.name),
        ]);
        format!("{TOPDIR}/{dir}/{}", file.name)
    };
    let nodeps = if settings.chroot.nodeps { " --nodeps" } else { "" };
    let command = match inputs {
        Inputs::Srpm(srpm) => {
            let at = install(srpm, "SRPMS-in");
            format!("rpmbuild --rebuild{nodeps} {}", shell_quote(&at))
        }
        Inputs::Spec { spec, sources } => {
            let at = install(spec, "SPECS");
            for source in sources {
                install(source, "SOURCES");
            }
            format!("rpmbuild -ba{nodeps} {}", shell_quote(&at))
        }
        Inputs::Check { check, new, baseline, .. } => {
            for rpm in new {
                install(rpm, "check/new");
            }
            for rpm in baseline {
                install(rpm, "check/old");
            }
            check_command(*check)
        }
    };
    args.extend(["--".into(), command]);
    args
}

fn run_runner(
    settings: &BuildSettings<'_>,
    work: &Path,
    inputs: &Inputs,
    cgroup_procs: &[PathBuf],
    log: &Path,
    control: &Control,
) -> io::Result<Ended> {
    let log_file = File::options().write(true).create_new(true).open(log)?;
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let write_err = write_end.try_clone()?;
    // The first process joins the cgroups, then becomes the runner: nothing of the build runs
    // outside them.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(
            "while [ \"$1\" != -- ]; do echo $$ >\"$1\" || echo \"discomy builder: cannot join cgroup $1\" >&2; \
             shift; done; shift; exec \"$@\"",
        )
        .arg("sh")
        .args(cgroup_procs)
        .arg("--")
        .arg("sh")
        .arg(settings.runner)
        .args(runner_args(settings, work, inputs))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LANG", "C.UTF-8")
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(write_err))
        .process_group(0);
    let spawned = cmd.spawn();
    drop(cmd); // closes our copies of the pipe's write end
    let mut child = spawned?;
    let mut killer = GroupKiller::new(Some(child.id()));
    control.started.store(true, Ordering::SeqCst);
    let copier = std::thread::spawn(move || copy_log(File::from(read_end), log_file));
    let deadline = Instant::now() + settings.timeout;
    let ended = loop {
        if let Some(status) = child.try_wait()? {
            break Ended::Exited(status);
        }
        if control.stop.load(Ordering::SeqCst) {
            killer.kill();
            break Ended::Stopped;
        }
        if Instant::now() >= deadline {
            killer.kill();
            break Ended::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Whatever the runner left in its group goes too (its PID namespace already died with it).
    killer.kill();
    killer.disarm();
    let _ = child.wait();
    if copier.join().is_err() {
        tracing::warn!("the log copier panicked");
    }
    Ok(ended)
}

/// Copies the build's output into its log, up to [`MAX_LOG_BYTES`]; the rest is read and dropped.
fn copy_log(mut from: File, mut to: File) {
    let mut buf = vec![0u8; 64 << 10];
    let (mut kept, mut dropped) = (0u64, 0u64);
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let take = (MAX_LOG_BYTES - kept).min(n as u64) as usize;
        if take > 0 && to.write_all(&buf[..take]).is_err() {
            dropped += n as u64;
            continue;
        }
        kept += take as u64;
        dropped += (n - take) as u64;
    }
    if dropped > 0 {
        let _ = writeln!(to, "\n[discomy builder: {dropped} more bytes of output dropped]");
    }
}

/// The last `n` lines of the log (lossy UTF-8), reading at most its last 64 KiB.
pub fn log_tail(log: &Path, n: usize) -> String {
    let bytes = fs::read(log).unwrap_or_default();
    let start = bytes.len().saturating_sub(64 << 10);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The RPMs under `upper/builddir/build/{RPMS,SRPMS}`: regular files named `*.rpm` (plain names,
/// at most [`MAX_RPM_BYTES`], at most [`MAX_RPMS`]), reached without following a symbolic link.
/// Everything else that looks like an RPM is listed as refused.
pub fn collect_rpms(upper: &Path) -> (Vec<LocalFile>, Vec<String>) {
    let (mut rpms, mut refused) = (Vec::new(), Vec::new());
    // Every component from the overlay's upper directory down must be a real directory.
    let mut top = upper.to_path_buf();
    for part in ["builddir", "build"] {
        top.push(part);
        match fs::symlink_metadata(&top) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                refused.push(format!("{}: not a directory", top.display()));
                return (rpms, refused);
            }
            Err(_) => return (rpms, refused),
        }
    }
    for dir in ["RPMS", "SRPMS"] {
        walk(&top.join(dir), 0, &mut rpms, &mut refused);
    }
    rpms.sort_by(|a, b| a.name.cmp(&b.name));
    // Two files of one name (RPMS/x86_64/a.rpm, RPMS/noarch/a.rpm) cannot both be artefacts.
    let mut seen = std::collections::BTreeSet::new();
    rpms.retain(|r| {
        let first = seen.insert(r.name.clone());
        if !first {
            refused.push(format!("{}: a second RPM of that name", r.path.display()));
        }
        first
    });
    (rpms, refused)
}

fn walk(dir: &Path, depth: u32, rpms: &mut Vec<LocalFile>, refused: &mut Vec<String>) {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            refused.push(format!("{}: not a directory", dir.display()));
            return;
        }
        Err(_) => return,
    }
    if depth > 4 {
        refused.push(format!("{}: too deep", dir.display()));
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        if meta.is_dir() {
            walk(&path, depth + 1, rpms, refused);
        } else if !name.ends_with(".rpm") {
            continue;
        } else if !meta.file_type().is_file() {
            refused.push(format!("{}: not a regular file", path.display()));
        } else if !is_plain_file_name(&name) {
            refused.push(format!("{}: not a plain name", path.display()));
        } else if meta.len() > MAX_RPM_BYTES {
            refused.push(format!(
                "{}: {} bytes, more than {MAX_RPM_BYTES}",
                path.display(),
                meta.len()
            ));
        } else if rpms.len() >= MAX_RPMS {
            refused.push(format!("{}: more than {MAX_RPMS} RPMs", path.display()));
        } else {
            rpms.push(LocalFile { name, path });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_real_rpm_files_are_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let build = tmp.path().join("builddir/build");
        fs::create_dir_all(build.join("RPMS/x86_64")).unwrap();
        fs::create_dir_all(build.join("SRPMS")).unwrap();
        fs::write(build.join("RPMS/x86_64/a-1.x86_64.rpm"), "rpm").unwrap();
        fs::write(build.join("SRPMS/a-1.src.rpm"), "srpm").unwrap();
        fs::write(build.join("RPMS/notes.txt"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", build.join("RPMS/x86_64/evil.rpm")).unwrap();
        std::os::unix::fs::symlink("/etc", build.join("RPMS/linked")).unwrap();
        let (rpms, refused) = collect_rpms(tmp.path());
        let names: Vec<&str> = rpms.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a-1.src.rpm", "a-1.x86_64.rpm"]);
        // The link named like an RPM is refused; the linked directory is not entered.
        assert_eq!(refused.len(), 1, "{refused:?}");
        // A symbolic link above RPMS/ is not followed either.
        fs::remove_dir_all(tmp.path().join("builddir")).unwrap();
        fs::create_dir_all(tmp.path().join("elsewhere/build/RPMS")).unwrap();
        fs::write(tmp.path().join("elsewhere/build/RPMS/x.rpm"), "x").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), tmp.path().join("builddir"))
            .unwrap();
        let (rpms, refused) = collect_rpms(tmp.path());
        assert!(rpms.is_empty());
        assert_eq!(refused.len(), 1);
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }
}
