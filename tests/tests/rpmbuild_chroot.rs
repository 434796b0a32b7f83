//! rpmbuild inside a mock-style chroot of another distribution, through the farm.
//!
//! The chroot is Debian 13 (trixie: gcc 14, rpm 4.20) made by `scripts/setup-chroot.sh` with
//! mmdebstrap on this Debian 12 host (gcc 12), so its compiler is one no worker runs. It builds
//! `tests/rpm-projects/lua/lua.spec` (Lua 5.4 from its Debian source package) with Rocky Linux 9's
//! flags (`rpm/el9`: `%optflags` with LTO, `-specs=…/redhat-hardened-cc1`, hardened link flags),
//! entered by `rpm/chroot-run.sh` the way mock enters it: an overlay copy of the cached chroot,
//! new mount/PID/network namespaces (only `lo`), `/proc`, a minimal `/dev`, `bash --login -c`.
//!
//! Twice: once plainly, once with discomy applied exactly as `rpm/mock/discomy/settings` says (the
//! file the mock snippet `rpm/mock/discomy.cfg` reads): the agent's socket directory and the
//! masquerade directory (static `discomy-cc` + `gcc`, `cc`, … links) bind-mounted in, the
//! masquerade first on PATH through `/etc/profile.d`, `DISCOMY_SOCKET`, and `%_smp_build_ncpus`
//! raised to the farm's slots. Real workers and an agent run on the host; the wrapper ships the
//! chroot's gcc 14 to them as a toolchain.
//!
//! Asserts: at least 90 % of the compile units ran remotely (`discomy stats --json`, which agrees
//! with the wrappers' `DISCOMY_STATS_FILE` lines), and at least 90 % of the LTO links' LTRANS
//! units, the workers installed the chroot's gcc 14 (its
//! `cc1` is in their toolchain trees), and every file of every binary RPM's payload (`rpm2cpio | cpio`)
//! is byte-identical to the plain build's. Also checks that the mock snippet turns the settings
//! into exactly the mock options the runner applies.
//!
//! Without the chroot (or not as root) the test is skipped with a message, unless `CI` is set:
//! then it fails.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use discomy_tests::{
    BUILD_TIMEOUT, Proc, START_TIMEOUT, ShowOnFailure, Worker, agent_stats, bin, clean_command,
    file_mismatches, hosts_of, outcome_counts, private_tmp, read_stats, workspace_root,
};

/// The Debian suite `scripts/setup-chroot.sh` builds by default.
const SUITE: &str = "trixie";
/// Workers and slots of the farm; rpmbuild's `-j` is their product.
const WORKERS: usize = 2;
const SLOTS: u32 = 2;
/// The settings say where the agent's socket directory and the masquerade directory are mounted.
const SOCKET_DIR: &str = "/run/discomy";
const LIBEXEC_DIR: &str = "/usr/libexec/discomy";
/// Inside the bind-mounted socket directory: where the wrappers append their outcome lines.
const WRAPPER_STATS: &str = "wrapper-stats";

fn chroots_dir() -> PathBuf {
    match std::env::var_os("DISCOMY_CHROOTS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("target").join("chroots"),
    }
}

fn rpm_dir() -> PathBuf {
    workspace_root().join("rpm")
}

fn spec_path() -> PathBuf {
    workspace_root().join("tests").join("rpm-projects").join("lua").join("lua.spec")
}

/// The spec's `Version:`.
fn spec_version() -> String {
    let spec = fs::read_to_string(spec_path()).unwrap();
    spec.lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_owned())
        .expect("lua.spec has a Version: line")
}

