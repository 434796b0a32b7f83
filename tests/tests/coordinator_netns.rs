//! Discovery for real: five network namespaces on a private bridge (veth pairs, multicast on),
//! a coordinator in one, a worker in each of three more, and the build host in the last. Nobody
//! is given an address: workers and the build host's agent find the coordinator over mDNS by
//! farm name, the coordinator connects back to each worker's address, and Lua builds through
//! the farm with objects identical to a local build. And a rogue coordinator of another CA
//! advertising the same farm gets no node of the working fleet.
//!
//! Skipped, with a message, where network namespaces cannot be created (not root, no `ip`).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::time::{Duration, Instant};

use discomy_tests::netns::Net;
use discomy_tests::{
    BUILD_TIMEOUT, MAKE_JOBS, Proc, agent_stats, assert_same_objects, bin, clean_command,
    discomy_run, lua_with_reference, objects,
};

const TOKEN: &str = "netns-farm-token";

/// Waits until `done` holds, failing when a daemon of `procs` exits or `within` passes.
fn wait_until(what: &str, within: Duration, procs: &mut [Proc], mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        for proc in procs.iter_mut() {
            if let Some(status) = proc.try_wait() {
                panic!("{} exited ({status}):\n{}", proc.name(), proc.logs(40));
            }
        }
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn farm_found_over_mdns_across_namespaces() {
    let net = match Net::create(77, 5) {
        Ok(net) => net,
        Err(why) => {
            eprintln!("SKIPPED: cannot create network namespaces here ({why})");
            return;
        }
    };
    let farm = format!("netns-{}", net.id);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (tree, src, reference) = lua_with_reference(tmp.path());

    // Namespace 0: the coordinator, advertised over mDNS.
    let mut cmd = net.command(0, &bin("discomy-coordinator"));
    cmd.args(["--listen", "0.0.0.0:3634", "--farm", &farm, "--token", TOKEN]);
    let coord = Proc::spawn("coordinator", &mut cmd, tmp.path());

    // Namespaces 1-3: workers with no address configured.
    let mut workers = Vec::new();
    for i in 1..=3 {
        let name = format!("worker{i}");
        let mut cmd = net.command(i, &bin("discomy-compilerd"));
        cmd.env("TMPDIR", discomy_tests::private_tmp(tmp.path(), &name))
            .args(["--farm", &farm, "--token", TOKEN, "worker", "--listen", "0.0.0.0:3633"])
            .args(["--slots", "2", "--store"])
            .arg(tmp.path().join(format!("{name}.store")))
            .arg("--work-dir")
            .arg(tmp.path().join(format!("{name}.work")));
        workers.push(Proc::spawn(&name, &mut cmd, tmp.path()));
    }
    // The coordinator's own count of nodes, asked from its namespace.
    let nodes = || {
        let out = net
            .command(0, &bin("discomy"))
            .args(["status", "--json", "--coordinator", "127.0.0.1:3634", "--token", TOKEN])
            .output()
            .expect("discomy status");
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        status["nodes"].as_array().map(Vec::len).unwrap_or(0)
    };
    wait_until("three nodes in the farm", Duration::from_secs(60), &mut workers, || nodes() == 3);
    // `discomy status` without an address finds the coordinator by farm name, from another host.
    let out = net
        .command(4, &bin("discomy"))
        .args(["status", "--json", "--farm", &farm])
        .env("DISCOMY_TOKEN", TOKEN)
        .output()
        .expect("discomy status over mDNS");
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        found["nodes"].as_array().map(Vec::len),
        Some(3),
        "discomy status --farm {farm}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Namespace 4: the build host's agent, no address either.
    let socket = tmp.path().join("agent.sock");
    let mut cmd = net.command(4, &bin("discomy-compilerd"));
    cmd.env("TMPDIR", discomy_tests::private_tmp(tmp.path(), "agent"))
        .args(["--farm", &farm, "--token", TOKEN, "agent", "--socket"])
        .arg(&socket)
        .arg("--store")
        .arg(tmp.path().join("agent.store"));
    let agent = Proc::spawn("agent", &mut cmd, tmp.path());
    let mut agent = vec![agent];
    wait_until(
        "the agent logged in to the coordinator",
        Duration::from_secs(60),
        &mut agent,
        || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
                && agent_stats(&socket)["coordinator_joined"] == true
        },
    );
    let agent = agent.remove(0);

    let summary_path = tmp.path().join("summary.json");
    let mut cmd = clean_command("ip");
    cmd.args(["netns", "exec", &net.spaces[4]]);
    let inner = discomy_run(&tree, tmp.path());
    cmd.arg(inner.get_program()).args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.current_dir(&tree)
        .env("DISCOMY_SOCKET", &socket)
        .arg("--summary-json")
        .arg(&summary_path)
        .args(["--", "make", "-C", "src", MAKE_JOBS, "linux"]);
    let mut run = Proc::spawn("discomy-run", &mut cmd, tmp.path());
    let status = run.wait_timeout(BUILD_TIMEOUT);
    assert!(status.success(), "the build failed:\n{}", run.logs(60));
    assert_same_objects(&reference, &objects(&src), "build through an mDNS-discovered farm");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    eprintln!("[e2e] summary: {summary}");
    assert_eq!(summary["failed"], 0);
    assert!(summary["remote"].as_u64().unwrap_or(0) > 0, "nothing ran remotely: {summary}");
    drop((agent, workers, coord));
}

