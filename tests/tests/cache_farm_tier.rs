//! The farm tier of the object cache: two build hosts (two agents, separate local caches, two
//! build directories) share two workers. The first host's build compiles on the farm and fills
//! the tier; the second host's build is all hits from it, every object byte-identical to a local
//! compile in its own directory. Its units go in source mode with their keys
//! (`CompileSourcesCached`): each is looked up by the worker it is placed on when that worker
//! owns the key, otherwise by the agent, and no hit is counted as a miss too.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs;
use std::path::Path;
use std::time::Duration;

use discomy_tests::{
    Agent, ShowOnFailure, Worker, assert_same_objects, bin, clean_command, extract_lua, hosts_of,
    make_clean, make_lua, make_lua_with_discomy_cc, objects, outcome_counts, read_stats,
    run_to_success,
};

/// `make -C src linux` through discomy-cc (as CC) against `agent`, with its own local cache.
fn build_on_host(tree: &Path, scratch: &Path, agent: &Agent, host: &str) -> Vec<(String, usize)> {
    let stats = scratch.join(format!("{host}.stats"));
    let mut cmd =
        make_lua_with_discomy_cc(tree, &agent.socket, &scratch.join(format!("{host}-cache")));
    cmd.env("DISCOMY_CACHE", "1").env("DISCOMY_STATS_FILE", &stats);
    run_to_success(&format!("make-{host}"), &mut cmd, scratch);
    let lines: Vec<_> = read_stats(&stats).into_iter().filter(|l| l.is_compile()).collect();
    outcome_counts(&lines).into_iter().collect()
}

#[test]
fn cache_farm_tier() {
    let tmp = tempfile::tempdir().unwrap();
    let workers =
        [Worker::start(tmp.path(), "worker0", 2), Worker::start(tmp.path(), "worker1", 2)];
    let hosts = hosts_of(&workers);
    let agent_a = Agent::start(tmp.path(), "agent-a", &hosts);
    let agent_b = Agent::start(tmp.path(), "agent-b", &hosts);
    let mut show = ShowOnFailure::default();
    show.add("agent a log", &tmp.path().join("agent-a.stderr"));

    let dir_a = tmp.path().join("host-a");
    let dir_b = tmp.path().join("host-b-elsewhere");
    fs::create_dir_all(&dir_a).unwrap();
    fs::create_dir_all(&dir_b).unwrap();
    let tree_a = extract_lua(&dir_a);
    let tree_b = extract_lua(&dir_b);

    // Reference: a plain local build where host B builds.
    make_lua(&tree_b, "make-local-b", &[], tmp.path());
    let reference = objects(&tree_b.join("src"));
    make_clean(&tree_b, tmp.path());

    let a = build_on_host(&tree_a, tmp.path(), &agent_a, "host-a");
    eprintln!("[e2e] host a outcomes: {a:?}");
    assert_same_objects(&reference, &objects(&tree_a.join("src")), "host a (farm, cold cache)");
    assert!(a.iter().all(|(o, _)| o != "cache"), "host a's cache was empty: {a:?}");
    // The agent forwards stores in the background: give the last ones a moment.
    std::thread::sleep(Duration::from_millis(500));

    let b = build_on_host(&tree_b, tmp.path(), &agent_b, "host-b");
    eprintln!("[e2e] host b outcomes: {b:?}");
    assert_same_objects(&reference, &objects(&tree_b.join("src")), "host b (farm tier hits)");
    let total: usize = b.iter().map(|(_, n)| n).sum();
    assert!(total >= 30, "{b:?}");
    assert_eq!(b, vec![("cache".to_string(), total)], "host b must be all cache hits");
    let stats = clean_command(bin("discomy-cc"))
        .arg("--stats")
        .env("DISCOMY_CACHE_DIR", tmp.path().join("host-b-cache"))
        .output()
        .unwrap();
    let stats = String::from_utf8_lossy(&stats.stdout).into_owned();
    eprintln!("{stats}");
    let farm_hits = stats.lines().find(|l| l.starts_with("hits (farm tier)")).unwrap();
    assert!(farm_hits.trim_end().ends_with(&format!(" {total}")), "{farm_hits}");
    // The tier is asked with each unit (source mode): a hit there is not also a miss.
    let misses = stats.lines().find(|l| l.starts_with("misses")).unwrap();
    assert!(misses.trim_end().ends_with(" 0"), "{misses}");
}
