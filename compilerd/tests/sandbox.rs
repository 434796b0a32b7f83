//! Process-level tests of `discomy-sandbox` and `discomy_compilerd::sandbox`: real namespaces,
//! real gcc and python3 inside, the host's `/` (read-only) as the toolchain tree, plus one small
//! hand-made tree. Each test gives its runs a uid of its own (when root), so that
//! `RLIMIT_NPROC`, which counts per user, does not couple tests that run in parallel.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::ffi::OsString;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use discomy_compilerd::sandbox::{
    self, LimitHit, Limits, SandboxError, SandboxOutput, SandboxSpec,
};

const HELPER: &str = env!("CARGO_BIN_EXE_discomy-sandbox");
const PATH: &str = "/usr/bin:/bin";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn work_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("sandbox-test-").tempdir().unwrap()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// Runs `program args` in a sandbox with `/` as the tree.
async fn run_with(
    work: &Path,
    root: &Path,
    program: &str,
    args: &[&str],
    env: &[(String, String)],
    limits: &Limits,
    uid: u32,
) -> Result<SandboxOutput, SandboxError> {
    let args = strings(args);
    let spec = SandboxSpec {
        helper: Path::new(HELPER),
        root,
        work,
        program,
        args: &args,
        env,
        limits,
        run_as: Some((uid, uid)),
        cgroup_parents: &[],
        overlay: None,
        overlay_files: None,
        cwd: None,
    };
    sandbox::run(&spec).await
}

async fn run(
    work: &Path,
    program: &str,
    args: &[&str],
    limits: &Limits,
    uid: u32,
) -> SandboxOutput {
    run_with(
        work,
        Path::new("/"),
        program,
        args,
        &env(&[("PATH", PATH), ("LC_ALL", "C")]),
        limits,
        uid,
    )
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Processes on the host whose real uid is `uid`.
fn processes_of(uid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next().map(str::to_owned))
                == Some(uid.to_string())
        })
        .count()
}

const UNIT: &str =
    "int square(int x) { return x * x; }\nint main(void) { return square(3) - 9; }\n";

