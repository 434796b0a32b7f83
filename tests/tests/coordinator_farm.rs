//! A coordinated farm on loopback: a coordinator, three workers that join it on their own, and
//! `discomy run` whose agent asks the coordinator where each unit runs.
//!
//! - `build_through_coordinator_survives_node_kill_and_coordinator_restart`: Lua builds with
//!   objects identical to a local build although one worker is SIGKILLed and the coordinator is
//!   restarted mid-build; the surviving workers re-register on their own.
//! - `stopped_workers_lose_their_units_then_get_them_hedged`: a worker SIGSTOPped just as it
//!   starts a unit leaves the agent's connection for that unit open and silent. In a first build
//!   (no measured costs, so no hedging) the worker is out of the farm once its reports are
//!   overdue (`--node-timeout 45` here), and its unit is placed again and sent to the agent as a
//!   hedge. In the rebuild
//!   (costs and speeds known) another stopped worker's units are hedged: it ends before the
//!   deadline. Both
//!   builds end with identical objects; without either mechanism the agent would wait for its
//!   600 s per-unit limit.
//! - `refusals_are_clear`: a peer without the farm token, and a worker advertising an address the
//!   coordinator cannot reach, are refused with a message that says why.
//! - `quarantined_nodes_leave_the_farm_for_good`: an agent's `Quarantine` of a node (its
//!   verification found a wrong object) drops the node at once and keeps its worker out.
//! - `a_node_cannot_claim_its_own_speed`: a donor's made-up compile times teach the coordinator
//!   nothing; speeds come from what agents measured.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use discomy_tests::{
    BUILD_TIMEOUT, MAKE_JOBS, Proc, Worker, assert_same_objects, discomy_run,
    farm_status as status, lua_with_reference, make_clean, node_count, objects, signal_group,
    start_coordinator as coordinator, wait_nodes,
};

/// A coordinator on loopback (with `extra` flags) and three 2-slot workers that joined it.
fn farm_of_three(dir: &Path, extra: &[&str]) -> (Proc, SocketAddr, Vec<Worker>) {
    let (coord, addr) = coordinator(dir, "coordinator", "127.0.0.1:0", extra);
    let caddr = addr.to_string();
    let workers = (0..3)
        .map(|i| Worker::start_with(dir, &format!("worker{i}"), 2, &["--coordinator", &caddr]))
        .collect();
    wait_nodes(addr, 3, Duration::from_secs(20));
    (coord, addr, workers)
}

#[test]
fn build_through_coordinator_survives_node_kill_and_coordinator_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tree, src, reference) = lua_with_reference(tmp.path());

    let (mut coord, addr, mut workers) = farm_of_three(tmp.path(), &[]);
    let caddr = addr.to_string();

    let summary_path = tmp.path().join("summary.json");
    let mut cmd = discomy_run(&tree, tmp.path());
    cmd.env("DISCOMY_COORDINATOR", &caddr)
        .args(["--summary-json"])
        .arg(&summary_path)
        .args(["--", "make", "-C", "src", MAKE_JOBS, "linux"]);
    let mut run = Proc::spawn("discomy-run", &mut cmd, tmp.path());

    // Mid-build: kill worker0 while it compiles, then restart the coordinator.
    let start = Instant::now();
    while workers[0].units_in_flight() == 0 {
        assert!(run.try_wait().is_none(), "the build ended before worker0 compiled anything");
        assert!(start.elapsed() < Duration::from_secs(120), "worker0 never got a unit");
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("[e2e] {} objects built; killing worker0", objects(&src).len());
    assert!(signal_group(workers[0].proc.pid(), "KILL"));
    workers[0].proc.wait_timeout(Duration::from_secs(10));
    wait_nodes(addr, 2, Duration::from_secs(3));
    eprintln!("[e2e] worker0 out of the farm; restarting the coordinator");
    coord.kill();
    let (_coord2, addr2) = coordinator(tmp.path(), "coordinator2", &caddr, &[]);
    assert_eq!(addr, addr2);

    let status_code = run.wait_timeout(BUILD_TIMEOUT);
    assert!(status_code.success(), "the build failed:\n{}", run.logs(60));
    assert_same_objects(&reference, &objects(&src), "coordinated build");
    // The surviving workers re-registered with the new coordinator on their own.
    wait_nodes(addr, 2, Duration::from_secs(10));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    eprintln!("[e2e] summary: {summary}");
    assert_eq!(summary["failed"], 0);
    assert!(summary["remote"].as_u64().unwrap_or(0) > 0, "nothing ran remotely: {summary}");
    for w in &mut workers[1..] {
        assert!(w.proc.try_wait().is_none(), "{} died", w.proc.name());
    }
}

