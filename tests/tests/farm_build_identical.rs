//! Lua built through `discomy run --local-farm 2` is byte-identical to a plain local build in the
//! same directory, and most of it really ran on the farm.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use discomy_tests::{
    BUILD_TIMEOUT, MAKE_JOBS, Proc, ShowOnFailure, assert_lua_runs, assert_no_temp_leftovers,
    assert_same_objects, discomy_run, extract_lua, make_clean, make_lua, objects, read_summary,
};

#[test]
fn farm_build_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = extract_lua(tmp.path());
    let summary_path = tmp.path().join("summary.json");
    let mut show = ShowOnFailure::default();
    show.add("discomy run summary", &summary_path);

    make_lua(&tree, "make-local", &[], tmp.path());
    let reference = objects(&tree.join("src"));
    make_clean(&tree, tmp.path());

    let mut cmd = discomy_run(&tree, tmp.path());
    cmd.args(["--local-farm", "2", "--summary-json"])
        .arg(&summary_path)
        .args(["--", "make", "-C", "src", MAKE_JOBS, "linux"]);
    let mut run = Proc::spawn("discomy-run", &mut cmd, tmp.path());
    let status = run.wait_timeout(BUILD_TIMEOUT);
    assert!(status.success(), "discomy run make failed ({status})");
    assert!(!run.left_processes_behind(), "discomy run left processes running after it exited");
    assert_no_temp_leftovers(&tmp.path().join("discomy-run-tmpdir"), "discomy run");

    assert_same_objects(&reference, &objects(&tree.join("src")), "discomy run --local-farm 2");
    assert_lua_runs(&tree);

    let s = read_summary(&summary_path);
    eprintln!("[e2e] summary: {}", s.raw.trim());
    assert!(s.units >= 30, "expected at least 30 units, summary: {}", s.raw);
    assert!(s.remote >= s.units / 2, "expected at least half the units remote, summary: {}", s.raw);
    assert_eq!(s.failed, 0, "failed units in summary: {}", s.raw);
}

/// LTO links through `discomy run` run as many LTRANS units at once as the embedded farm has
/// slots (gcc's own count would be the host's cores); a value the user set is kept.
#[test]
fn ltrans_jobs_follow_the_farm_s_slots() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let seen = |preset: Option<&str>| {
        let out = tmp.path().join("jobs");
        let mut cmd = discomy_run(tmp.path(), tmp.path());
        if let Some(v) = preset {
            cmd.env("DISCOMY_LTRANS_JOBS", v);
        }
        cmd.args(["--local-farm", "2", "--slots", "3", "--", "sh", "-c"])
            .arg(format!("printf %s \"$DISCOMY_LTRANS_JOBS\" > '{}'", out.display()));
        let mut run = Proc::spawn("discomy-run-jobs", &mut cmd, tmp.path());
        assert!(run.wait_timeout(BUILD_TIMEOUT).success(), "{}", run.logs(20));
        std::fs::read_to_string(&out).expect("the command wrote the value")
    };
    assert_eq!(seen(None), "6", "2 workers of 3 slots");
    assert_eq!(seen(Some("40")), "40");
}
