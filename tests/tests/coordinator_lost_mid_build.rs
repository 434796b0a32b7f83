//! The compile farm survives its coordinator (issue 15). An agent with no host list builds Lua
//! through a coordinator and two workers; the coordinator is killed with SIGKILL mid-build.
//!
//! - `agent_keeps_placing_on_the_remembered_farm`: the units after the kill still run on the
//!   workers the agent remembers from the coordinator (its `remembered_farm` counters, not its
//!   log), the objects are identical to a local build, and when the coordinator comes back the
//!   agent joins it again.
//! - `agent_fails_over_to_the_farms_other_coordinator`: two coordinators of one farm, workers
//!   in both, the agent given both (`DISCOMY_COORDINATOR=a,b`); the first is killed and the
//!   agent's units are placed by the second.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::Path;
use std::time::{Duration, Instant};

use discomy_tests::{
    Agent, BUILD_TIMEOUT, Proc, Worker, agent_stats, assert_lua_runs, assert_same_objects,
    farm_status, lua_with_reference, make_lua_with_discomy_cc, objects, signal_group,
    start_coordinator, wait_nodes,
};
use serde_json::Value;

/// Remote units the agent must have counted before the coordinator is killed.
const REMOTE_BEFORE_KILL: u64 = 4;

/// Two 2-slot workers that joined the coordinators `coordinators` (comma-separated).
fn two_workers(dir: &Path, coordinators: &str) -> Vec<Worker> {
    (0..2)
        .map(|i| {
            Worker::start_with(dir, &format!("worker{i}"), 2, &["--coordinator", coordinators])
        })
        .collect()
}

/// An agent with no host list, asking the coordinators `coordinators`; waits until it joined.
fn coordinated_agent(dir: &Path, coordinators: &str) -> Agent {
    let agent = Agent::start_with(dir, "agent", "", &[("DISCOMY_COORDINATOR", coordinators)], &[]);
    wait_for(&agent, "join a coordinator", Duration::from_secs(20), |s| {
        s["coordinator_joined"] == true && s["remembered_farm"]["workers"] == 2
    });
    agent
}