/// `discomy run` of the Lua build against the coordinator at `caddr`, object cache off (every
/// unit goes to the farm), with its summary written to `summary`.
fn coordinated_build(tree: &Path, scratch: &Path, caddr: &str, summary: &Path) -> Proc {
    let mut cmd = discomy_run(tree, scratch);
    cmd.env("DISCOMY_COORDINATOR", caddr)
        .env("DISCOMY_CACHE", "0")
        .args(["--summary-json"])
        .arg(summary)
        .args(["--", "make", "-C", "src", MAKE_JOBS, "linux"]);
    Proc::spawn("discomy-run", &mut cmd, scratch)
}

/// SIGSTOPs the first of `ws` (but `spare`) to start a unit (a new unit directory appears in
/// its work dir): the agent then waits on that unit's connection, which stays open and silent.
/// Returns which worker it was and when. (Which workers the plan uses depends on the speeds it
/// learned, so the test takes whichever starts first.)
fn stop_as_one_starts_a_unit(
    ws: &[Worker],
    spare: Option<usize>,
    run: &mut Proc,
) -> (usize, Instant) {
    let unit_dirs = |w: &Worker| -> std::collections::BTreeSet<std::ffi::OsString> {
        std::fs::read_dir(&w.work_dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default()
    };
    let mut seen: Vec<_> = ws.iter().map(unit_dirs).collect();
    let start = Instant::now();
    let started = loop {
        let now: Vec<_> = ws.iter().map(unit_dirs).collect();
        let new = |i: usize| {
            now[i].iter().any(|d| !seen[i].contains(d) && d.to_string_lossy().starts_with("unit-"))
        };
        if let Some(i) = (0..ws.len()).find(|&i| Some(i) != spare && new(i)) {
            break i;
        }
        seen = now;
        assert!(run.try_wait().is_none(), "the build ended before a worker started a unit");
        assert!(start.elapsed() < Duration::from_secs(120), "no worker got a unit");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(signal_group(ws[started].proc.pid(), "STOP"));
    (started, Instant::now())
}

/// Waits for the build, lets the stopped worker go on, and returns how long the build took
/// after the stop; asserts the build succeeded.
fn finish_after_stop(run: &mut Proc, stopped_worker: &Worker, stopped: Instant) -> Duration {
    let status_code = run.wait_timeout(BUILD_TIMEOUT);
    let took = stopped.elapsed();
    assert!(signal_group(stopped_worker.proc.pid(), "CONT"));
    assert!(status_code.success(), "the build failed:\n{}", run.logs(60));
    took
}

#[test]
fn stopped_workers_lose_their_units_then_get_them_hedged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tree, src, reference) = lua_with_reference(tmp.path());
    // A liveness deadline of 45 s: the first build waits for it, the rebuild must not (its
    // caught unit can only come back sooner through a hedge).
    let (_coord, addr, mut workers) = farm_of_three(tmp.path(), &["--node-timeout", "45"]);
    let caddr = addr.to_string();
    let summary_path = tmp.path().join("summary.json");

    // A first build: no unit has a measured cost, so nothing is hedged; only the liveness
    // deadline frees the unit caught on the stopped worker.
    let mut run = coordinated_build(&tree, tmp.path(), &caddr, &summary_path);
    let (first, stopped) = stop_as_one_starts_a_unit(&workers, None, &mut run);
    let took = finish_after_stop(&mut run, &workers[first], stopped);
    assert_same_objects(&reference, &objects(&src), "first build, a worker stopped");
    let farm = status(addr, None).expect("discomy status");
    assert!(farm["nodes_lost"].as_u64() >= Some(1), "worker{first} never left the farm: {farm}");
    assert_eq!(farm["hedged"], 0, "a unit without a measured cost was hedged: {farm}");
    // Without the re-placement, the caught unit waits for the agent's 600 s limit.
    assert!(took < Duration::from_secs(120), "the first build took {took:?} after the stop");
    eprintln!("[e2e] first build: {took:?} after worker{first} stopped");
    wait_nodes(addr, 3, Duration::from_secs(20));
    make_clean(&tree, tmp.path());

    // The rebuild: every unit's cost and the speeds of the workers that stayed are known now
    // (the one stopped before joined again as a new node). One of them stops as it starts a
    // unit; its units are hedged long before the liveness deadline.
    let mut run = coordinated_build(&tree, tmp.path(), &caddr, &summary_path);
    let (second, stopped) = stop_as_one_starts_a_unit(&workers, Some(first), &mut run);
    let took = finish_after_stop(&mut run, &workers[second], stopped);
    assert_same_objects(&reference, &objects(&src), "rebuild, a worker stopped");
    let farm = status(addr, None).expect("discomy status");
    let hedged = farm["hedged"].as_u64().unwrap_or(0);
    assert!(hedged > 0, "no unit was hedged: {farm}");
    assert!(took < Duration::from_secs(45), "the rebuild took {took:?} after the stop");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    eprintln!(
        "[e2e] rebuild: {took:?} after worker{second} stopped, {hedged} unit(s) hedged: {summary}"
    );
    assert_eq!(summary["failed"], 0);
    for w in &mut workers {
        assert!(w.proc.try_wait().is_none(), "{} died", w.proc.name());
    }
}

