//! The builder's job runner (`builder::job::build`) on the real trixie chroot, without the HTTP
//! side: the Lua spec builds as the unprivileged `mockbuild` user into checked RPMs (and its
//! source RPM rebuilds), a broken spec fails as a build failure with the log's end, a hostile
//! spec cannot write the chroot's root or the host, reach the network or smuggle a host file out
//! through a symbolic link named like an RPM, and a build past its timeout is killed.
//!
//! Without the chroot (`scripts/setup-chroot.sh`) or not as root, each test is skipped with a
//! message, unless `CI` is set: then it fails.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use discomy_compilerd::builder::cgroup::Limits;
use discomy_compilerd::builder::config::ChrootConfig;
use discomy_compilerd::builder::job::{
    BuildResult, BuildSettings, Control, Inputs, LocalFile, build,
};
use discomy_protocol::ops::{CheckKind, FailureKind, Outcome};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn chroots_dir() -> PathBuf {
    match std::env::var_os("DISCOMY_CHROOTS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace().join("target/chroots"),
    }
}

/// The chroot, or why the test cannot run.
fn prerequisites() -> Result<PathBuf, String> {
    let root = chroots_dir().join("trixie/root");
    if !root.join("usr/bin/rpmbuild").is_file() {
        return Err(format!(
            "no trixie chroot with rpmbuild at {}: run scripts/setup-chroot.sh",
            root.display()
        ));
    }
    let uid =
        std::process::Command::new("id").arg("-u").output().map(|o| o.stdout).unwrap_or_default();
    if String::from_utf8_lossy(&uid).trim() != "0" {
        return Err("entering the chroot (unshare, mount, chroot) needs root".into());
    }
    Ok(root)
}

/// The chroot's root, or `None` after printing why the test is skipped (a failure under CI).
fn chroot_or_skip(test: &str) -> Option<PathBuf> {
    match prerequisites() {
        Ok(root) => Some(root),
        Err(why) if std::env::var_os("CI").is_none_or(|v| v.is_empty()) => {
            eprintln!("[builder] SKIPPED {test}: {why} (under CI=true this fails)");
            None
        }
        Err(why) => panic!("{test} cannot run under CI: {why}"),
    }
}

/// The chroot as a builder configures it: Rocky 9's macros and flags installed, no RPM database.
fn chroot_config(root: &Path) -> ChrootConfig {
    let el9 = workspace().join("rpm/el9");
    let install: BTreeMap<String, PathBuf> = [
        ("/etc/rpm/macros.el9", "macros.el9"),
        ("/etc/rpmrc", "rpmrc"),
        ("/usr/lib/rpm/redhat/redhat-hardened-cc1", "redhat-hardened-cc1"),
        ("/usr/lib/rpm/redhat/redhat-hardened-ld", "redhat-hardened-ld"),
    ]
    .into_iter()
    .map(|(inside, file)| (inside.to_owned(), el9.join(file)))
    .collect();
    ChrootConfig {
        name: "trixie-el9".into(),
        root: root.to_path_buf(),
        install,
        macros: BTreeMap::new(),
        nodeps: true,
    }
}

fn run(root: &Path, work: &Path, name: &str, inputs: &Inputs, timeout: Duration) -> BuildResult {
    run_with(root, work, name, inputs, timeout, &[])
}

fn run_with(
    root: &Path,
    work: &Path,
    name: &str,
    inputs: &Inputs,
    timeout: Duration,
    deps: &[LocalFile],
) -> BuildResult {
    let chroot = chroot_config(root);
    let runner = workspace().join("rpm/chroot-run.sh");
    let settings = BuildSettings {
        runner: &runner,
        chroot: &chroot,
        farm: None,
        limits: Limits { memory: Some(4 << 30), cpus: Some(2.0) },
        timeout,
        deps,
    };
    fs::create_dir_all(work).unwrap();
    let start = Instant::now();
    let result = build(&settings, work, name, inputs, &Control::default());
    eprintln!(
        "[builder] {name}: {:?} in {:.1?}, cgroup: {}",
        result.outcome,
        start.elapsed(),
        result.in_cgroup
    );
    result
}

