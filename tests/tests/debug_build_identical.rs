//! Lua with `MYCFLAGS=-g` through `discomy run --local-farm 2` is byte-identical (debug info
//! included, with gcc's default `-grecord-gcc-switches`) to a plain local `-g` build in the same
//! directory, and every unit compiles remotely (source mode).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use discomy_tests::{
    BUILD_TIMEOUT, MAKE_JOBS, Proc, ShowOnFailure, assert_lua_runs, assert_no_temp_leftovers,
    assert_same_objects, discomy_run, extract_lua, make_clean, make_lua, objects, read_summary,
};

#[test]
fn debug_build_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = extract_lua(tmp.path());
    let summary_path = tmp.path().join("summary.json");
    let mut show = ShowOnFailure::default();
    show.add("discomy run summary", &summary_path);

    make_lua(&tree, "make-local-g", &["MYCFLAGS=-g"], tmp.path());
    let reference = objects(&tree.join("src"));
    make_clean(&tree, tmp.path());

    let mut cmd = discomy_run(&tree, tmp.path());
    cmd.args(["--local-farm", "2", "--summary-json"]).arg(&summary_path).args([
        "--",
        "make",
        "-C",
        "src",
        MAKE_JOBS,
        "linux",
        "MYCFLAGS=-g",
    ]);
    let mut run = Proc::spawn("discomy-run-g", &mut cmd, tmp.path());
    let status = run.wait_timeout(BUILD_TIMEOUT);
    assert!(status.success(), "discomy run make MYCFLAGS=-g failed ({status})");
    assert!(!run.left_processes_behind(), "discomy run left processes running after it exited");
    assert_no_temp_leftovers(&tmp.path().join("discomy-run-tmpdir"), "discomy run");

    assert_same_objects(&reference, &objects(&tree.join("src")), "discomy run, MYCFLAGS=-g");
    assert_lua_runs(&tree);

    let s = read_summary(&summary_path);
    eprintln!("[e2e] summary: {}", s.raw.trim());
    assert!(s.units >= 30, "expected at least 30 units, summary: {}", s.raw);
    assert_eq!(s.failed, 0, "failed units in summary: {}", s.raw);
    // gcc records its command line in the debug info by default: only source mode (the build's
    // own command over the files its preprocessor read) reproduces that, and it must be used.
    assert_eq!(s.remote, s.units, "every -g unit should compile remotely: {}", s.raw);
}