/// A rogue coordinator advertising the same farm over mDNS, with a CA of its own: a fleet worker
/// that discovers both joins the real one only (the rogue's certificate does not chain to the CA
/// it enrolled with), whichever answers first.
#[test]
fn a_rogue_coordinator_on_mdns_gets_no_fleet_node() {
    use discomy_protocol::fleet::FleetRole;
    let net = match Net::create(78, 3) {
        Ok(net) => net,
        Err(why) => {
            eprintln!("SKIPPED: cannot create network namespaces here ({why})");
            return;
        }
    };
    let farm = format!("rogue-{}", net.id);
    let tmp = tempfile::tempdir().expect("tempdir");
    let fleet = |name: &str| tmp.path().join(name);
    // The rogue first, so that it is on the network before the real one.
    let mut procs = Vec::new();
    for (i, name) in [(1, "rogue"), (0, "coordinator")] {
        let mut cmd = net.command(i, &bin("discomy-coordinator"));
        cmd.args(["--listen", "0.0.0.0:3634", "--farm", &farm, "--fleet-dir"]).arg(fleet(name));
        procs.push(Proc::spawn(name, &mut cmd, tmp.path()));
        wait_until("its admin certificate", Duration::from_secs(20), &mut procs, || {
            fleet(name).join("admin.pem").exists()
        });
        std::thread::sleep(Duration::from_millis(500));
    }
    // The worker's certificate, issued by the real farm CA (as `discomy nodes approve` would).
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
    let ca = discomy_protocol::tls::Ca::load(
        &read(fleet("coordinator").join("ca.pem")),
        &read(fleet("coordinator").join("ca.key")),
    )
    .unwrap();
    let (issued, key) =
        ca.issue_with_key("donor", &[FleetRole::Worker], Duration::from_secs(3600)).unwrap();
    let wdir = fleet("worker");
    std::fs::create_dir(&wdir).unwrap();
    std::fs::write(wdir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(wdir.join("node.pem"), &issued.pem).unwrap();
    std::fs::write(wdir.join("node.key"), &key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(wdir.join("node.key"), std::fs::Permissions::from_mode(0o600))
        .unwrap();
    let mut cmd = net.command(2, &bin("discomy-compilerd"));
    cmd.env("TMPDIR", discomy_tests::private_tmp(tmp.path(), "worker"))
        .args(["--farm", &farm, "--fleet-dir"])
        .arg(&wdir)
        .args(["worker", "--listen", "0.0.0.0:3633", "--slots", "1", "--store"])
        .arg(tmp.path().join("worker.store"));
    procs.push(Proc::spawn("worker", &mut cmd, tmp.path()));
    let nodes = |i: usize, dir: &str| {
        let out = net
            .command(i, &bin("discomy"))
            .args(["status", "--json", "--coordinator", "127.0.0.1:3634", "--fleet-dir"])
            .arg(fleet(dir))
            .output()
            .expect("discomy status");
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        status["nodes"].as_array().map(Vec::len).unwrap_or(0)
    };
    wait_until("the worker in the real farm", Duration::from_secs(60), &mut procs, || {
        nodes(0, "coordinator") == 1
    });
    assert_eq!(nodes(1, "rogue"), 0, "the rogue coordinator got the fleet's worker");
    drop(procs);
}
