//! Lua with Rocky Linux's compile flags (`%optflags` without the redhat specs files, which
//! Debian lacks: `-O2 -g -grecord-gcc-switches -Wp,-D_FORTIFY_SOURCE=2 -fstack-protector-strong
//! -fcf-protection …`) plus `-MD`, through `discomy run --local-farm 2`: objects (debug info and
//! recorded command line included) and dependency files are byte-identical to a plain local
//! build in the same directory, and every unit compiles remotely (source mode, found by the
//! include scanner, dependency files written remotely).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::Path;

use discomy_tests::{
    BUILD_TIMEOUT, MAKE_JOBS, Proc, ShowOnFailure, assert_lua_runs, assert_no_temp_leftovers,
    assert_same_objects, discomy_run, extract_lua, make_clean, make_lua, objects, read_summary,
};

/// Rocky Linux 9's `%optflags` for x86_64, minus the `-specs=/usr/lib/rpm/redhat/…` files and
/// `-flto=auto -ffat-lto-objects` (LTO objects carry random section names: two local compiles
/// already differ, so LTO compiles stay local).
const ROCKY_FLAGS: &str = "MYCFLAGS=-O2 -fexceptions -g \
    -grecord-gcc-switches -pipe -Wall -Werror=format-security -Wp,-D_FORTIFY_SOURCE=2 \
    -Wp,-D_GLIBCXX_ASSERTIONS -fstack-protector-strong -m64 -march=x86-64-v2 -mtune=generic \
    -fasynchronous-unwind-tables -fstack-clash-protection -fcf-protection -MD";

/// The dependency files in `dir`, removed afterwards (`make clean` leaves them).
fn take_dep_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "d") {
            out.insert(
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(&path).unwrap(),
            );
            std::fs::remove_file(&path).unwrap();
        }
    }
    out
}

#[test]
fn debug_build_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = extract_lua(tmp.path());
    let summary_path = tmp.path().join("summary.json");
    let mut show = ShowOnFailure::default();
    show.add("discomy run summary", &summary_path);

    make_lua(&tree, "make-local-g", &[ROCKY_FLAGS], tmp.path());
    let reference = objects(&tree.join("src"));
    let reference_deps = take_dep_files(&tree.join("src"));
    assert!(reference_deps.len() >= 30, "-MD wrote {} dependency files", reference_deps.len());
    make_clean(&tree, tmp.path());

    let mut cmd = discomy_run(&tree, tmp.path());
    cmd.args(["--local-farm", "2", "--summary-json"]).arg(&summary_path).args([
        "--",
        "make",
        "-C",
        "src",
        MAKE_JOBS,
        "linux",
        ROCKY_FLAGS,
    ]);
    let mut run = Proc::spawn("discomy-run-g", &mut cmd, tmp.path());
    let status = run.wait_timeout(BUILD_TIMEOUT);
    assert!(status.success(), "discomy run make with Rocky flags failed ({status})");
    assert!(!run.left_processes_behind(), "discomy run left processes running after it exited");
    assert_no_temp_leftovers(&tmp.path().join("discomy-run-tmpdir"), "discomy run");

    assert_same_objects(&reference, &objects(&tree.join("src")), "discomy run, Rocky flags");
    assert_same_objects(&reference_deps, &take_dep_files(&tree.join("src")), "dependency files");
    assert_lua_runs(&tree);

    let s = read_summary(&summary_path);
    eprintln!("[e2e] summary: {}", s.raw.trim());
    assert!(s.units >= 30, "expected at least 30 units, summary: {}", s.raw);
    assert_eq!(s.failed, 0, "failed units in summary: {}", s.raw);
    // gcc records its command line in the debug info by default: only source mode (the build's
    // own command over the files its preprocessor read) reproduces that, and it must be used.
    assert_eq!(s.remote, s.units, "every -g unit should compile remotely: {}", s.raw);
}
