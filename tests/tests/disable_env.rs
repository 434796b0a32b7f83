//! `DISCOMY_DISABLE=1` keeps every compile local, even with a working farm.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use discomy_tests::{
    Farm, MAKE_JOBS, ShowOnFailure, assert_lua_runs, assert_no_temp_leftovers, bin, capture,
    clean_command, extract_lua, outcome_counts, private_tmp, read_stats, run_to_success,
};

#[test]
fn disable_env() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = extract_lua(tmp.path());
    let src = tree.join("src");
    let mut farm = Farm::start(tmp.path(), 1, 2);
    let probe_stats = tmp.path().join("probe-stats.tsv");
    let stats_path = tmp.path().join("stats.tsv");
    let wrapper_tmp = private_tmp(tmp.path(), "wrapper");
    let mut show = ShowOnFailure::default();
    show.add("probe stats", &probe_stats);
    show.add("wrapper stats", &stats_path);

    // Control: the same farm takes a compile when not disabled.
    let mut probe = clean_command(bin("discomy-cc"));
    probe
        .args(["gcc", "-std=gnu99", "-O2", "-DLUA_USE_LINUX", "-c", "lapi.c", "-o", "probe.o"])
        .env("DISCOMY_SOCKET", &farm.agent.socket)
        .env("DISCOMY_STATS_FILE", &probe_stats)
        .env("TMPDIR", &wrapper_tmp);
    let got = capture(&src, &mut probe);
    assert_eq!(got.code, Some(0), "probe compile failed: {}", String::from_utf8_lossy(&got.stderr));
    let lines = read_stats(&probe_stats);
    assert!(
        lines.len() == 1 && lines[0].outcome == "remote",
        "control compile without DISCOMY_DISABLE did not run remotely: {lines:?}"
    );

    let cc = format!("CC={} gcc -std=gnu99", bin("discomy-cc").display());
    let mut cmd = clean_command("make");
    cmd.current_dir(&tree)
        .args(["-C", "src", MAKE_JOBS, "linux", &cc])
        .env("DISCOMY_SOCKET", &farm.agent.socket)
        .env("DISCOMY_DISABLE", "1")
        .env("DISCOMY_STATS_FILE", &stats_path)
        .env("TMPDIR", &wrapper_tmp);
    run_to_success("make-disabled", &mut cmd, tmp.path());
    assert_no_temp_leftovers(&wrapper_tmp, "discomy-cc");
    assert_lua_runs(&tree);
    farm.assert_alive();

    let stats = read_stats(&stats_path);
    eprintln!("[e2e] outcomes: {:?}", outcome_counts(&stats));
    let compiles: Vec<_> = stats.iter().filter(|l| l.is_compile()).collect();
    assert!(compiles.len() >= 30, "expected at least 30 compile lines in the stats, got {stats:?}");
    let not_local: Vec<_> = compiles.iter().filter(|l| l.outcome != "local").collect();
    assert!(not_local.is_empty(), "compiles not local with DISCOMY_DISABLE=1: {not_local:?}");
    let distributed: Vec<_> =
        stats.iter().filter(|l| matches!(l.outcome.as_str(), "remote" | "fallback")).collect();
    assert!(
        distributed.is_empty(),
        "distribution attempted with DISCOMY_DISABLE=1: {distributed:?}"
    );
}