#[tokio::test]
async fn gcc_in_the_sandbox_produces_the_same_object_as_outside() {
    let work = work_dir();
    std::fs::write(work.path().join("unit.c"), UNIT).unwrap();
    let out = run(
        work.path(),
        "/usr/bin/gcc",
        &["-O2", "-Wall", "-c", "unit.c", "-o", "unit.o"],
        &Limits::default(),
        61001,
    )
    .await;
    assert_eq!(out.exit_code, 0, "stderr: {}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "stderr: {}", text(&out.stderr));
    assert!(out.limits_hit.is_empty(), "{:?}", out.limits_hit);
    let sandboxed = std::fs::read(work.path().join("unit.o")).unwrap();

    let plain = work_dir();
    std::fs::write(plain.path().join("unit.c"), UNIT).unwrap();
    let status = Command::new("/usr/bin/gcc")
        .args(["-O2", "-Wall", "-c", "unit.c", "-o", "unit.o"])
        .current_dir(plain.path())
        .env_clear()
        .env("PATH", PATH)
        .env("LC_ALL", "C")
        .status()
        .unwrap();
    assert!(status.success());
    let reference = std::fs::read(plain.path().join("unit.o")).unwrap();
    assert!(sandboxed.starts_with(b"\x7fELF"));
    assert_eq!(sandboxed, reference, "sandboxed object differs from a plain gcc -c");
}

#[tokio::test]
async fn only_the_work_directory_is_writable() {
    let work = work_dir();
    let marker = format!("discomy-test-marker-{}", std::process::id());
    let targets = [
        format!("/etc/{marker}"),
        format!("/usr/{marker}"),
        format!("/{marker}"),
        format!("/dev/{marker}"),
    ];
    for t in &targets {
        assert!(!Path::new(t).exists(), "{t} exists before the test");
    }
    // Each write must fail; `|| true` is not used, so the shell's status is the last failure,
    // and the output lists which ones failed.
    let script = targets
        .iter()
        .map(|t| format!("if echo x > {t}; then echo WROTE {t}; fi"))
        .collect::<Vec<_>>()
        .join("; ")
        + "; echo x > /usr/bin/discomy-marker";
    let out = run(work.path(), "/bin/sh", &["-c", &script], &Limits::default(), 61002).await;
    assert_ne!(out.exit_code, 0);
    assert!(!text(&out.stdout).contains("WROTE"), "stdout: {}", text(&out.stdout));
    for t in targets.iter().map(String::as_str).chain(["/usr/bin/discomy-marker"]) {
        // Refused by the read-only mounts, not merely by file permissions.
        let refusal = format!("cannot create {t}: Read-only file system");
        assert!(text(&out.stderr).contains(&refusal), "stderr: {}", text(&out.stderr));
        assert!(!Path::new(t).exists(), "{t} was created on the host");
    }

    let out = run(
        work.path(),
        "/bin/sh",
        &["-c", "echo inside > /tmp/result && pwd"],
        &Limits::default(),
        61002,
    )
    .await;
    assert_eq!(out.exit_code, 0, "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/tmp\n");
    assert_eq!(std::fs::read_to_string(work.path().join("result")).unwrap(), "inside\n");
}

#[tokio::test]
async fn there_is_no_network() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let work = work_dir();
    let code = format!(
        "import socket; socket.create_connection(('127.0.0.1', {port}), 2); print('CONNECTED')"
    );
    let out = run(work.path(), "/usr/bin/python3", &["-c", &code], &Limits::default(), 61003).await;
    assert_ne!(out.exit_code, 0);
    assert!(!text(&out.stdout).contains("CONNECTED"));
    assert!(text(&out.stderr).contains("Network is unreachable"), "stderr: {}", text(&out.stderr));
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the host listener saw {other:?}"),
    }
    // The only interface is a loopback that is down.
    let out = run(work.path(), "/bin/cat", &["/proc/net/dev"], &Limits::default(), 61003).await;
    let interfaces: Vec<String> = text(&out.stdout)
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_owned()))
        .collect();
    assert_eq!(interfaces, ["lo"]);
}