/// Whether the test can run here; `Err` says why not.
fn prerequisites() -> Result<(PathBuf, PathBuf), String> {
    let root = chroots_dir().join(SUITE).join("root");
    if !root.join("usr/bin/rpmbuild").is_file() || !root.join("usr/bin/gcc").exists() {
        return Err(format!(
            "no {SUITE} chroot with rpmbuild and gcc at {}: run `bash scripts/setup-chroot.sh` \
             (as root, with access to deb.debian.org)",
            root.display()
        ));
    }
    let source = chroots_dir().join("sources").join(format!("lua-{}.tar.gz", spec_version()));
    if !source.is_file() {
        return Err(format!(
            "the spec's source {} is missing: run `bash scripts/setup-chroot.sh`",
            source.display()
        ));
    }
    let uid = Command::new("id").arg("-u").output().map(|o| o.stdout).unwrap_or_default();
    if String::from_utf8_lossy(&uid).trim() != "0" {
        return Err("entering the chroot (unshare, mount, chroot) needs root".to_owned());
    }
    Ok((root, source))
}

/// The settings file's directives, as `(kind, first, rest)`.
fn settings() -> Vec<(String, String, String)> {
    let text = fs::read_to_string(rpm_dir().join("mock/discomy/settings")).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut parts = l.splitn(3, char::is_whitespace);
            let kind = parts.next().unwrap_or_default().to_owned();
            let a = parts.next().unwrap_or_default().to_owned();
            let b = parts.next().unwrap_or_default().trim().to_owned();
            (kind, a, b)
        })
        .collect()
}

/// `rpm/chroot-run.sh` building the Lua spec with the EL9 flags, its overlay under `work`.
fn rpmbuild_command(root: &Path, source: &Path, work: &Path) -> Command {
    let rpm = rpm_dir();
    let installs = [
        (rpm.join("el9/macros.el9"), "/etc/rpm/macros.el9".to_owned()),
        (rpm.join("el9/rpmrc"), "/etc/rpmrc".to_owned()),
        (rpm.join("el9/redhat-hardened-cc1"), "/usr/lib/rpm/redhat/redhat-hardened-cc1".to_owned()),
        (rpm.join("el9/redhat-hardened-ld"), "/usr/lib/rpm/redhat/redhat-hardened-ld".to_owned()),
        (spec_path(), "/builddir/build/SPECS/lua.spec".to_owned()),
        (
            source.to_path_buf(),
            format!("/builddir/build/SOURCES/{}", source.file_name().unwrap().to_string_lossy()),
        ),
    ];
    let mut cmd = clean_command("sh");
    cmd.arg(rpm.join("chroot-run.sh")).arg("--root").arg(root).arg("--work").arg(work);
    for (from, to) in installs {
        cmd.arg("--install").arg(format!("{}={to}", from.display()));
    }
    cmd
}

fn finish(cmd: &mut Command) {
    cmd.args(["--", "rpmbuild -bb --nodeps /builddir/build/SPECS/lua.spec"]);
}

/// Runs one rpmbuild to success and returns its payload and how long it took.
fn build(name: &str, cmd: &mut Command, dir: &Path, work: &Path) -> (Payload, Duration) {
    let start = Instant::now();
    let mut proc = Proc::spawn(name, cmd, dir);
    let status = proc.wait_timeout(BUILD_TIMEOUT);
    assert!(status.success(), "{name} failed ({status}):\n{}", proc.logs(60));
    let took = start.elapsed();
    eprintln!("[e2e] {name}: rpmbuild done in {took:.1?}");
    (payload(work, dir, name), took)
}

/// Every binary RPM's installed files: `RPM file name/path` → contents (symbolic links as
/// `-> target`). Headers (build time, host) are not compared.
type Payload = BTreeMap<String, Vec<u8>>;

fn payload(work: &Path, dir: &Path, name: &str) -> Payload {
    let rpms_dir = work.join("upper/builddir/build/RPMS");
    let mut rpms: Vec<PathBuf> = fs::read_dir(&rpms_dir)
        .unwrap_or_else(|e| panic!("{name}: no RPMS directory {}: {e}", rpms_dir.display()))
        .filter_map(Result::ok)
        .flat_map(|arch| fs::read_dir(arch.path()).into_iter().flatten().filter_map(Result::ok))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rpm"))
        .collect();
    rpms.sort();
    assert!(!rpms.is_empty(), "{name}: rpmbuild wrote no binary RPM under {}", rpms_dir.display());
    let mut out = Payload::new();
    for rpm in rpms {
        let file = rpm.file_name().unwrap().to_string_lossy().into_owned();
        let into = dir.join(format!("{name}-payload")).join(&file);
        fs::create_dir_all(&into).unwrap();
        let status = clean_command("sh")
            .arg("-c")
            .arg("rpm2cpio \"$1\" | cpio -idm --quiet")
            .arg("sh")
            .arg(&rpm)
            .current_dir(&into)
            .status()
            .unwrap();
        assert!(status.success(), "rpm2cpio | cpio of {} failed", rpm.display());
        walk(&into, &into, &file, &mut out);
        eprintln!("[e2e] {name}: {file}");
    }
    out
}

