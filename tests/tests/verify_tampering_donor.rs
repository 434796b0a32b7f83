//! A tampering donor is caught by verification and quarantined, and the build still ends with
//! objects identical to a local build's.
//!
//! The donor is a relay in front of an honest worker that rewrites the `.comment` section of
//! every object it returns (`GCC: (` becomes `GCC: [`): a harmless-looking change that links,
//! and that makes the built binaries differ from local ones. The agent knows it as one more
//! host, beside an honest worker.
//!
//! 1. A donor that tampers from its first unit: every unit it returns is checked while it is on
//!    probation, the first one differs, the donor is quarantined, and no tampered object
//!    reaches the build.
//! 2. A sleeper that is honest for a whole build, then tampers. With sampling off it passes
//!    probation and its tampered objects reach the build and its object cache (what sampling
//!    exists to bound). An agent that checks every unit then catches and quarantines it, and a
//!    rebuild through that agent with the poisoned cache serves none of the sleeper's entries:
//!    every object is local-equal.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use discomy_protocol::{Payload, Response, SourceResult};
use discomy_tests::relay::Relay;
use discomy_tests::{
    Agent, ShowOnFailure, Worker, assert_same_objects, bin, clean_command, lua_with_reference,
    make_clean, make_lua_with_discomy_cc, objects, run_to_success,
};
use discomy_wrapper::verify::{Verdict, compare};

/// A worker that is an honest worker behind a relay rewriting the objects it returns while
/// `tampering` is set.
struct Donor {
    addr: SocketAddr,
    tampering: Arc<AtomicBool>,
    compiled: Arc<AtomicUsize>,
    tampered: Arc<AtomicUsize>,
}

impl Donor {
    fn start(upstream: SocketAddr, tampering: bool) -> Donor {
        let tampering = Arc::new(AtomicBool::new(tampering));
        let compiled = Arc::new(AtomicUsize::new(0));
        let tampered = Arc::new(AtomicUsize::new(0));
        let (on, c, t) = (tampering.clone(), compiled.clone(), tampered.clone());
        let relay = Relay::start(
            Some(upstream),
            Arc::new(move |response: &mut Response| {
                if let Response::Compiled(result)
                | Response::CompiledSources(SourceResult { result, .. }) = response
                    && let Some(output) = &result.output
                {
                    c.fetch_add(1, Ordering::SeqCst);
                    if on.load(Ordering::SeqCst)
                        && let Ok(mut object) = output.decompress(1 << 30)
                        && rewrite(&mut object, b"GCC: (", b"GCC: [")
                    {
                        t.fetch_add(1, Ordering::SeqCst);
                        result.output = Some(Payload::compress(&object));
                    }
                }
                None
            }),
        );
        Donor { addr: relay.addr, tampering, compiled, tampered }
    }
}

/// Replaces every `from` in `data` by `to` (same length); whether anything changed.
fn rewrite(data: &mut [u8], from: &[u8], to: &[u8]) -> bool {
    let mut changed = false;
    let mut i = 0;
    while i + from.len() <= data.len() {
        if &data[i..i + from.len()] == from {
            data[i..i + from.len()].copy_from_slice(to);
            changed = true;
            i += from.len();
        } else {
            i += 1;
        }
    }
    changed
}

/// `make -C src linux` with discomy-cc as CC against `agent`, the local object cache in `cache`
/// (the farm tier off: each scenario's units reach the workers).
fn build(tree: &Path, scratch: &Path, agent: &Agent, cache: &Path, name: &str) {
    let mut cmd = make_lua_with_discomy_cc(tree, &agent.socket, cache);
    cmd.env("DISCOMY_CACHE", "1").env("DISCOMY_CACHE_FARM", "0");
    run_to_success(name, &mut cmd, scratch);
}