#[tokio::test]
async fn a_fork_bomb_is_contained() {
    let uid = 61004;
    let work = work_dir();
    let limits = Limits { nproc: 32, wall: Duration::from_secs(5), ..Limits::default() };
    let bomb =
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n";
    let started = Instant::now();
    let out = run(work.path(), "/usr/bin/python3", &["-c", bomb], &limits, uid).await;
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert!(out.hit(LimitHit::WallTime) || out.hit(LimitHit::Processes), "{out:?}");
    assert_ne!(out.exit_code, 0);
    if is_root() {
        // Every process of the bomb is gone (they die with the namespace's PID 1).
        let deadline = Instant::now() + Duration::from_secs(3);
        while processes_of(uid) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(processes_of(uid), 0, "processes of uid {uid} survived the sandbox");
    }
    let out = run(work.path(), "/bin/echo", &["still", "fine"], &Limits::default(), uid).await;
    assert_eq!(out.exit_code, 0, "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "still fine\n");
}

/// Files each under the file-size limit, together over the unit directory's: the program sees
/// ENOSPC, the run is reported as over its limit, and nothing reaches the worker's disk. Before
/// the bound, the directory was a bind of the worker's own and took all 64 MiB.
#[tokio::test]
async fn the_unit_directory_is_bounded() {
    let work = work_dir();
    std::fs::write(work.path().join("input"), b"from the worker\n").unwrap();
    let limits = Limits { work_bytes: 16 << 20, file_bytes: 8 << 20, ..Limits::default() };
    let fill = "for i in 1 2 3 4 5 6 7 8; do head -c 8000000 /dev/zero > f$i || exit 3; done";
    let out = run(work.path(), "/bin/sh", &["-c", fill], &limits, 61010).await;
    assert!(out.hit(LimitHit::WorkDir), "{out:?}: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("No space left on device"), "{}", text(&out.stderr));
    let used: u64 =
        std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(used < 1 << 20, "{used} bytes reached the worker's directory");

    // Within the bound, the worker's files are there and the program's come back, links and
    // FIFOs as what they are (the worker's own checks refuse them).
    let work = work_dir();
    std::fs::write(work.path().join("input"), b"from the worker\n").unwrap();
    std::fs::write(work.path().join("changed"), b"before\n").unwrap();
    use std::os::unix::fs::MetadataExt;
    let inode = |name: &str| std::fs::metadata(work.path().join(name)).unwrap().ino();
    let input_inode = inode("input");
    let script = "cat input > copy && mkdir -p d && echo deep > d/x && ln -s /etc/passwd link \
                  && mkfifo fifo && head -c 4000000 /dev/zero > big && rm changed && echo after > changed";
    let out = run(work.path(), "/bin/sh", &["-c", script], &limits, 61010).await;
    assert_eq!(out.exit_code, 0, "stderr: {}", text(&out.stderr));
    assert!(!out.hit(LimitHit::WorkDir));
    let read = |name: &str| std::fs::read_to_string(work.path().join(name)).unwrap();
    assert_eq!(read("copy"), "from the worker\n");
    assert_eq!(read("d/x"), "deep\n");
    assert_eq!(read("changed"), "after\n", "an input the program rewrote comes back");
    assert_eq!(inode("input"), input_inode, "an untouched input is not copied back");
    assert_eq!(std::fs::metadata(work.path().join("big")).unwrap().len(), 4_000_000);
    let link = std::fs::symlink_metadata(work.path().join("link")).unwrap();
    assert!(link.file_type().is_symlink());
    use std::os::unix::fs::FileTypeExt;
    let fifo = std::fs::symlink_metadata(work.path().join("fifo")).unwrap();
    assert!(fifo.file_type().is_fifo());
}

#[tokio::test]
async fn a_memory_hog_fails() {
    let work = work_dir();
    let limits = Limits { mem_bytes: 512 << 20, ..Limits::default() };
    let out = run(
        work.path(),
        "/usr/bin/python3",
        &["-c", "b = bytearray(8 << 30); print('ALLOCATED')"],
        &limits,
        61005,
    )
    .await;
    assert_ne!(out.exit_code, 0);
    assert!(!text(&out.stdout).contains("ALLOCATED"));
    assert!(
        text(&out.stderr).contains("MemoryError") || out.hit(LimitHit::Memory),
        "{out:?}: {}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn a_cpu_hog_is_killed_by_the_cpu_limit() {
    let work = work_dir();
    let limits = Limits { cpu_secs: 1, wall: Duration::from_secs(30), ..Limits::default() };
    let out =
        run(work.path(), "/usr/bin/python3", &["-c", "while True: pass"], &limits, 61006).await;
    assert!(out.hit(LimitHit::CpuTime), "{out:?}");
    assert!(!out.hit(LimitHit::WallTime));
    assert!(out.elapsed < Duration::from_secs(10), "took {:?}", out.elapsed);
    let sig = out.signal.unwrap();
    assert!(
        sig == libc_sig(nix::sys::signal::Signal::SIGXCPU)
            || sig == libc_sig(nix::sys::signal::Signal::SIGKILL)
    );
    assert_eq!(out.exit_code, 128 + sig);
    assert!(out.cpu_time.unwrap() >= Duration::from_millis(900), "{:?}", out.cpu_time);
}

fn libc_sig(s: nix::sys::signal::Signal) -> i32 {
    s as i32
}

#[tokio::test]
async fn environment_and_host_processes_are_hidden() {
    let work = work_dir();
    let vars = env(&[("PATH", PATH), ("DISCOMY_TEST", "a b=c")]);
    let out = run_with(
        work.path(),
        Path::new("/"),
        "/usr/bin/env",
        &[],
        &vars,
        &Limits::default(),
        61007,
    )
    .await
    .unwrap();
    assert_eq!(out.exit_code, 0);
    let mut lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    lines.sort();
    assert_eq!(lines, ["DISCOMY_TEST=a b=c", "PATH=/usr/bin:/bin"]);

    let me = std::process::id();
    let script = format!("echo pid=$$; ls /proc; if kill -0 {me}; then echo VISIBLE; fi");
    let out = run(work.path(), "/bin/sh", &["-c", &script], &Limits::default(), 61007).await;
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("pid=1\n"), "{stdout}");
    assert!(!stdout.contains("VISIBLE"), "{stdout}");
    let pids: Vec<u32> = stdout.lines().skip(1).filter_map(|l| l.parse().ok()).collect();
    assert!(pids.contains(&1));
    assert!(pids.iter().all(|&p| p < 10), "host processes visible: {pids:?}");
    assert!(!pids.contains(&me));
    // Nor the host's mounts: /home, /root, /work and /var are not in the sandbox.
    let out = run(work.path(), "/bin/sh", &["-c", "echo /*"], &Limits::default(), 61007).await;
    let entries: Vec<String> = text(&out.stdout).split_whitespace().map(str::to_owned).collect();
    for hidden in ["/home", "/root", "/work", "/var", "/sys", "/run"] {
        assert!(!entries.iter().any(|e| e == hidden), "{hidden} visible: {entries:?}");
    }
    assert!(entries.iter().any(|e| e == "/usr"), "{entries:?}");
}

#[tokio::test]
async fn setup_failures_are_not_exit_codes() {
    let work = work_dir();
    let err = run_with(
        work.path(),
        Path::new("/"),
        "/usr/bin/no-such-compiler",
        &[],
        &env(&[("PATH", PATH)]),
        &Limits::default(),
        61008,
    )
    .await
    .unwrap_err();
    match err {
        SandboxError::Setup(msg) => {
            assert!(msg.contains("exec /usr/bin/no-such-compiler"), "{msg}")
        }
        other => panic!("{other:?}"),
    }
    let missing = work.path().join("missing");
    let err = run_with(&missing, Path::new("/"), "/bin/true", &[], &[], &Limits::default(), 61008)
        .await
        .unwrap_err();
    assert!(matches!(&err, SandboxError::Setup(m) if m.contains("work directory")), "{err:?}");
    // The program's own 125 is its exit code, not a set-up failure.
    let out = run(
        work.path(),
        "/bin/sh",
        &["-c", "echo discomy-sandbox: fake >&2; exit 125"],
        &Limits::default(),
        61008,
    )
    .await;
    assert_eq!(out.exit_code, 125);
    assert_eq!(text(&out.stderr), "discomy-sandbox: fake\n");
}

/// Copies `path` (following links) into `tree` at the same absolute path.
fn copy_into(tree: &Path, path: &Path) {
    let dst = tree.join(path.strip_prefix("/").unwrap());
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::fs::copy(path, &dst).unwrap();
}

#[tokio::test]
async fn a_small_tree_is_all_the_program_sees() {
    // /bin/dash and its shared-library closure, with /bin a relative link as on merged-usr.
    let tree = work_dir();
    let dash = std::fs::canonicalize("/bin/dash").unwrap();
    let ldd = Command::new("ldd").arg(&dash).output().unwrap();
    assert!(ldd.status.success());
    let libs: Vec<PathBuf> = text(&ldd.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from))
        .collect();
    assert!(!libs.is_empty());
    std::fs::create_dir_all(tree.path().join("usr/bin")).unwrap();
    std::fs::copy(&dash, tree.path().join("usr/bin/dash")).unwrap();
    for lib in &libs {
        copy_into(tree.path(), lib);
    }
    std::os::unix::fs::symlink("usr/bin", tree.path().join("bin")).unwrap();
    // Reserved names in a tree are never bound.
    std::fs::create_dir(tree.path().join("proc")).unwrap();
    std::fs::write(tree.path().join("proc/fake"), "x").unwrap();

    let work = work_dir();
    let script = "cd /; echo /*; echo ok > /tmp/out; echo /proc/fake*";
    let out = run_with(
        work.path(),
        tree.path(),
        "/bin/dash",
        &["-c", script],
        &[],
        &Limits::default(),
        61009,
    )
    .await
    .unwrap();
    assert_eq!(out.exit_code, 0, "stderr: {}", text(&out.stderr));
    let mut lines = text(&out.stdout).lines().map(str::to_owned).collect::<Vec<_>>().into_iter();
    let mut top: Vec<String> = tree_top(tree.path());
    top.extend(["/dev", "/proc", "/tmp"].map(str::to_owned));
    top.sort();
    top.dedup();
    assert_eq!(lines.next().unwrap(), top.join(" "));
    assert_eq!(lines.next().unwrap(), "/proc/fake*", "the tree's /proc was bound");
    assert_eq!(std::fs::read_to_string(work.path().join("out")).unwrap(), "ok\n");
}

/// Whether every directory above `path` is searchable and `path` executable by anyone.
fn world_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors()
        .all(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

fn tree_top(tree: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(tree)
        .unwrap()
        .map(|e| format!("/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn probe_succeeds_here_privileged_and_unprivileged() {
    let report = sandbox::probe(Path::new(HELPER)).unwrap();
    assert!(report.contains("pid=1"), "{report}");
    if !is_root() {
        return;
    }
    assert!(report.contains("mode=root"), "{report}");
    let Some(setpriv) =
        ["/usr/bin/setpriv", "/bin/setpriv"].into_iter().find(|p| Path::new(p).exists())
    else {
        eprintln!("skipping the unprivileged probe: no setpriv");
        return;
    };
    // The helper itself when `nobody` can execute it, else a copy that it can.
    let dir = tempfile::Builder::new().prefix("sandbox-helper-").tempdir().unwrap();
    let helper = if world_executable(Path::new(HELPER)) {
        PathBuf::from(HELPER)
    } else {
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let copy = dir.path().join("discomy-sandbox");
        std::fs::copy(HELPER, &copy).unwrap();
        copy
    };
    let as_nobody = |args: &[OsString]| {
        // A freshly written copy can be "busy" while parallel tests fork with its write
        // descriptor still open; that passes.
        for _ in 0..100 {
            let out = Command::new(setpriv)
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&helper)
                .args(args)
                .env_clear()
                .output()
                .unwrap();
            if !text(&out.stderr).contains("Text file busy") {
                return out;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{} stayed busy", helper.display());
    };
    let out = as_nobody(&["--probe".into()]);
    if !out.status.success() {
        let stderr = text(&out.stderr);
        assert!(stderr.contains("user namespaces"), "unexpected probe failure: {stderr}");
        eprintln!("skipping the unprivileged sandbox: {stderr}");
        return;
    }
    assert!(text(&out.stdout).contains("mode=unprivileged"), "{}", text(&out.stdout));

    // A whole unprivileged run: the work directory belongs to the caller.
    let work = work_dir();
    nix::unistd::chown(work.path(), Some(65534.into()), Some(65534.into())).unwrap();
    let args =
        strings(&["-c", "id -u; echo hi > /tmp/x; grep CapEff /proc/self/status; echo y > /usr/y"]);
    let vars = env(&[("PATH", PATH)]);
    let limits = Limits::default();
    let spec = SandboxSpec {
        helper: &helper,
        root: Path::new("/"),
        work: work.path(),
        program: "/bin/sh",
        args: &args,
        env: &vars,
        limits: &limits,
        run_as: None,
        cgroup_parents: &[],
        overlay: None,
        overlay_files: None,
        cwd: None,
    };
    let out = as_nobody(&sandbox::command_line(&spec).unwrap());
    let stdout = text(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "writing /usr succeeded");
    assert!(stdout.starts_with("65534\n"), "{stdout} / {}", text(&out.stderr));
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");
    assert!(text(&out.stderr).contains("Read-only file system"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(work.path().join("x")).unwrap(), "hi\n");
    assert!(!Path::new("/usr/y").exists());
}
