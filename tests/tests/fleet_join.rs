//! The working fleet end to end on loopback (issue 17): a coordinator with a farm CA; a donor
//! host joins with a single-use token, waits as pending, is approved by the operator, and then
//! serves units over mutual TLS to a build whose objects equal a local build's. Certificates
//! live 12 s here, so the daemons renew theirs during the test and stay in the farm. Refusals, each
//! with a clear error and nothing served:
//! - a used-up join token;
//! - `discomy status` without a farm certificate;
//! - a certificate without the worker role logging in as a node;
//! - a joiner pointed at a coordinator of another CA (a rogue answering mDNS would be one);
//! - a revoked node: its connection is closed within seconds and it cannot come back;
//! - a revoked agent: the worker refuses its next unit, also on the connection it holds;
//! - a revoked worker: a host-list agent (no coordinator session) learns it from the coordinator
//!   it enrolled with and stops sending it units, also on the idle connection it kept;
//! - a tenant token of scope `compile` enrolling anything but an agent.
//!
//! A host-list agent also renews its certificate with the coordinator it enrolled through, and
//! a tenant token of scope `compile` enrols a CI runner as an agent at once, until the token is
//! revoked.
//! - a farm-tier store from an agent's certificate, and anything but a store from a certificate
//!   that is only a worker's (only workers write the farm tier; workers ask nothing else).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use discomy_protocol::asyncio::{client_handshake, recv, send};
use discomy_protocol::cache::Entry;
use discomy_protocol::coordinator::{CoordRequest, CoordResponse, NodeLogin};
use discomy_protocol::fleet::FleetRole;
use discomy_protocol::tls::{ClientAuth, FarmTls, Transport};
use discomy_protocol::{AuthConfig, CacheEntry, Digest, Payload, Request, Response};
use discomy_tests::{
    Agent, BUILD_TIMEOUT, MAKE_JOBS, Proc, Worker, assert_same_objects, bin, clean_command,
    discomy_run, lua_with_reference, objects, read_stats, start_coordinator,
};

