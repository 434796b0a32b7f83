//! The build queue end to end: `discomy submit` → the coordinator's persistent queue → builders
//! running rpmbuild in isolated chroots (the test chroot, Rocky 9's flags) → RPMs uploaded,
//! verified and downloadable, with real processes throughout.
//!
//! 1. A batch of three real packages from Debian's sources, given in the wrong order (lua-lpeg,
//!    lua-filesystem, lua): lua builds first (the other two BuildRequire its `lua-devel`), then
//!    the two modules on the two builders with lua's RPMs installed in their chroots (their
//!    `%check` runs that lua), every compile through the farm (remote units in `discomy stats`).
//!    The coordinator is killed with `kill -9` while lua builds and started again: the batch
//!    completes, and no job is lost or built to completion twice.
//! 2. Builders in network namespaces of their own, the coordinator's API on a bridge with a farm
//!    token. A builder killed with `kill -9` mid-build: its job is retried on the other. Beside
//!    it, jobs that must fail cleanly while the rest goes on: a spec with a syntax error, a spec
//!    whose source is missing, an oversized upload (refused, nothing queued), and a hostile spec
//!    that tries the network and the host's files from its chroot.
//!
//! Without the chroot (or not as root) the tests are skipped with a message, unless `CI` is set:
//! then they fail.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use discomy_tests::netns::Net;
use discomy_tests::queue::{
    Api, Builder, QueueCoordinator, RpmFarm, chroot_prerequisites, discomy_command, discomy_json,
    job_detail, package_dir, state_of, wait_for_job,
};
use discomy_tests::{agent_stats, clean_command, metrics};

const BUILD: Duration = Duration::from_secs(600);

fn prerequisites(test: &str) -> Option<(PathBuf, PathBuf)> {
    discomy_tests::or_skip(test, chroot_prerequisites())
}

const QUEUE: &str = discomy_tests::queue::FAST_QUEUE;

