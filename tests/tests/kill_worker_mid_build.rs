//! A worker killed with SIGKILL (with its compilers) in the middle of a build, while it is
//! compiling: the build still succeeds, and every object is byte-identical to a local build.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use discomy_tests::{
    BUILD_TIMEOUT, MAKE_JOBS, Proc, ShowOnFailure, Worker, assert_lua_runs,
    assert_no_temp_leftovers, assert_same_objects, discomy_run, extract_lua, hosts_of, make_clean,
    make_lua, objects, read_summary,
};

#[test]
fn kill_worker_mid_build() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = extract_lua(tmp.path());
    let src = tree.join("src");
    let summary_path = tmp.path().join("summary.json");
    let mut show = ShowOnFailure::default();
    show.add("discomy run summary", &summary_path);

    make_lua(&tree, "make-local", &[], tmp.path());
    let reference = objects(&src);
    make_clean(&tree, tmp.path());

    let mut workers =
        vec![Worker::start(tmp.path(), "worker0", 2), Worker::start(tmp.path(), "worker1", 2)];
    let hosts = hosts_of(&workers);

    let mut cmd = discomy_run(&tree, tmp.path());
    cmd.args(["--hosts", &hosts, "--summary-json"])
        .arg(&summary_path)
        .args(["--", "make", "-C", "src", MAKE_JOBS, "linux"]);
    let mut run = Proc::spawn("discomy-run", &mut cmd, tmp.path());

    // Kill once the build is under way: a second in, and worker0 in the middle of a compile.
    let start = Instant::now();
    loop {
        assert!(
            run.try_wait().is_none(),
            "the build finished before worker0 was seen compiling anything"
        );
        let in_flight = workers[0].units_in_flight();
        if start.elapsed() >= Duration::from_secs(1) && in_flight > 0 {
            eprintln!(
                "[e2e] {} objects and {in_flight} units in flight on worker0 after {:.1?}: killing it",
                objects(&src).len(),
                start.elapsed()
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "worker0 had no unit in flight within 120 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let victim = &mut workers[0];
    let killed = Command::new("kill")
        .args(["-9", "--", &format!("-{}", victim.proc.pid())])
        .stdin(Stdio::null())
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -9 of worker0's process group failed");
    let status = victim.proc.wait_timeout(Duration::from_secs(10));
    eprintln!("[e2e] worker0 ended: {status}");

    let status = run.wait_timeout(BUILD_TIMEOUT);
    assert!(status.success(), "the build failed after a worker was killed ({status})");
    assert!(!run.left_processes_behind(), "discomy run left processes running after it exited");
    assert_no_temp_leftovers(&tmp.path().join("discomy-run-tmpdir"), "discomy run");
    assert!(workers[1].proc.try_wait().is_none(), "the surviving worker died");

    assert_same_objects(&reference, &objects(&src), "build with a worker killed midway");
    assert_lua_runs(&tree);

    let s = read_summary(&summary_path);
    eprintln!("[e2e] summary: {}", s.raw.trim());
    assert!(s.units >= 30, "expected at least 30 units, summary: {}", s.raw);
    assert_eq!(s.failed, 0, "failed units in summary: {}", s.raw);
    assert!(s.remote > 0, "nothing ran remotely, summary: {}", s.raw);
}