#[test]
fn refusals_are_clear() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The token from a file, as the README says to give it.
    let token_file = tmp.path().join("farm-token");
    std::fs::write(&token_file, "s3cret\n").expect("write token file");
    let token_arg = token_file.to_str().expect("utf-8 path");
    let (_coord, addr) =
        coordinator(tmp.path(), "coordinator", "127.0.0.1:0", &["--token-file", token_arg]);
    // No token: refused, and told why.
    let err = status(addr, None).unwrap_err();
    assert!(err.contains("farm token"), "unclear refusal: {err}");
    let ok = status(addr, Some("s3cret")).unwrap();
    assert_eq!(ok["farm"], "default");

    // A worker advertising an address nobody listens on is refused after the connect-back.
    let caddr = addr.to_string();
    let mut w = Worker::start_with(
        tmp.path(),
        "liar",
        1,
        &["--token-file", token_arg, "--coordinator", &caddr, "--advertise", "127.0.0.1:1"],
    );
    let start = Instant::now();
    loop {
        let log = w.proc.stderr_text();
        if log.contains("cannot reach this node") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no clear refusal:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(addr, Some("s3cret")).unwrap()["nodes"].as_array().unwrap().len(), 0);
    w.proc.kill();
}

/// An agent's verification reports a node (`Quarantine`): the coordinator drops it at once,
/// lists it in `discomy status`, and refuses its worker when it logs in again.
#[test]
fn quarantined_nodes_leave_the_farm_for_good() {
    use discomy_protocol::coordinator::{CoordRequest, CoordResponse};
    use discomy_protocol::frame::{read_frame, write_frame};

    let tmp = tempfile::tempdir().expect("tempdir");
    // A fixed port and a state directory: the coordinator is restarted below.
    let port = discomy_tests::queue::free_port();
    let listen = format!("127.0.0.1:{port}");
    let state = tmp.path().join("coordinator-state");
    let state_arg = state.to_str().expect("utf-8 path");
    let (coord, addr) =
        coordinator(tmp.path(), "coordinator", &listen, &["--state-dir", state_arg]);
    let caddr = addr.to_string();
    let workers: Vec<Worker> = (0..2)
        .map(|i| Worker::start_with(tmp.path(), &format!("w{i}"), 1, &["--coordinator", &caddr]))
        .collect();
    wait_nodes(addr, 2, Duration::from_secs(20));
    let bad = workers[0].addr.to_string();

    let mut agent = std::net::TcpStream::connect(addr).unwrap();
    let none = discomy_protocol::AuthConfig::none();
    discomy_protocol::handshake::client_handshake(&mut agent, &none).unwrap();
    write_frame(&mut agent, &CoordRequest::AgentLogin { host: "verifier".into() }).unwrap();
    assert!(matches!(read_frame(&mut agent).unwrap(), CoordResponse::Welcome { .. }));
    let reason = "its object for lapi.c differs from a local compile".to_owned();
    // An overlong "address" names no node and is not remembered (a peer could send megabytes).
    let junk = CoordRequest::Quarantine { node: "x".repeat(100_000), reason: reason.clone() };
    write_frame(&mut agent, &junk).unwrap();
    write_frame(&mut agent, &CoordRequest::Quarantine { node: bad.clone(), reason }).unwrap();

    wait_nodes(addr, 1, Duration::from_secs(5));
    let s = status(addr, None).unwrap();
    assert_eq!(s["quarantined"], serde_json::json!([bad]), "{s}");
    assert_eq!(s["nodes"][0]["address"], workers[1].addr.to_string(), "{s}");
    // The quarantined worker keeps trying to log in (every second or so), and stays out.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(node_count(addr), 1, "the quarantined worker is back");

    // A restart on the same state: the quarantine holds (it was lost with the process before).
    drop(coord);
    let (coord, addr) =
        coordinator(tmp.path(), "coordinator-again", &listen, &["--state-dir", state_arg]);
    wait_nodes(addr, 1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(4));
    let s = status(addr, None).unwrap();
    assert_eq!(s["quarantined"], serde_json::json!([bad]), "{s}");
    assert_eq!(node_count(addr), 1, "the quarantined worker came back after a restart: {s}");
    drop(coord);
}