/// `discomy stats --json` of `agent`.
fn agent_stats(agent: &Agent) -> serde_json::Value {
    let out = clean_command(bin("discomy"))
        .args(["stats", "--json", "--socket"])
        .arg(&agent.socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "discomy stats: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The local cache's count of entries not served because their node is quarantined.
fn quarantined_entries(cache: &Path) -> u64 {
    let out =
        clean_command(bin("discomy-cc")).arg("--stats").env("DISCOMY_CACHE_DIR", cache).output();
    let text = String::from_utf8_lossy(&out.unwrap().stdout).into_owned();
    let line = text.lines().find(|l| l.starts_with("entries of quarantined nodes")).unwrap_or("");
    line.split_whitespace().last().and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[test]
fn lto_objects_compare_modulo_their_random_section_names() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("a.c");
    std::fs::write(&src, "static int k = 3;\nint f(int x) { return x * k; }\n").unwrap();
    let args = ["-O2", "-flto=auto", "-ffat-lto-objects", "-g", "-c"];
    let compile = |out: &str| {
        let out = tmp.path().join(out);
        let st = clean_command("gcc").args(args).arg(&src).arg("-o").arg(&out).status().unwrap();
        assert!(st.success());
        std::fs::read(out).unwrap()
    };
    let (a, b) = (compile("a.o"), compile("b.o"));
    assert_ne!(a, b, "gcc's LTO section names carry a random seed");
    let argv: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(compare(&a, &b, &argv), Verdict::Same);
    let mut c = b.clone();
    assert!(rewrite(&mut c, b"GCC: (", b"GCC: ["));
    assert_eq!(compare(&a, &c, &argv), Verdict::Different);
}

#[test]
fn tampering_donor_is_caught_and_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let behind = Worker::start(dir, "behind-donor", 2);
    let honest = Worker::start(dir, "honest", 2);
    let mut show = ShowOnFailure::default();
    let (tree, src, reference) = lua_with_reference(dir);

    // 1. Tampering from the first unit.
    let donor = Donor::start(behind.addr, true);
    let hosts = format!("{}/2,{}", donor.addr, honest.host_spec());
    let agent = Agent::start(dir, "agent", &hosts);
    show.add("agent log", &dir.join("agent.stderr"));
    build(&tree, dir, &agent, &dir.join("cache-1"), "make-donor");
    assert_same_objects(&reference, &objects(&src), "a build beside a tampering donor");
    let stats = agent_stats(&agent);
    eprintln!("[e2e] {}", serde_json::to_string_pretty(&stats["verification"]).unwrap());
    let v = &stats["verification"];
    assert!(donor.tampered.load(Ordering::SeqCst) >= 1, "the donor never tampered");
    assert!(v["mismatched"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["quarantined"], serde_json::json!([donor.addr.to_string()]), "{v}");
    assert!(stats["fallback_reasons"]["verify_mismatch"].as_u64().unwrap() >= 1, "{stats}");
    // It gets no unit after the verdict: only what its two slots took while the first
    // verification compiled locally (about as long as a remote compile).
    let served = donor.compiled.load(Ordering::SeqCst);
    assert!(served <= 8, "the quarantined donor compiled {served} units");
    drop(agent);
    make_clean(&tree, dir);

    // 2. A sleeper: honest for a whole build (off probation), then tampering. With sampling
    //    off (`DISCOMY_VERIFY_RATE=0`) its tampered objects pass: they reach the build and its
    //    object cache, entries naming the sleeper.
    let sleeper = Donor::start(behind.addr, false);
    let hosts = format!("{}/2,{}", sleeper.addr, honest.host_spec());
    let unchecked = Agent::start_with(dir, "agent2", &hosts, &[("DISCOMY_VERIFY_RATE", "0")], &[]);
    build(&tree, dir, &unchecked, &dir.join("cache-honest"), "make-sleeper-honest");
    assert_same_objects(&reference, &objects(&src), "the sleeper while honest");
    make_clean(&tree, dir);
    sleeper.tampering.store(true, Ordering::SeqCst);
    let cache = dir.join("cache-2");
    build(&tree, dir, &unchecked, &cache, "make-sleeper");
    let slipped = objects(&src).iter().filter(|(k, o)| reference.get(*k) != Some(*o)).count();
    eprintln!(
        "[e2e] tampered objects taken unchecked: {slipped} (the sleeper compiled {}, tampered {})",
        sleeper.compiled.load(Ordering::SeqCst),
        sleeper.tampered.load(Ordering::SeqCst),
    );
    assert!(slipped >= 1, "the sleeper's tampering never reached the build");
    drop(unchecked);
    make_clean(&tree, dir);

    // Another agent checks every unit: the sleeper is caught and quarantined there.
    let checking = Agent::start_with(dir, "agent3", &hosts, &[("DISCOMY_VERIFY_RATE", "1")], &[]);
    show.add("agent3 log", &dir.join("agent3.stderr"));
    build(&tree, dir, &checking, &dir.join("cache-3"), "make-checked");
    assert_same_objects(&reference, &objects(&src), "a build checking every unit");
    let v = agent_stats(&checking)["verification"].clone();
    eprintln!("[e2e] sleeper: {v}");
    assert_eq!(v["quarantined"], serde_json::json!([sleeper.addr.to_string()]), "{v}");
    make_clean(&tree, dir);

    // The rebuild through that agent, with the cache the sleeper poisoned: its entries are
    // not served, every object is local-equal.
    build(&tree, dir, &checking, &cache, "make-rebuild");
    assert_same_objects(&reference, &objects(&src), "the rebuild after the quarantine");
    let dropped = quarantined_entries(&cache);
    assert!(dropped as usize >= slipped, "{slipped} tampered objects cached, {dropped} dropped");
}