fn spec_inputs(dir: &Path, name: &str, text: &str, sources: Vec<LocalFile>) -> Inputs {
    let path = dir.join(format!("{name}.spec-input"));
    fs::write(&path, text).unwrap();
    Inputs::Spec { spec: LocalFile { name: format!("{name}.spec"), path }, sources }
}

fn names(result: &BuildResult) -> Vec<String> {
    result.artifacts.iter().map(|a| a.name.clone()).collect()
}

fn failure_of(result: &BuildResult) -> (FailureKind, String) {
    match &result.outcome {
        Outcome::Failed(f) => (f.kind, f.message.clone()),
        Outcome::Succeeded => panic!("expected a failure: {result:?}"),
    }
}

/// Whether cgroups are there to be used (v2 with controllers, or v1 memory).
fn cgroups_expected() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").is_file()
        || Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").is_file()
}

#[test]
fn lua_builds_as_mockbuild_and_its_srpm_rebuilds() {
    let Some(root) = chroot_or_skip("lua_builds_as_mockbuild_and_its_srpm_rebuilds") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let spec = fs::read_to_string(workspace().join("tests/rpm-projects/lua/lua.spec")).unwrap();
    let tarball = chroots_dir().join("sources/lua-5.4.4.tar.gz");
    assert!(tarball.is_file(), "{} is missing: run scripts/setup-chroot.sh", tarball.display());
    let sources = vec![LocalFile { name: "lua-5.4.4.tar.gz".into(), path: tarball }];
    let inputs = spec_inputs(tmp.path(), "lua", &spec, sources);
    let work = tmp.path().join("job-spec");
    let result = run(&root, &work, "test-builder-lua", &inputs, Duration::from_secs(600));
    assert!(
        matches!(result.outcome, Outcome::Succeeded),
        "{result:?}\n{}",
        fs::read_to_string(&result.log).unwrap_or_default()
    );
    let got = names(&result);
    for want in ["lua-5.4.4-1.el9.x86_64.rpm", "lua-5.4.4-1.el9.src.rpm"] {
        assert!(got.iter().any(|n| n == want), "no {want} in {got:?}");
    }
    assert!(result.refused.is_empty(), "{:?}", result.refused);
    assert_eq!(result.in_cgroup, cgroups_expected());
    // The build ran as mockbuild: the overlay's /builddir is its.
    let builddir = work.join("chroot/upper/builddir/build/RPMS");
    let owner = std::os::unix::fs::MetadataExt::uid(&fs::metadata(&builddir).unwrap());
    assert_eq!(owner, 1000, "RPMS/ belongs to uid {owner}, not mockbuild");
    let log = fs::read_to_string(&result.log).unwrap();
    assert!(log.contains("Wrote: /builddir/build/RPMS/x86_64/lua-5.4.4-1.el9.x86_64.rpm"), "{log}");

    // The source RPM it made rebuilds (`rpmbuild --rebuild`).
    let srpm = result.artifacts.iter().find(|a| a.name.ends_with(".src.rpm")).unwrap();
    let copy = tmp.path().join("srpm-input");
    fs::copy(&srpm.path, &copy).unwrap();
    let inputs = Inputs::Srpm(LocalFile { name: srpm.name.clone(), path: copy });
    let result = run(
        &root,
        &tmp.path().join("job-srpm"),
        "test-builder-lua-srpm",
        &inputs,
        Duration::from_secs(600),
    );
    assert!(
        matches!(result.outcome, Outcome::Succeeded),
        "{result:?}\n{}",
        fs::read_to_string(&result.log).unwrap_or_default()
    );
    assert!(
        names(&result).iter().any(|n| n == "lua-5.4.4-1.el9.x86_64.rpm"),
        "{:?}",
        names(&result)
    );
}