/// Polls the agent's counters until `ready` holds; fails the test after `within`.
fn wait_for(agent: &Agent, what: &str, within: Duration, ready: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let stats = agent_stats(&agent.socket);
        if ready(&stats) {
            return stats;
        }
        assert!(start.elapsed() < within, "the agent did not {what} within {within:?}: {stats}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Lua build with `discomy-cc` against `agent`, object cache off (every unit goes to the
/// farm).
fn build(tree: &Path, scratch: &Path, agent: &Agent) -> Proc {
    let mut cmd = make_lua_with_discomy_cc(tree, &agent.socket, &scratch.join("cache"));
    cmd.env("DISCOMY_CACHE", "0");
    Proc::spawn("make", &mut cmd, scratch)
}

/// Waits until `REMOTE_BEFORE_KILL` units came back from the farm, then SIGKILLs `coord`'s
/// process group; returns the agent's counters at that moment.
fn kill_mid_build(agent: &Agent, run: &mut Proc, coord: &mut Proc) -> Value {
    let start = Instant::now();
    let at_kill = loop {
        let stats = agent_stats(&agent.socket);
        if stats["remote"].as_u64().unwrap_or(0) >= REMOTE_BEFORE_KILL {
            break stats;
        }
        assert!(run.try_wait().is_none(), "the build ended before the coordinator was killed");
        assert!(start.elapsed() < Duration::from_secs(120), "no remote unit within 120 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(signal_group(coord.pid(), "KILL"), "kill -9 of the coordinator failed");
    coord.wait_timeout(Duration::from_secs(10));
    eprintln!(
        "[e2e] coordinator killed after {:.1?}: {} units, {} remote",
        start.elapsed(),
        at_kill["units"],
        at_kill["remote"]
    );
    at_kill
}

/// `(units, remote)` reported after the kill, from the counters at the kill and at the end.
fn after_kill(at_kill: &Value, end: &Value) -> (u64, u64) {
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    (n(end, "units") - n(at_kill, "units"), n(end, "remote") - n(at_kill, "remote"))
}

/// Asserts that most units after the kill (at least 80 %, and at least 10) ran remotely.
fn assert_mostly_remote(at_kill: &Value, end: &Value) {
    let (units, remote) = after_kill(at_kill, end);
    eprintln!("[e2e] after the kill: {remote} of {units} units remote");
    assert!(units >= 10, "too few units after the kill to tell ({units}): {end}");
    assert!(remote * 5 >= units * 4, "only {remote} of {units} units remote after the kill: {end}");
    assert_eq!(end["failed"], 0, "{end}");
}

#[test]
fn agent_keeps_placing_on_the_remembered_farm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tree, src, reference) = lua_with_reference(tmp.path());
    let (mut coord, addr) = start_coordinator(tmp.path(), "coordinator", "127.0.0.1:0", &[]);
    let caddr = addr.to_string();
    let workers = two_workers(tmp.path(), &caddr);
    wait_nodes(addr, 2, Duration::from_secs(20));
    let mut agent = coordinated_agent(tmp.path(), &caddr);

    let started = Instant::now();
    let mut run = build(&tree, tmp.path(), &agent);
    let at_kill = kill_mid_build(&agent, &mut run, &mut coord);
    let status = run.wait_timeout(BUILD_TIMEOUT);
    assert!(status.success(), "the build failed:\n{}", run.logs(60));
    eprintln!("[e2e] build done in {:.1?}", started.elapsed());
    assert_same_objects(&reference, &objects(&src), "build with the coordinator killed");
    assert_lua_runs(&tree);

    let end = agent_stats(&agent.socket);
    eprintln!(
        "[e2e] agent after the build: {} units, {} remote, remembered farm {}",
        end["units"], end["remote"], end["remembered_farm"]
    );
    assert_mostly_remote(&at_kill, &end);
    let remembered = &end["remembered_farm"];
    let placed = remembered["placed"].as_u64().unwrap_or(0);
    let (units, _) = after_kill(&at_kill, &end);
    // Units in flight at the kill finished where the coordinator had placed them.
    assert!(placed + 4 >= units, "only {placed} of {units} units placed from memory: {end}");
    assert!(remembered["remote"].as_u64() >= Some(placed * 4 / 5), "{end}");
    assert_eq!(remembered["coordinator_lost"], 1, "{end}");
    assert_eq!(end["coordinator_joined"], false, "{end}");

    // The coordinator comes back on its address: the agent joins it again.
    let (_coord, again) = start_coordinator(tmp.path(), "coordinator-again", &caddr, &[]);
    assert_eq!(again, addr);
    wait_for(&agent, "join the coordinator again", Duration::from_secs(10), |s| {
        s["coordinator_joined"] == true && s["remembered_farm"]["coordinator"] == caddr.as_str()
    });
    assert!(agent.proc.try_wait().is_none(), "the agent died");
    drop(workers);
}

#[test]
fn agent_fails_over_to_the_farms_other_coordinator() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tree, src, reference) = lua_with_reference(tmp.path());
    let (mut first, first_addr) = start_coordinator(tmp.path(), "coord-a", "127.0.0.1:0", &[]);
    let (_second, second_addr) = start_coordinator(tmp.path(), "coord-b", "127.0.0.1:0", &[]);
    let both = format!("{first_addr},{second_addr}");
    let workers = two_workers(tmp.path(), &both);
    for addr in [first_addr, second_addr] {
        wait_nodes(addr, 2, Duration::from_secs(20));
    }
    let agent = coordinated_agent(tmp.path(), &both);
    assert_eq!(
        agent_stats(&agent.socket)["remembered_farm"]["coordinator"],
        first_addr.to_string()
    );

    let mut run = build(&tree, tmp.path(), &agent);
    let at_kill = kill_mid_build(&agent, &mut run, &mut first);
    let status = run.wait_timeout(BUILD_TIMEOUT);
    assert!(status.success(), "the build failed:\n{}", run.logs(60));
    assert_same_objects(&reference, &objects(&src), "build with one of two coordinators killed");

    let end = agent_stats(&agent.socket);
    eprintln!(
        "[e2e] agent after the build: {} units, {} remote, remembered farm {}",
        end["units"], end["remote"], end["remembered_farm"]
    );
    assert_mostly_remote(&at_kill, &end);
    let remembered = &end["remembered_farm"];
    assert_eq!(remembered["failovers"], 1, "{end}");
    assert_eq!(remembered["coordinator"], second_addr.to_string(), "{end}");
    assert_eq!(end["coordinator_joined"], true, "{end}");
    // The second coordinator placed the units after the kill.
    let farm = farm_status(second_addr, None).expect("discomy status of the second coordinator");
    let placed_by_second: u64 = farm["nodes"]
        .as_array()
        .map(|nodes| nodes.iter().filter_map(|n| n["placed_total"].as_u64()).sum())
        .unwrap_or(0);
    let (units, _) = after_kill(&at_kill, &end);
    eprintln!(
        "[e2e] second coordinator placed {placed_by_second} units; {} placed from memory",
        remembered["placed"]
    );
    assert!(placed_by_second * 2 >= units, "{placed_by_second} of {units} via the second: {farm}");
    drop(workers);
}