/// A donor whose answers come 400 ms late while they say the compile took 1 ms (`compile_ms`),
/// a relay in front of a worker that advertises the relay's address. The coordinator learns
/// node speeds from the agent's own measurements, so the liar ends up slower than the honest
/// worker beside it, not thousands of times faster (which had drawn every unit to it).
#[test]
fn a_node_cannot_claim_its_own_speed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tree, src, reference) = lua_with_reference(tmp.path());
    let (_coord, addr) = coordinator(tmp.path(), "coordinator", "127.0.0.1:0", &[]);
    let caddr = addr.to_string();
    let honest = Worker::start_with(tmp.path(), "honest", 2, &["--coordinator", &caddr]);
    let liar = LyingRelay::start();
    let behind = Worker::start_with(
        tmp.path(),
        "liar",
        2,
        &["--coordinator", &caddr, "--advertise", &liar.addr.to_string()],
    );
    liar.forward_to(behind.addr);
    wait_nodes(addr, 2, Duration::from_secs(20));

    let summary = tmp.path().join("summary.json");
    let mut run = coordinated_build(&tree, tmp.path(), &caddr, &summary);
    assert!(run.wait_timeout(BUILD_TIMEOUT).success(), "the build failed:\n{}", run.logs(60));
    assert_same_objects(&reference, &objects(&src), "build with a lying node");
    let lied = liar.lied.load(std::sync::atomic::Ordering::SeqCst);
    assert!(lied > 0, "no unit went through the lying relay");

    let farm = status(addr, None).expect("status");
    let node = |address: &str| {
        farm["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["address"] == address))
            .cloned()
            .unwrap_or_else(|| panic!("no node {address} in {farm}"))
    };
    let (l, h) = (node(&liar.addr.to_string()), node(&honest.addr.to_string()));
    eprintln!("[e2e] {lied} units lied about; liar {l}\nhonest {h}");
    let rate = |n: &serde_json::Value| n["speed_cpu_bps"].as_f64().unwrap_or(f64::NAN);
    assert!(l["samples"].as_u64().unwrap_or(0) > 0 && h["samples"].as_u64().unwrap_or(0) > 0);
    assert!(
        rate(&l) < rate(&h),
        "the liar's learned speed ({}) is above the honest node's ({})",
        rate(&l),
        rate(&h)
    );
}

/// A relay that answers compiles 400 ms late, saying they took 1 ms; counts them in `lied`.
struct LyingRelay {
    relay: discomy_tests::relay::Relay,
    addr: SocketAddr,
    lied: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl LyingRelay {
    fn start() -> LyingRelay {
        use discomy_protocol::{Response, SourceResult};
        use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering};
        let lied = Arc::new(AtomicUsize::new(0));
        let count = lied.clone();
        let relay = discomy_tests::relay::Relay::start(
            None,
            Arc::new(move |response: &mut Response| match response {
                Response::Compiled(result)
                | Response::CompiledSources(SourceResult { result, .. }) => {
                    result.compile_ms = 1;
                    count.fetch_add(1, Ordering::SeqCst);
                    Some(Duration::from_millis(400))
                }
                _ => None,
            }),
        );
        LyingRelay { addr: relay.addr, relay, lied }
    }

    fn forward_to(&self, worker: SocketAddr) {
        self.relay.forward_to(worker);
    }
}