#[test]
fn a_broken_spec_is_a_build_failure_with_the_logs_end() {
    let Some(root) = chroot_or_skip("a_broken_spec_is_a_build_failure_with_the_logs_end") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let spec = "Name: broken\nVersion: 1\nRelease: 1\nSummary: x\nLicense: MIT\n%description\nx\n\
                %build\n%if\n%files\n";
    let inputs = spec_inputs(tmp.path(), "broken", spec, Vec::new());
    let result = run(
        &root,
        &tmp.path().join("job"),
        "test-builder-broken",
        &inputs,
        Duration::from_secs(120),
    );
    let (kind, message) = failure_of(&result);
    assert_eq!(kind, FailureKind::Build, "{message}");
    assert!(message.contains("rpmbuild failed") && message.contains("error:"), "{message}");
    assert!(result.artifacts.is_empty());
}

/// A spec whose `%build` tries to escape: write the chroot's root and a host path, reach the
/// network, and plant symbolic links named like RPMs to host files.
const HOSTILE_SPEC: &str = r#"Name: hostile
Version: 1
Release: 1
Summary: tries to escape
License: MIT
BuildArch: noarch
%description
Tries to write outside its build and smuggle host files out.
%build
touch /etc/evil && echo ESCAPE-ETC-WRITTEN || echo ESCAPE-ETC-REFUSED
mkdir -p HOSTDIR && touch HOSTDIR/marker && echo ESCAPE-HOSTPATH-WRITTEN || echo ESCAPE-HOSTPATH-REFUSED
(exec 3<>/dev/tcp/1.1.1.1/80) 2>/dev/null && echo ESCAPE-NET-OPEN || echo ESCAPE-NET-REFUSED
(exec 3<>/dev/tcp/127.0.0.1/22) 2>/dev/null && echo ESCAPE-HOSTLO-OPEN || echo ESCAPE-HOSTLO-REFUSED
sed 's/^/CGROUP-LINE /' /proc/self/cgroup
%install
mkdir -p %{buildroot}/usr/share/hostile
echo ok > %{buildroot}/usr/share/hostile/ok
mkdir -p %{_topdir}/RPMS/noarch
ln -sf /etc/shadow %{_topdir}/RPMS/noarch/shadow-1-1.noarch.rpm
ln -sf /etc %{_topdir}/RPMS/etc-link
%files
/usr/share/hostile/ok
"#;

#[test]
fn a_hostile_build_is_contained_and_its_links_are_not_taken() {
    let Some(root) = chroot_or_skip("a_hostile_build_is_contained_and_its_links_are_not_taken")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // A host directory the build names by its host path: it must stay empty.
    let host_dir = tmp.path().join("host-only");
    fs::create_dir(&host_dir).unwrap();
    let spec = HOSTILE_SPEC.replace("HOSTDIR", &host_dir.display().to_string());
    let inputs = spec_inputs(tmp.path(), "hostile", &spec, Vec::new());
    let root_etc_before = fs::read_dir(root.join("etc")).unwrap().count();
    let result = run(
        &root,
        &tmp.path().join("job"),
        "test-builder-hostile",
        &inputs,
        Duration::from_secs(120),
    );
    let log = fs::read_to_string(&result.log).unwrap();
    assert!(matches!(result.outcome, Outcome::Succeeded), "{result:?}\n{log}");
    for marker in ["ESCAPE-ETC-REFUSED", "ESCAPE-NET-REFUSED", "ESCAPE-HOSTLO-REFUSED"] {
        assert!(log.contains(marker), "no {marker} in the log:\n{log}");
    }
    if result.in_cgroup {
        assert!(
            log.contains("/discomy/test-builder-hostile"),
            "the build ran outside its cgroup:\n{log}"
        );
    }
    // The host is untouched: no /etc/evil anywhere, the host directory empty, the chroot's root
    // unchanged (the overlay takes every write).
    assert!(!Path::new("/etc/evil").exists());
    assert!(!root.join("etc/evil").exists());
    assert_eq!(fs::read_dir(&host_dir).unwrap().count(), 0);
    assert_eq!(fs::read_dir(root.join("etc")).unwrap().count(), root_etc_before);
    // Only the real RPMs are taken; the link named like an RPM is refused, the linked
    // directory not entered.
    assert_eq!(names(&result), ["hostile-1-1.noarch.rpm", "hostile-1-1.src.rpm"]);
    assert!(
        result.refused.iter().any(|r| r.contains("shadow-1-1.noarch.rpm")),
        "{:?}",
        result.refused
    );
    assert!(
        result
            .artifacts
            .iter()
            .all(|a| fs::symlink_metadata(&a.path).unwrap().file_type().is_file())
    );
}