fn ids_of(json: &serde_json::Value) -> Vec<u64> {
    json["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect()
}

/// The events of a detail as `(seq, to, attempt, builder)`.
fn events(detail: &serde_json::Value) -> Vec<(u64, String, u64, String)> {
    detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["to"].as_str().unwrap().to_owned(),
                e["attempt"].as_u64().unwrap(),
                e["builder"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// The file names inside an RPM (`rpm2cpio | cpio -t`).
fn rpm_files(rpm: &Path) -> String {
    let out = clean_command("sh")
        .arg("-c")
        .arg("rpm2cpio \"$1\" | cpio -t --quiet")
        .arg("sh")
        .arg(rpm)
        .output()
        .unwrap();
    assert!(out.status.success(), "rpm2cpio {}", rpm.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_batch_builds_in_order_on_two_builders_through_the_farm_across_a_coordinator_kill() {
    let Some((root, sources)) = prerequisites("build_queue batch") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let farm = RpmFarm::start(dir, &root);
    let mut coordinator = QueueCoordinator::start(dir, QUEUE);
    let api = coordinator.api.clone();
    let farm_dirs = Some((farm.socket_dir.as_path(), farm.libexec.as_path()));
    let b1 = Builder::start(dir, "builder1", &api, &root, farm_dirs, None);
    let b2 = Builder::start(dir, "builder2", &api, &root, farm_dirs, None);

    // Given in the wrong order: the order comes from BuildRequires.
    let lpeg = package_dir(dir, "lua-lpeg", &sources.join("lpeg-1.0.2.tar.gz"));
    let lfs = package_dir(dir, "lua-filesystem", &sources.join("lua-filesystem-1.8.0.tar.gz"));
    let lua = package_dir(dir, "lua", &sources.join("lua-5.4.4.tar.gz"));
    let args = [
        "submit",
        "--batch",
        "lua-chain",
        "--chroot",
        "el9",
        "--arch",
        "x86_64",
        "--submitter",
        "release-engineering",
        "--json",
        "--package",
    ];
    let mut argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    argv.push(lpeg.display().to_string());
    argv.extend(["--package".to_owned(), lfs.display().to_string()]);
    argv.extend(["--package".to_owned(), lua.display().to_string()]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (ok, json, err) = discomy_json(&api, &argv);
    assert!(ok, "discomy submit: {err}");
    let ids = ids_of(&json);
    let (lpeg_id, lfs_id, lua_id) = (ids[0], ids[1], ids[2]);
    let detail = job_detail(&api, lpeg_id);
    assert_eq!(detail["job"]["waits_for"], serde_json::json!([lua_id]), "{detail:#}");

    // kill -9 of the coordinator while lua builds, then a restart on the same state.
    wait_for_job(&api, lua_id, BUILD, "start", |d| state_of(d) == "running");
    std::thread::sleep(Duration::from_secs(2));
    coordinator.kill9();
    eprintln!("[e2e] coordinator killed with SIGKILL while lua builds");
    std::thread::sleep(Duration::from_secs(3));
    coordinator.restart();

    let mut done = Vec::new();
    for id in [lua_id, lpeg_id, lfs_id] {
        let d = wait_for_job(&api, id, BUILD, "end", |d| {
            matches!(state_of(d), "succeeded" | "failed" | "cancelled")
        });
        assert_eq!(state_of(&d), "succeeded", "job {id}: {d:#}");
        done.push(d);
    }
    // Nothing built to completion twice; lua built in one attempt despite the kill.
    for d in &done {
        let ends = events(d).iter().filter(|e| e.1 == "succeeded").count();
        assert_eq!(ends, 1, "{d:#}");
    }
    assert_eq!(done[0]["job"]["attempt"], 1, "lua survived the coordinator's kill: {:#}", done[0]);
    let lua_end = events(&done[0]).iter().find(|e| e.1 == "succeeded").unwrap().0;
    let mut builders = std::collections::BTreeSet::new();
    for d in &done[1..] {
        let scheduled = events(d).iter().rev().find(|e| e.1 == "scheduled").unwrap().clone();
        assert!(scheduled.0 > lua_end, "started before lua was built: {d:#}");
        builders.insert(scheduled.3);
    }
    builders.insert(events(&done[0]).iter().rev().find(|e| e.1 == "scheduled").unwrap().3.clone());
    for d in &done {
        assert_eq!(d["job"]["infra_failures"], 0, "no attempt was wasted: {d:#}");
    }
    assert_eq!(builders.len(), 2, "both builders built: {builders:?}");
    let (ok, list, _) = discomy_json(&api, &["jobs", "list", "--batch", "lua-chain", "--json"]);
    assert!(ok && list.as_array().unwrap().len() == 3, "exactly three jobs: {list:#}");
    // `/metrics`: the builders ran three builds to success between them, the queue holds three
    // succeeded jobs.
    let built: f64 = [&b1, &b2]
        .iter()
        .map(|b| {
            let text = metrics::scrape(&b.metrics);
            metrics::value(&text, r#"discomy_builder_builds_total{result="succeeded"}"#)
                .unwrap_or_else(|| panic!("{}: no builds in:\n{text}", b.name))
        })
        .sum();
    assert_eq!(built, 3.0, "builds the builders counted");
    let queue = metrics::scrape(&format!("{}/metrics", api.url));
    assert_eq!(metrics::value(&queue, r#"discomy_jobs{state="succeeded"}"#), Some(3.0), "{queue}");

    // The RPMs arrived verified (the client checks blake3 and size again on download), and the
    // module's RPM holds what it built.
    let out = dir.join("download");
    let (ok, _, err) = discomy_json(
        &api,
        &[
            "submit",
            "--chroot",
            "el9",
            "--wait",
            "--download",
            out.to_str().unwrap(),
            "--json",
            lpeg.join("lua-lpeg.spec").to_str().unwrap(),
            lpeg.join("lpeg-1.0.2.tar.gz").to_str().unwrap(),
        ],
    );
    // Outside the batch lua-devel is not installed: rpmbuild --nodeps goes on, and the build fails
    // on the missing lua.h, which is what a chain build is for.
    assert!(!ok, "lpeg built without lua-devel? {err}");
    let names: Vec<String> = done[1]["job"]["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.iter().any(|n| n == "build.log"), "{names:?}");
    let rpm = names.iter().find(|n| n.starts_with("lua-lpeg-1.0.2") && n.ends_with("x86_64.rpm"));
    let rpm = rpm.unwrap_or_else(|| panic!("no lua-lpeg RPM in {names:?}"));
    let got = dir.join("lpeg-rpms");
    let (ok, _, err) = discomy_json(
        &api,
        &["jobs", "download", &lpeg_id.to_string(), "--dir", got.to_str().unwrap()],
    );
    assert!(ok, "discomy jobs download: {err}");
    let files = rpm_files(&got.join(rpm));
    assert!(files.contains("/usr/lib64/lua/5.4/lpeg.so"), "{files}");
    let log = fs::read_to_string(got.join("build.log")).unwrap();
    assert!(log.contains("lpeg\t1.0.2"), "the %check with the batch's lua did not run:\n{log}");

    // The compiles went through the farm.
    let stats = agent_stats(&farm.socket);
    let remote = stats["remote"].as_u64().unwrap_or(0);
    eprintln!("[e2e] agent after the batch: {stats}");
    assert!(remote >= 20, "only {remote} remote units: {stats}");
    drop(farm.agent);
}

/// A package directory holding only `spec` (named `NAME.spec`) and `extra` files.
fn spec_package(dir: &Path, name: &str, spec: &str, extra: &[(&str, Vec<u8>)]) -> PathBuf {
    let pkg = dir.join("packages").join(name);
    fs::create_dir_all(&pkg).unwrap();
    fs::write(pkg.join(format!("{name}.spec")), spec).unwrap();
    for (file, bytes) in extra {
        fs::write(pkg.join(file), bytes).unwrap();
    }
    pkg
}

fn submit_package(api: &Api, pkg: &Path) -> (bool, serde_json::Value, String) {
    let pkg = pkg.to_str().unwrap();
    discomy_json(
        api,
        &["submit", "--chroot", "el9", "--json", "--submitter", "qa", "--package", pkg],
    )
}

fn failure_of(detail: &serde_json::Value) -> (String, String) {
    let f = &detail["job"]["failure"];
    (f["kind"].as_str().unwrap_or("").to_owned(), f["message"].as_str().unwrap_or("").to_owned())
}

const BROKEN_SPEC: &str = "Name: broken\nVersion 1.0\nRelease: 1\nSummary: x\nLicense: MIT\n\
%description\nx\n%files\n";

const MISSING_SOURCE_SPEC: &str = "Name: missing\nVersion: 1.0\nRelease: 1\nSummary: x\n\
License: MIT\nSource0: missing-1.0.tar.gz\n%description\nx\n%prep\n%autosetup\n%files\n";

/// Tries the network (the coordinator's API, which its builder reaches) and the host's files (through
/// `/proc/1/root`, the PID namespace's first process, and `/etc`); exits 1 if any attempt worked,
/// so a contained build succeeds and says what it tried.
fn hostile_spec(host: &str, port: u16, marker: &Path) -> String {
    format!(
        "Name: hostile\nVersion: 1.0\nRelease: 1\nSummary: x\nLicense: MIT\nBuildArch: noarch\n\
%description\nx\n%build\n\
if (exec 3<>/dev/tcp/{host}/{port}) 2>/dev/null; then echo 'network: REACHED'; exit 1; fi\n\
echo 'network: unreachable'\n\
if echo pwned >/proc/1/root{marker} 2>/dev/null; then echo 'host: WRITTEN'; exit 1; fi\n\
if echo pwned >/etc/hostile-was-here 2>/dev/null; then echo 'etc: WRITTEN'; exit 1; fi\n\
echo 'host: protected'\n\
%install\nmkdir -p %{{buildroot}}/usr/share/hostile\necho ok >%{{buildroot}}/usr/share/hostile/ok\n\
%files\n/usr/share/hostile/ok\n",
        marker = marker.display()
    )
}

#[test]
fn a_killed_builder_loses_its_job_to_another_and_bad_jobs_fail_cleanly() {
    let Some((root, sources)) = prerequisites("build_queue builder kill") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Builders are hosts of their own (network namespaces on a bridge); the coordinator's API is
    // on the bridge's address, with a farm token.
    let net = match Net::create(78, 2) {
        Ok(net) => net,
        Err(why) if std::env::var_os("CI").is_none_or(|v| v.is_empty()) => {
            eprintln!("[e2e] SKIPPED build_queue builder kill: no network namespaces: {why}");
            return;
        }
        Err(why) => panic!("network namespaces are needed under CI: {why}"),
    };
    let coordinator =
        QueueCoordinator::start_on(dir, &net.host_addr(), Some("queue-test-token"), QUEUE);
    let api = coordinator.api.clone();
    let port: u16 = api.url.rsplit(':').next().unwrap().parse().unwrap();
    let anonymous = Api { token_file: None, ..api.clone() };
    let (ok, _, err) = discomy_json(&anonymous, &["jobs", "list", "--json"]);
    assert!(!ok && err.contains("401"), "no token, not on loopback: {err}");

    // Only builder1 at first: lua goes to it, and it dies mid-build.
    let b1 = Builder::start(dir, "builder1", &api, &root, None, Some(&net.spaces[0]));
    let lua = package_dir(dir, "lua", &sources.join("lua-5.4.4.tar.gz"));
    let (ok, json, err) = submit_package(&api, &lua);
    assert!(ok, "{err}");
    let lua_id = ids_of(&json)[0];
    wait_for_job(&api, lua_id, BUILD, "start", |d| state_of(d) == "running");
    std::thread::sleep(Duration::from_secs(2));
    discomy_tests::signal_group(b1.proc.pid(), "KILL");
    let killed_at = Instant::now();
    eprintln!("[e2e] builder1 killed with SIGKILL while lua builds");
    let _b2 = Builder::start(dir, "builder2", &api, &root, None, Some(&net.spaces[1]));

    // Jobs that must fail on their own while the rest goes on.
    let broken = spec_package(dir, "broken", BROKEN_SPEC, &[]);
    let missing = spec_package(dir, "missing", MISSING_SOURCE_SPEC, &[]);
    let marker = dir.join("escaped-from-the-chroot");
    let hostile = spec_package(dir, "hostile", &hostile_spec(&net.host_addr(), port, &marker), &[]);
    let huge =
        spec_package(dir, "huge", MISSING_SOURCE_SPEC, &[("huge.tar.gz", vec![7u8; 9 << 20])]);
    let mut ids = Vec::new();
    for pkg in [&broken, &missing, &hostile] {
        let (ok, json, err) = submit_package(&api, pkg);
        assert!(ok, "{}: {err}", pkg.display());
        ids.push(ids_of(&json)[0]);
    }
    // A dist-git repository at a ref: its spec and the files beside it become the job.
    let git = |args: &[&str]| {
        let out = clean_command("git").args(args).current_dir(&lua).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    git(&["init", "-q", "-b", "c9s"]);
    git(&["add", "."]);
    git(&["-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "lua"]);
    let url = format!("file://{}", lua.display());
    let (ok, json, err) = discomy_json(
        &api,
        &["submit", "--chroot", "el9", "--json", "--priority", "-5", "--git", &url, "--ref", "c9s"],
    );
    assert!(ok, "discomy submit --git: {err}");
    let git_id = ids_of(&json)[0];
    let d = job_detail(&api, git_id);
    assert_eq!(d["job"]["source"]["kind"], "spec", "{d:#}");
    assert_eq!(d["job"]["source"]["spec"]["name"], "lua.spec", "{d:#}");
    assert_eq!(d["job"]["source"]["sources"][0]["name"], "lua-5.4.4.tar.gz", "{d:#}");
    assert!(d["job"]["provides"].as_array().unwrap().iter().any(|p| p == "lua-devel"), "{d:#}");
    let (ok, _, err) = discomy_json(&api, &["jobs", "cancel", &git_id.to_string()]);
    assert!(ok, "discomy jobs cancel: {err}");
    assert_eq!(state_of(&job_detail(&api, git_id)), "cancelled");

    let (ok, _, err) = submit_package(&api, &huge);
    assert!(!ok && err.contains("413"), "a 9 MiB source past the 8 MiB limit: {err}");
    let (_, list, _) = discomy_json(&api, &["jobs", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 5, "the refused upload queued nothing: {list:#}");

    let lua_done = wait_for_job(&api, lua_id, BUILD, "end", |d| state_of(d) == "succeeded");
    eprintln!("[e2e] lua rebuilt {:.1?} after builder1's death", killed_at.elapsed());
    assert_eq!(lua_done["job"]["attempt"], 2, "{lua_done:#}");
    assert_eq!(lua_done["job"]["infra_failures"], 1, "{lua_done:#}");
    assert_eq!(lua_done["job"]["builder"], "builder2", "{lua_done:#}");
    let history = events(&lua_done);
    assert!(
        lua_done["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["detail"].as_str().unwrap_or("").contains("builder1 stopped reporting")),
        "{history:?}"
    );

    let end = |id| {
        wait_for_job(&api, id, BUILD, "end", |d| {
            matches!(state_of(d), "succeeded" | "failed" | "cancelled")
        })
    };
    let (b, m, h) = (end(ids[0]), end(ids[1]), end(ids[2]));
    let (kind, message) = failure_of(&b);
    assert_eq!((state_of(&b), kind.as_str()), ("failed", "build"), "{b:#}");
    assert!(message.contains("rpmbuild") || message.contains("error"), "{message}");
    assert_eq!(b["job"]["attempt"], 1, "a build failure is not retried: {b:#}");
    let (kind, message) = failure_of(&m);
    assert_eq!((state_of(&m), kind.as_str()), ("failed", "build"), "{m:#}");
    assert!(message.contains("missing-1.0.tar.gz"), "{message}");
    assert_eq!(state_of(&h), "succeeded", "the hostile spec was not contained: {h:#}");
    let (ok, log, _) = {
        let out = discomy_command(&api, &["jobs", "logs", &ids[2].to_string()]).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), ())
    };
    assert!(ok && log.contains("network: unreachable") && log.contains("host: protected"), "{log}");
    assert!(!marker.exists(), "the build wrote {} on the host", marker.display());
    assert!(!root.join("etc/hostile-was-here").exists(), "the build wrote into the chroot's root");
    drop(b1);
}