fn run(cmd: &mut std::process::Command) -> Output {
    let out = cmd.output().unwrap();
    eprintln!(
        "[e2e] {:?} → {}\n{}",
        cmd.get_args().collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stderr).lines().rev().take(3).collect::<Vec<_>>().join("\n")
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn nodes(caddr: &str, cdir: &Path, args: &[&str]) -> Output {
    let mut cmd = clean_command(bin("discomy"));
    cmd.args(["nodes", "--json", "--coordinator", caddr, "--fleet-dir"]).arg(cdir).args(args);
    run(&mut cmd)
}

fn join(caddr: &str, ca: &Path, dir: &Path, token: &str, name: &str, roles: &str) -> Output {
    let mut cmd = clean_command(bin("discomy-compilerd"));
    cmd.args(["--coordinator", caddr, "--fleet-dir"]).arg(dir);
    cmd.args(["join", "--join-token", token, "--name", name, "--roles", roles, "--no-wait"]);
    cmd.args(["--organisation", "Test Org", "--contact", "ops@example.org", "--ca"]).arg(ca);
    run(&mut cmd)
}

fn status(caddr: &str, fleet_dir: Option<&Path>) -> Result<serde_json::Value, String> {
    let mut cmd = clean_command(bin("discomy"));
    cmd.args(["status", "--json", "--coordinator", caddr]);
    if let Some(d) = fleet_dir {
        cmd.arg("--fleet-dir").arg(d);
    }
    let out = cmd.output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn node_count(caddr: &str, cdir: &Path) -> usize {
    status(caddr, Some(cdir)).ok().and_then(|s| s["nodes"].as_array().map(Vec::len)).unwrap_or(0)
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "{what} not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("[e2e] {what} after {:?}", start.elapsed());
}

fn token(caddr: &str, cdir: &Path) -> String {
    json(&nodes(caddr, cdir, &["token", "--uses", "1"]))["token"].as_str().unwrap().to_string()
}

/// The serial of the certificate in the fleet directory `dir`.
fn serial_in(dir: &Path) -> String {
    let pem = std::fs::read_to_string(dir.join("node.pem")).unwrap();
    discomy_protocol::tls::pki::read_pem(&pem).unwrap().serial
}

/// One compile of Lua's `lapi.c` (made distinct by `n`) through the agent at `socket`: how it
/// ran (`remote`, `local`, …), from the wrapper's stats file.
fn compile_via(socket: &Path, src: &Path, stats_file: &Path, n: usize) -> String {
    let mut cc = clean_command(bin("discomy-cc"));
    cc.current_dir(src)
        .args(["gcc", "-std=gnu99", "-O2", "-DLUA_USE_LINUX", &format!("-DREVOKE_PROBE={n}")])
        .args(["-c", "lapi.c", "-o", "probe.o"])
        .env("DISCOMY_SOCKET", socket)
        .env("DISCOMY_CACHE", "0")
        .env("DISCOMY_STATS_FILE", stats_file);
    assert!(run(&mut cc).status.success());
    read_stats(stats_file).last().unwrap().outcome.clone()
}

/// An agent with `worker` as its host list (no coordinator) and the certificate in `fleet`;
/// the stats file its compiles are read from.
fn host_list_agent(dir: &Path, name: &str, worker: &Worker, fleet: &Path) -> (Agent, PathBuf) {
    let env = [("DISCOMY_FLEET_DIR", fleet.to_str().unwrap())];
    let agent = Agent::start_with(dir, name, &worker.host_spec(), &env, &[]);
    (agent, dir.join(format!("{name}.tsv")))
}

/// `discomy tokens …` against the build queue's API at `api` (HTTPS, the farm CA from `cdir`).
fn tokens(api: &str, cdir: &Path, args: &[&str]) -> Output {
    let mut cmd = clean_command(bin("discomy"));
    cmd.args(["tokens", "--api", api, "--fleet-dir"]).arg(cdir).args(args);
    run(&mut cmd)
}

/// Joins `name` with `roles`, approves it, and fetches its certificate into `dir`.
fn enrol(caddr: &str, cdir: &Path, dir: &Path, name: &str, roles: &str) {
    let ca = cdir.join("ca.pem");
    let t = token(caddr, cdir);
    let pending = json(&join(caddr, &ca, dir, &t, name, roles));
    assert_eq!(pending["state"], "pending", "{pending}");
    let id = pending["request"].as_u64().unwrap().to_string();
    json(&nodes(caddr, cdir, &["approve", &id]));
    let approved = json(&join(caddr, &ca, dir, &t, name, roles));
    assert_eq!(approved["state"], "approved", "{approved}");
}

/// The mutual-TLS transport of the certificate in `dir`, and a runtime to use it on.
fn transport_in(dir: &Path) -> Result<(Transport, tokio::runtime::Runtime), String> {
    let tls = FarmTls::from_files(
        &dir.join("ca.pem"),
        &dir.join("node.pem"),
        &dir.join("node.key"),
        ClientAuth::Required,
    )
    .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    Ok((Transport::Tls(Arc::new(tls)), rt))
}

/// A NodeLogin over mutual TLS with the certificate in `dir`: the coordinator's answer.
fn node_login(caddr: &str, dir: &Path) -> Result<CoordResponse, String> {
    let (transport, rt) = transport_in(dir)?;
    rt.block_on(async {
        let stream =
            transport.connect(caddr, FleetRole::Coordinator).await.map_err(|e| e.to_string())?;
        let mut conn =
            client_handshake(stream, &AuthConfig::none()).await.map_err(|e| e.to_string())?;
        let login = NodeLogin {
            host: "x".into(),
            address: "127.0.0.1:9".into(),
            cores: 1,
            slots: 1,
            memory_mb: 1,
            toolchains: vec![],
        };
        send(&mut conn, &CoordRequest::NodeLogin(login)).await.map_err(|e| e.to_string())?;
        recv::<_, CoordResponse>(&mut conn).await.map_err(|e| e.to_string())
    })
}

/// One request to the worker at `addr` over mutual TLS with the certificate in `dir`.
fn worker_call(addr: &str, dir: &Path, request: &Request) -> Result<Response, String> {
    let (transport, rt) = transport_in(dir)?;
    rt.block_on(async {
        let stream = transport.connect(addr, FleetRole::Worker).await.map_err(|e| e.to_string())?;
        let mut conn =
            client_handshake(stream, &AuthConfig::none()).await.map_err(|e| e.to_string())?;
        send(&mut conn, request).await.map_err(|e| e.to_string())?;
        recv::<_, Response>(&mut conn).await.map_err(|e| e.to_string())
    })
}

/// A farm-tier store of an entry bound to its key, as a worker hands one to the key's owner.
fn bound_put(key: Digest) -> Request {
    let entry = Entry {
        cwd: "/b".into(),
        stdout: vec![],
        stderr: vec![],
        object: b"\x7fELF".to_vec(),
        dep: None,
        node: Some("n".into()),
        farm_key: Some(key),
    };
    Request::CachePut(CacheEntry { key, body: Payload::compress(&entry.encode().unwrap()) })
}

#[test]
fn a_donor_joins_is_approved_serves_over_mutual_tls_and_is_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The local reference build first: on a loaded machine it outlasts the 12 s certificates
    // below, which would expire before the worker starts.
    let (tree, src, reference) = lua_with_reference(dir);
    let cdir = dir.join("coordinator-fleet");
    // Certificates of 12 s: the daemons renew theirs (at two thirds) during the test.
    // With a build queue, whose tenant tokens may enrol agents.
    let (state, api_file) = (dir.join("ops"), dir.join("api.addr"));
    let flags = [
        "--fleet-dir",
        cdir.to_str().unwrap(),
        "--cert-lifetime",
        "12",
        "--api-listen",
        "127.0.0.1:0",
        "--state-dir",
        state.to_str().unwrap(),
        "--api-addr-file",
        api_file.to_str().unwrap(),
    ];
    let (_coord, addr) = start_coordinator(dir, "coordinator", "127.0.0.1:0", &flags);
    let caddr = addr.to_string();
    let ca = cdir.join("ca.pem");
    let mut api = String::new();
    wait_for("the API's address", Duration::from_secs(20), || {
        api = std::fs::read_to_string(&api_file).unwrap_or_default();
        api.ends_with('\n')
    });
    let api = format!("https://{}", api.trim());

    // A single-use token: the first join waits as pending, a replay is refused.
    let ndir = dir.join("donor-fleet");
    let t = token(&caddr, &cdir);
    let pending = json(&join(&caddr, &ca, &ndir, &t, "donor-1", "worker,agent"));
    assert_eq!(pending["state"], "pending");
    let replay = join(&caddr, &ca, &dir.join("replay-fleet"), &t, "donor-2", "worker");
    assert!(!replay.status.success());
    assert!(String::from_utf8_lossy(&replay.stderr).contains("used up"), "{replay:?}");
    let listed = json(&nodes(&caddr, &cdir, &["list"]));
    let record = &listed["nodes"][0];
    assert_eq!(
        (record["name"].as_str(), record["state"].as_str()),
        (Some("donor-1"), Some("pending"))
    );
    assert_eq!(record["facts"]["organisation"], "Test Org");
    assert!(record["facts"]["cores"].as_u64().unwrap() >= 1);
    assert!(!ndir.join("node.pem").exists(), "a certificate before approval");

    // Approved: the next poll writes the certificate; the key stays private.
    let id = record["request"].as_u64().unwrap().to_string();
    json(&nodes(&caddr, &cdir, &["approve", &id]));
    let approved = json(&join(&caddr, &ca, &ndir, &t, "donor-1", "worker,agent"));
    assert_eq!(approved["state"], "approved");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ndir.join("node.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0);
    let serial = || serial_in(&ndir);
    let first_serial = serial();

    // Nothing is served without a farm certificate.
    let refused = status(&caddr, None).unwrap_err();
    assert!(refused.contains("fleet directory"), "{refused}");

    // The donor's worker joins over mutual TLS; a build through the farm equals a local one.
    let nd = ndir.to_str().unwrap();
    let worker =
        Worker::start_with(dir, "worker0", 2, &["--coordinator", &caddr, "--fleet-dir", nd]);
    wait_for("the approved worker in the farm", Duration::from_secs(20), || {
        node_count(&caddr, &cdir) == 1
    });
    let summary_path = dir.join("summary.json");
    let mut cmd = discomy_run(&tree, dir);
    cmd.env("DISCOMY_COORDINATOR", &caddr).env("DISCOMY_FLEET_DIR", &ndir);
    cmd.arg("--summary-json")
        .arg(&summary_path)
        .args(["--", "make", "-C", "src", MAKE_JOBS, "linux"]);
    let mut build = Proc::spawn("discomy-run", &mut cmd, dir);
    let code = build.wait_timeout(BUILD_TIMEOUT);
    assert!(code.success(), "the build failed:\n{}", build.logs(60));
    assert_same_objects(&reference, &objects(&src), "build over mutual TLS");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    eprintln!("[e2e] summary: {summary}");
    assert!(summary["remote"].as_u64().unwrap_or(0) > 0, "nothing ran remotely: {summary}");
    // The worker (and the build's agent, sharing its directory) renewed the certificate on
    // their own, and the worker is still in the farm with it.
    wait_for("a renewed certificate", Duration::from_secs(20), || serial() != first_serial);
    let renewed = FarmTls::from_files(
        &ca,
        &ndir.join("node.pem"),
        &ndir.join("node.key"),
        ClientAuth::Required,
    );
    assert!(renewed.is_ok(), "the key and the certificate on disk do not belong together");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node_count(&caddr, &cdir), 1, "the worker left the farm after renewing");

    // A certificate without the worker role cannot log in as a node.
    let adir = dir.join("agent-fleet");
    enrol(&caddr, &cdir, &adir, "buildhost-1", "agent");
    match node_login(&caddr, &adir).unwrap() {
        CoordResponse::Refused { reason } => assert!(reason.contains("worker role"), "{reason}"),
        other => panic!("an agent certificate logged in as a node: {other:?}"),
    }

    // Only a worker's certificate stores in the farm tier, and it stores only.
    let waddr = worker.addr.to_string();
    let put = bound_put(Digest([9; 32]));
    match worker_call(&waddr, &adir, &put).unwrap() {
        Response::Refused(r) => assert!(r.message.contains("only a worker"), "{r:?}"),
        other => panic!("an agent's certificate stored a farm-tier entry: {other:?}"),
    }
    let wdir = dir.join("donor3-fleet");
    enrol(&caddr, &cdir, &wdir, "donor-3", "worker");
    match worker_call(&waddr, &wdir, &put).unwrap() {
        Response::Stored(key) => assert_eq!(key, Digest([9; 32])),
        other => panic!("a worker's store was not taken: {other:?}"),
    }
    match worker_call(&waddr, &wdir, &Request::CacheGet(Digest([9; 32]))).unwrap() {
        Response::Refused(r) => assert!(r.message.contains("only hands"), "{r:?}"),
        other => panic!("a worker-only certificate was served a lookup: {other:?}"),
    }

    // A revoked agent is refused by the worker at its next unit, also on the connection it
    // already holds: the coordinator tells its nodes of every revocation.
    let bdir = dir.join("buildhost2-fleet");
    enrol(&caddr, &cdir, &bdir, "buildhost-2", "agent");
    let (agent, stats_file) = host_list_agent(dir, "agent2", &worker, &bdir);
    let compile = |n: usize| compile_via(&agent.socket, &src, &stats_file, n);
    assert_eq!(compile(0), "remote", "the enrolled agent's unit did not run remotely");
    // This agent has a host list and no coordinator session: it renews with the coordinator it
    // enrolled through (12 s certificates, renewed at two thirds), and its units stay remote.
    let first_agent_serial = serial_in(&bdir);
    wait_for("the host-list agent's renewal", Duration::from_secs(20), || {
        serial_in(&bdir) != first_agent_serial
    });
    assert_eq!(compile(1), "remote", "the renewed agent's unit did not run remotely");
    json(&nodes(&caddr, &cdir, &["revoke", "buildhost-2"]));
    let mut n = 0;
    wait_for("the worker refusing the revoked agent", Duration::from_secs(10), || {
        n += 1;
        compile(n) != "remote"
    });
    assert_ne!(compile(n + 1), "remote", "a revoked agent's unit ran remotely");
    drop(agent);

    // A coordinator of another CA (what a rogue answering mDNS would be) is refused by a joiner.
    let (_rogue, raddr) = start_coordinator(
        dir,
        "rogue",
        "127.0.0.1:0",
        &["--fleet-dir", dir.join("rogue-fleet").to_str().unwrap()],
    );
    let rogue =
        join(&raddr.to_string(), &ca, &dir.join("fooled-fleet"), "x.y", "donor-9", "worker");
    assert!(!rogue.status.success());
    assert!(String::from_utf8_lossy(&rogue.stderr).contains("certificate"), "{rogue:?}");

    // A tenant token of scope compile enrols a CI runner as an agent at once, with no
    // operator; it enrols nothing else.
    let made =
        json(&tokens(&api, &cdir, &["create", "ci-runners", "--scope", "compile", "--json"]));
    let tenant = made["token"].as_str().unwrap().to_owned();
    let tenant_id = made["id"].as_u64().unwrap().to_string();
    let rdir = dir.join("runner-fleet");
    let runner = json(&join(&caddr, &ca, &rdir, &tenant, "runner-1", "agent"));
    assert_eq!(runner["state"], "approved", "{runner}");
    let worker_too = join(&caddr, &ca, &dir.join("donor7-fleet"), &tenant, "donor-7", "worker");
    assert!(!worker_too.status.success());
    assert!(String::from_utf8_lossy(&worker_too.stderr).contains("agents only"), "{worker_too:?}");
    let listed = json(&nodes(&caddr, &cdir, &["list"]));
    let by = listed["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "runner-1").unwrap();
    assert!(by["enrolled_by"].as_str().unwrap().contains("ci-runners"), "{by}");

    // The runner's agent keeps an idle connection to the worker after a unit.
    let (runner_agent, runner_stats) = host_list_agent(dir, "agent3", &worker, &rdir);
    let compile3 = |n: usize| compile_via(&runner_agent.socket, &src, &runner_stats, n);
    assert_eq!(compile3(100), "remote", "the runner's unit did not run remotely");

    // Revoked: the worker's connection is closed and it is out within seconds; its certificate
    // is refused from then on.
    json(&nodes(&caddr, &cdir, &["revoke", "donor-1"]));
    wait_for("the revoked worker out of the farm", Duration::from_secs(10), || {
        node_count(&caddr, &cdir) == 0
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(node_count(&caddr, &cdir), 0, "the revoked worker came back");
    assert!(node_login(&caddr, &ndir).is_err(), "a revoked certificate was served");
    // The runner's agent, which has no coordinator session, learns it from its revocation
    // watch: the worker (still running) gets no more of its units, not even on the idle
    // connection.
    let mut n = 100;
    wait_for("the host-list agent leaving the revoked worker", Duration::from_secs(10), || {
        n += 1;
        compile3(n) != "remote"
    });
    assert_ne!(compile3(n + 1), "remote", "a unit went to a revoked worker");
    drop(worker);

    // Revoking the tenant token revokes the agent it enrolled.
    assert!(tokens(&api, &cdir, &["revoke", &tenant_id]).status.success());
    let listed = json(&nodes(&caddr, &cdir, &["list"]));
    let runner = listed["nodes"].as_array().unwrap().iter().find(|n| n["name"] == "runner-1");
    assert_eq!(runner.unwrap()["state"], "revoked", "{listed}");
    drop(runner_agent);
}