fn walk(root: &Path, dir: &Path, prefix: &str, out: &mut Payload) {
    for entry in fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        let rel = format!("{prefix}/{}", path.strip_prefix(root).unwrap().display());
        let ty = entry.file_type().unwrap();
        if ty.is_symlink() {
            let target = fs::read_link(&path).unwrap();
            out.insert(rel, format!("-> {}", target.display()).into_bytes());
        } else if ty.is_dir() {
            walk(root, &path, prefix, out);
        } else {
            out.insert(rel, fs::read(&path).unwrap());
        }
    }
}

#[test]
fn rpmbuild_in_chroot_through_the_farm() {
    let Some((root, source)) = discomy_tests::or_skip("rpmbuild_chroot", prerequisites()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut show = ShowOnFailure::default();

    // Another distribution's compiler: the chroot's gcc is not the host's.
    let version = |cmd: &mut Command| {
        String::from_utf8_lossy(&cmd.arg("-dumpfullversion").output().unwrap().stdout)
            .trim()
            .to_owned()
    };
    let chroot_gcc = version(clean_command("chroot").arg(&root).arg("gcc"));
    let host_gcc = version(&mut clean_command("gcc"));
    eprintln!("[e2e] chroot {} has gcc {chroot_gcc}; the host has gcc {host_gcc}", root.display());
    assert!(
        !chroot_gcc.is_empty() && chroot_gcc != host_gcc,
        "the chroot's gcc must not be the host's"
    );

    // The plain build: same chroot, same flags, no discomy.
    let local_work = dir.join("local");
    let mut cmd = rpmbuild_command(&root, &source, &local_work);
    finish(&mut cmd);
    let (local, local_took) = build("rpmbuild-local", &mut cmd, dir, &local_work);

    // The farm on the host: workers on loopback, an agent whose socket has a directory of its own
    // (the one directory of the host the chroot sees, besides the masquerade directory).
    let workers: Vec<Worker> =
        (0..WORKERS).map(|i| Worker::start(dir, &format!("worker{i}"), SLOTS)).collect();
    let socket_dir = dir.join("run-discomy");
    fs::create_dir_all(&socket_dir).unwrap();
    let socket = socket_dir.join("agent.sock");
    let mut agent_cmd = clean_command(bin("discomy-compilerd"));
    agent_cmd
        .env("TMPDIR", private_tmp(dir, "agent"))
        .arg("agent")
        .arg("--socket")
        .arg(&socket)
        .args(["--hosts", &hosts_of(&workers)])
        .arg("--store")
        .arg(dir.join("agent.store"));
    let mut agent = Proc::spawn("agent", &mut agent_cmd, dir);
    let start = Instant::now();
    while UnixStream::connect(&socket).is_err() {
        assert!(agent.try_wait().is_none(), "the agent exited:\n{}", agent.logs(40));
        assert!(
            start.elapsed() < START_TIMEOUT,
            "the agent did not accept within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The masquerade directory, as a build host makes it (its names: the chroot's compilers).
    let libexec = dir.join("libexec-discomy");
    let out = clean_command("sh")
        .arg(rpm_dir().join("mock/make-masquerade.sh"))
        .arg(&libexec)
        .arg(bin("discomy-cc"))
        .arg(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "make-masquerade.sh: {}", String::from_utf8_lossy(&out.stderr));
    for name in ["gcc", "cc", "x86_64-linux-gnu-gcc-14"] {
        assert!(libexec.join("bin").join(name).exists(), "no masquerade link {name}");
    }

    // The settings name the mounts the runner replaces with this test's directories.
    let binds: Vec<String> =
        settings().into_iter().filter(|(k, ..)| k == "bind").map(|(_, host, _)| host).collect();
    assert_eq!(binds, [SOCKET_DIR, LIBEXEC_DIR], "rpm/mock/discomy/settings bind mounts changed");

    let farm_work = dir.join("farm");
    let stats_file = socket_dir.join(WRAPPER_STATS);
    show.add("wrapper stats", &stats_file);
    let slots = WORKERS as u32 * SLOTS;
    let mut cmd = rpmbuild_command(&root, &source, &farm_work);
    cmd.arg("--discomy")
        .arg("--map")
        .arg(format!("{SOCKET_DIR}={}", socket_dir.display()))
        .arg("--map")
        .arg(format!("{LIBEXEC_DIR}={}", libexec.display()))
        // The farm's size, as a Koji tag's rpm.macro._smp_build_ncpus would set it.
        .arg("--macro")
        .arg(format!("_smp_build_ncpus={slots}"))
        // Test instrumentation only: each wrapper's outcome, in the bind-mounted directory.
        .arg("--env")
        .arg(format!("DISCOMY_STATS_FILE={SOCKET_DIR}/{WRAPPER_STATS}"));
    finish(&mut cmd);
    let (farm, farm_took) = build("rpmbuild-farm", &mut cmd, dir, &farm_work);
    assert!(agent.try_wait().is_none(), "the agent died during the build");
    eprintln!(
        "[e2e] rpmbuild of lua: local {local_took:.1?}, farm ({WORKERS} workers x {SLOTS} slots, \
         -j{slots}) {farm_took:.1?}"
    );

    // The chroot's compiler reached the workers as a shipped toolchain: its cc1 (under gcc's
    // major version directory) is in a worker's materialised trees.
    let major = chroot_gcc.split('.').next().unwrap_or_default().to_owned();
    let installed: Vec<PathBuf> = (0..WORKERS)
        .filter_map(|i| fs::read_dir(dir.join(format!("worker{i}.store")).join("trees")).ok())
        .flat_map(|trees| trees.filter_map(Result::ok).map(|t| t.path()))
        .filter(|tree| tree.join(format!("usr/libexec/gcc/x86_64-linux-gnu/{major}/cc1")).is_file())
        .collect();
    eprintln!("[e2e] worker trees with gcc {major}'s cc1: {installed:?}");
    assert!(!installed.is_empty(), "no worker installed the chroot's gcc {chroot_gcc}");

    // (a) At least 90 % of the compile units ran remotely.
    let lines = read_stats(&stats_file);
    let compiles: Vec<_> = lines.iter().filter(|l| l.is_compile()).cloned().collect();
    let file_counts = outcome_counts(&compiles);
    eprintln!("[e2e] wrapper stats file: {} compile calls, {file_counts:?}", compiles.len());
    assert!(compiles.iter().all(|l| l.exit_code == 0), "failed compiles: {compiles:?}");
    let stats = agent_stats(&socket);
    eprintln!("[e2e] discomy stats --json: {stats}");
    let field = |name: &str| {
        stats
            .get(name)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| panic!("discomy stats lacks a numeric {name:?}: {stats}"))
    };
    let (units, remote, failed) = (field("units"), field("remote"), field("failed"));
    assert!(units >= 30, "the agent counted {units} units, Lua has 34: {stats}");
    assert_eq!(units, compiles.len() as u64, "agent and wrappers disagree: {stats}");
    assert_eq!(failed, 0, "failed units: {stats}");
    assert!(
        remote * 10 >= units * 9,
        "only {remote} of {units} units ran remotely (local reasons: {}): {stats}",
        stats.get("local_reasons").map(ToString::to_string).unwrap_or_default()
    );
    // The spec's -flto=auto links: their LTRANS units (partitions) went to the farm too.
    let ltrans = |name: &str| stats["ltrans"][name].as_u64().unwrap_or(0);
    let (lt_units, lt_remote) = (ltrans("units"), ltrans("remote"));
    eprintln!("[e2e] LTRANS units in the chroot: {lt_remote} of {lt_units} remote");
    assert!(lt_remote >= 2, "no LTRANS unit of the LTO links ran remotely: {stats}");
    assert!(lt_remote * 10 >= lt_units * 9, "{lt_remote} of {lt_units} LTRANS units remote");

    // (b) The payload is the plain build's, file by file.
    let mismatches = file_mismatches(&local, &farm);
    if !mismatches.is_empty() {
        // Tell "discomy changed the output" from "the build is not reproducible at all".
        let again_work = dir.join("local-again");
        let mut cmd = rpmbuild_command(&root, &source, &again_work);
        finish(&mut cmd);
        let (again, _) = build("rpmbuild-local-again", &mut cmd, dir, &again_work);
        let unstable = file_mismatches(&local, &again);
        panic!(
            "{} of {} payload files differ between the plain and the farm build:\n  {}\n\
             two plain builds differ in {} files:\n  {}",
            mismatches.len(),
            local.len(),
            mismatches.join("\n  "),
            unstable.len(),
            unstable.join("\n  ")
        );
    }
    eprintln!("[e2e] all {} payload files byte-identical to the plain rpmbuild's", local.len());
    assert!(local.keys().any(|k| k.ends_with("/usr/bin/lua")), "no /usr/bin/lua in {local:?}");
    drop(agent);
    drop(workers);
}

/// `rpm/mock/discomy.cfg`, run by Python with an empty mock configuration, sets exactly what
/// `rpm/mock/discomy/settings` says, which is what `rpm/chroot-run.sh --discomy` applies.
#[test]
fn mock_snippet_applies_the_settings() {
    let cfg = rpm_dir().join("mock/discomy.cfg");
    let script = r#"
import json, sys
config_opts = {'macros': {}, 'environment': {}, 'files': {}, 'discomy_dir': sys.argv[2],
               'plugin_conf': {'bind_mount_enable': False, 'bind_mount_opts': {'dirs': []}}}
exec(compile(open(sys.argv[1]).read(), sys.argv[1], 'exec'))
print(json.dumps(config_opts))
"#;
    let out = clean_command("python3")
        .args(["-c", script])
        .arg(&cfg)
        .arg(rpm_dir().join("mock/discomy"))
        .output()
        .expect("python3 (scripts/setup-debian.sh installs it)");
    assert!(out.status.success(), "{}: {}", cfg.display(), String::from_utf8_lossy(&out.stderr));
    let opts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("[e2e] mock options from {}: {opts}", cfg.display());

    let mut binds = Vec::new();
    let mut env = serde_json::Map::new();
    let mut macros = serde_json::Map::new();
    let mut files = serde_json::Map::new();
    for (kind, a, b) in settings() {
        match kind.as_str() {
            "bind" => binds.push(serde_json::json!([a, b])),
            "env" => {
                env.insert(a, b.into());
            }
            "macro" => {
                macros.insert(a, b.into());
            }
            "file" => {
                let text = fs::read_to_string(rpm_dir().join("mock/discomy").join(&b)).unwrap();
                files.insert(a, text.into());
            }
            other => panic!("unknown directive {other:?} in rpm/mock/discomy/settings"),
        }
    }
    assert_eq!(opts["plugin_conf"]["bind_mount_enable"], true);
    assert_eq!(opts["plugin_conf"]["bind_mount_opts"]["dirs"], serde_json::Value::Array(binds));
    assert_eq!(opts["environment"], serde_json::Value::Object(env));
    assert_eq!(opts["macros"], serde_json::Value::Object(macros));
    assert_eq!(opts["files"], serde_json::Value::Object(files));
    assert!(opts["environment"]["DISCOMY_SOCKET"].as_str().unwrap().starts_with(SOCKET_DIR));
    assert!(opts["macros"].get("%_smp_build_ncpus").is_some());
}
