//! With `DISCOMY_SOCKET` pointing nowhere, discomy-cc compiles everything locally: the build
//! succeeds, objects are byte-identical, and no compile is reported as remote.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use discomy_tests::{
    MAKE_JOBS, ShowOnFailure, assert_lua_runs, assert_no_temp_leftovers, assert_same_objects, bin,
    clean_command, extract_lua, make_clean, make_lua, objects, outcome_counts, private_tmp,
    read_stats, run_to_success,
};

#[test]
fn no_agent_compiles_locally() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = extract_lua(tmp.path());
    let stats_path = tmp.path().join("stats.tsv");
    let mut show = ShowOnFailure::default();
    show.add("wrapper stats", &stats_path);

    make_lua(&tree, "make-local", &[], tmp.path());
    let reference = objects(&tree.join("src"));
    make_clean(&tree, tmp.path());

    let wrapper_tmp = private_tmp(tmp.path(), "wrapper");
    let cc = format!("CC={} gcc -std=gnu99", bin("discomy-cc").display());
    let mut cmd = clean_command("make");
    cmd.current_dir(&tree)
        .args(["-C", "src", MAKE_JOBS, "linux", &cc])
        .env("DISCOMY_SOCKET", tmp.path().join("no-such-agent.sock"))
        .env("DISCOMY_STATS_FILE", &stats_path)
        .env("TMPDIR", &wrapper_tmp);
    run_to_success("make-no-agent", &mut cmd, tmp.path());
    assert_no_temp_leftovers(&wrapper_tmp, "discomy-cc without an agent");

    assert_same_objects(&reference, &objects(&tree.join("src")), "discomy-cc without an agent");
    assert_lua_runs(&tree);

    let stats = read_stats(&stats_path);
    eprintln!("[e2e] outcomes: {:?}", outcome_counts(&stats));
    let compiles: Vec<_> = stats.iter().filter(|l| l.is_compile()).collect();
    assert!(compiles.len() >= 30, "expected at least 30 compile lines in the stats, got {stats:?}");
    let remote: Vec<_> = stats.iter().filter(|l| l.outcome == "remote").collect();
    assert!(remote.is_empty(), "compiles reported remote without an agent: {remote:?}");
    let odd: Vec<_> =
        compiles.iter().filter(|l| !matches!(l.outcome.as_str(), "local" | "fallback")).collect();
    assert!(odd.is_empty(), "compiles neither local nor fallback: {odd:?}");
    assert!(stats.iter().all(|l| l.exit_code == 0), "non-zero exit codes in stats: {stats:?}");
}