#[test]
fn a_build_past_its_timeout_is_killed() {
    let Some(root) = chroot_or_skip("a_build_past_its_timeout_is_killed") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let spec = "Name: slow\nVersion: 1\nRelease: 1\nSummary: x\nLicense: MIT\nBuildArch: noarch\n\
                %description\nx\n%build\nsleep 600 &\nsleep 600\n%files\n";
    let inputs = spec_inputs(tmp.path(), "slow", spec, Vec::new());
    let start = Instant::now();
    let result =
        run(&root, &tmp.path().join("job"), "test-builder-slow", &inputs, Duration::from_secs(4));
    let (kind, message) = failure_of(&result);
    assert_eq!(kind, FailureKind::Timeout, "{message}");
    assert!(start.elapsed() < Duration::from_secs(30), "the kill took {:?}", start.elapsed());
    // Nothing of the build is left running. A process SIGKILLed a moment ago may still be on
    // its way out on a loaded machine (one CI run saw one right after the kill): give the
    // kernel 5 s, far below the builds' 600 s sleeps, so a real leftover still fails here.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ps = std::process::Command::new("pgrep").args(["-f", "sleep 600"]).output().unwrap();
        if ps.stdout.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left running: {}", String::from_utf8_lossy(&ps.stdout));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dependencies_are_installed_before_the_build() {
    let Some(root) = chroot_or_skip("dependencies_are_installed_before_the_build") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dep = "Name: depa\nVersion: 1\nRelease: 1\nSummary: x\nLicense: MIT\nBuildArch: noarch\n\
               %description\nx\n%install\nmkdir -p %{buildroot}/usr/share/depa\n\
               echo 42 > %{buildroot}/usr/share/depa/marker\n%files\n/usr/share/depa/marker\n";
    let inputs = spec_inputs(tmp.path(), "depa", dep, Vec::new());
    let first = run(
        &root,
        &tmp.path().join("job-a"),
        "test-builder-depa",
        &inputs,
        Duration::from_secs(120),
    );
    assert!(matches!(first.outcome, Outcome::Succeeded), "{first:?}");
    let rpm = first.artifacts.iter().find(|a| a.name == "depa-1-1.noarch.rpm").unwrap().clone();
    let user = "Name: depb\nVersion: 1\nRelease: 1\nSummary: x\nLicense: MIT\nBuildArch: noarch\n\
                %description\nx\n%build\ntest \"$(cat /usr/share/depa/marker)\" = 42\n\
                %install\nmkdir -p %{buildroot}/usr/share/depb\ntouch %{buildroot}/usr/share/depb/x\n\
                %files\n/usr/share/depb/x\n";
    let inputs = spec_inputs(tmp.path(), "depb", user, Vec::new());
    let work = tmp.path().join("job-b");
    let without = run(&root, &work, "test-builder-depb", &inputs, Duration::from_secs(120));
    assert_eq!(failure_of(&without).0, FailureKind::Build);
    let work = tmp.path().join("job-b2");
    let with =
        run_with(&root, &work, "test-builder-depb2", &inputs, Duration::from_secs(120), &[rpm]);
    assert!(
        matches!(with.outcome, Outcome::Succeeded),
        "{with:?}\n{}",
        fs::read_to_string(&with.log).unwrap_or_default()
    );
    // The chroot's root is not changed by the install (the overlay takes it).
    assert!(!root.join("usr/share/depa").exists());
}

/// A shared library package: `libabi.so.1` exporting `f` and, in version 1 only, `g`.
fn libabi(version: &str) -> String {
    let g = if version == "1" { "int g(void) { return 2; }" } else { "" };
    format!(
        "Name: libabi\nVersion: {version}\nRelease: 1\nSummary: x\nLicense: MIT\n%description\nx\n\
         %build\nprintf '%s\\n' 'int f(void) {{ return 1; }}' '{g}' > abi.c\n\
         gcc -shared -fPIC -g -O2 -Wl,-soname,libabi.so.1 -o libabi.so.1 abi.c\n\
         %install\ninstall -D -m 0755 libabi.so.1 %{{buildroot}}/usr/lib64/libabi.so.1\n\
         %files\n/usr/lib64/libabi.so.1\n"
    )
}

#[test]
fn checks_report_with_rpmlint_and_find_abi_breaks_with_abipkgdiff() {
    let Some(root) = chroot_or_skip("checks_report_with_rpmlint_and_find_abi_breaks") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut rpms = Vec::new();
    for version in ["1", "2"] {
        let inputs =
            spec_inputs(tmp.path(), &format!("libabi{version}"), &libabi(version), Vec::new());
        let work = tmp.path().join(format!("build-{version}"));
        let built =
            run(&root, &work, &format!("test-libabi-{version}"), &inputs, Duration::from_secs(120));
        assert!(matches!(built.outcome, Outcome::Succeeded), "{built:?}");
        let rpm = built
            .artifacts
            .iter()
            .find(|a| a.name == format!("libabi-{version}-1.x86_64.rpm"))
            .unwrap_or_else(|| panic!("no libabi {version} RPM in {:?}", names(&built)))
            .clone();
        rpms.push(rpm);
    }
    let check = |check, warn_only, new: &LocalFile, baseline: &[LocalFile], tag: &str| {
        let inputs =
            Inputs::Check { check, warn_only, new: vec![new.clone()], baseline: baseline.to_vec() };
        let result = run(&root, &tmp.path().join(tag), tag, &inputs, Duration::from_secs(120));
        let log = fs::read_to_string(&result.log).unwrap_or_default();
        (result, log)
    };
    // rpmlint reports (a library package has plenty to say); warn_only keeps the job green.
    let (lint, log) = check(CheckKind::Rpmlint, true, &rpms[0], &[], "check-rpmlint");
    assert!(matches!(lint.outcome, Outcome::Succeeded), "{lint:?}\n{log}");
    assert!(log.contains("== rpmlint") && log.contains("libabi"), "{log}");
    assert!(lint.artifacts.is_empty(), "a check uploads no RPM: {:?}", names(&lint));
    // Version 2 drops `g`: abipkgdiff against version 1 fails the check...
    let (abi, log) = check(CheckKind::Abidiff, false, &rpms[1], &rpms[..1], "check-abi");
    let (kind, message) = failure_of(&abi);
    assert_eq!(kind, FailureKind::Build, "{message}");
    assert!(log.contains("libabi-1-1.x86_64.rpm -> libabi-2-1.x86_64.rpm"), "{log}");
    assert!(log.contains("g"), "{log}");
    // ...and version 1 against itself passes; with warn_only the break only warns.
    let (same, log) = check(CheckKind::Abidiff, false, &rpms[0], &rpms[..1], "check-same");
    assert!(matches!(same.outcome, Outcome::Succeeded), "{same:?}\n{log}");
    let (warned, _) = check(CheckKind::Abidiff, true, &rpms[1], &rpms[..1], "check-warn");
    assert!(matches!(warned.outcome, Outcome::Succeeded), "{warned:?}");
}
