//! The farm tier of the object cache: two build hosts (two agents, separate local caches, two
//! build directories) share two workers. The first host's build compiles on the farm and fills
//! the tier; the second host's build is all hits from it, every object byte-identical to a local
//! compile in its own directory. Its units go in source mode with their keys
//! (`CompileSourcesCached`): each is looked up by the worker it is placed on when that worker
//! owns the key, otherwise by the agent, and no hit is counted as a miss too. The workers store
//! what they compiled, under keys they derive from the units.
//!
//! [`a_client_cannot_put_an_object_under_another_unit_s_key`]: a hostile client on the agent's
//! socket (a package's build script in the chroot, say) neither puts an entry nor gets its own
//! unit's object stored under a victim unit's key; the victim's build gets gcc's object.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs;
use std::path::Path;
use std::time::Duration;

use discomy_protocol::cache::Entry;
use discomy_protocol::sources::FarmKeyFacts;
use discomy_protocol::{
    CacheEntry, CachedSources, CompilerId, Digest, Language, OutputKind, Payload, Request,
    Response, SourceCompileRequest, SourceFile,
};
use discomy_tests::{
    Agent, ShowOnFailure, Worker, assert_same_objects, bin, clean_command, extract_lua, hosts_of,
    make_clean, make_lua, make_lua_with_discomy_cc, objects, outcome_counts, read_stats,
    run_to_success,
};
use discomy_wrapper::client::AgentClient;
use discomy_wrapper::invocation::find_on_path;
use discomy_wrapper::source_mode::{Answer, exchange};
use discomy_wrapper::sources::UnitFiles;

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
    // The workers store their entries in the background: give the last ones a moment.
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

const VICTIM: &[u8] = b"int victim(int x) { return x * 3 + 1; }\n";
const EVIL: &[u8] = b"int victim(int x) { return 666; }\n";

/// The entry the farm tier holds under `key`, asked through the agent (`None`: a miss), polled
/// for up to 5 s when `wait` (workers store in the background).
fn farm_entry(socket: &Path, key: Digest, wait: bool) -> Option<Entry> {
    let deadline = std::time::Instant::now() + Duration::from_secs(if wait { 5 } else { 0 });
    loop {
        let mut agent = AgentClient::connect(socket).unwrap();
        if let Response::CacheHit(body) = agent.call(&Request::CacheGet(key)).unwrap() {
            return Some(Entry::decode(&body.decompress(64 << 20).unwrap()).unwrap());
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_client_cannot_put_an_object_under_another_unit_s_key() {
    let tmp = tempfile::tempdir().unwrap();
    let worker = Worker::start(tmp.path(), "worker0", 2);
    let agent = Agent::start(tmp.path(), "agent", &hosts_of(std::slice::from_ref(&worker)));
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("v.c"), VICTIM).unwrap();
    let gcc = |args: &[&str]| {
        let status = clean_command("gcc").current_dir(&src).args(args).status().unwrap();
        assert!(status.success(), "gcc {args:?}");
    };
    gcc(&["-O2", "-c", "v.c", "-o", "reference.o"]);
    let reference = fs::read(src.join("reference.o")).unwrap();

    // The victim's unit as discomy-cc sends it, and its farm-tier key.
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let driver = find_on_path("gcc", &path_var, None).unwrap();
    let tools = discomy_wrapper::toolchain::collect(&driver, &[], &path_var).unwrap();
    let cwd = src.to_str().unwrap().to_string();
    // gcc's implicit `-include stdc-predef.h`, which the wrapper's scan lists too.
    let predef_path = "/usr/include/stdc-predef.h";
    let predef = fs::read(predef_path).unwrap();
    let unit_of = |content: &[u8]| SourceCompileRequest {
        compiler: CompilerId { name: "gcc".into(), identity: tools.manifest.digest() },
        language: Language::C,
        output: OutputKind::Object,
        args: vec!["-O2".into(), "-c".into(), "v.c".into()],
        cwd: cwd.clone(),
        source_name: "v.c".into(),
        files: [(format!("{cwd}/v.c"), content), (predef_path.to_string(), &predef[..])]
            .into_iter()
            .map(|(path, content)| SourceFile {
                path,
                digest: Digest(*blake3::hash(content).as_bytes()),
                size: content.len() as u64,
            })
            .collect(),
        source_date_epoch: None,
        deps: None,
    };
    let key_of = |unit: &SourceCompileRequest, content: &[u8]| {
        let facts = FarmKeyFacts::of_files([content, &predef[..]], &cwd);
        unit.farm_key(unit.farm_key_facts(facts))
    };
    let (victim, evil) = (unit_of(VICTIM), unit_of(EVIL));
    let (victim_key, evil_key) = (key_of(&victim, VICTIM), key_of(&evil, EVIL));

    // 1. A put through the agent is refused (the agent took and forwarded it before).
    let bogus = Entry {
        cwd: cwd.clone(),
        stdout: vec![],
        stderr: vec![],
        object: b"\x7fELF not gcc's".to_vec(),
        dep: None,
        node: Some("worker0".into()),
        farm_key: Some(victim_key),
    };
    let put = Request::CachePut(CacheEntry {
        key: victim_key,
        body: Payload::compress(&bogus.encode().unwrap()),
    });
    let answer = AgentClient::connect(&agent.socket).unwrap().call(&put).unwrap();
    assert!(matches!(answer, Response::Refused(_)), "a client's put was taken: {answer:?}");

    // 2. The evil unit sent with the victim's key: compiled, and stored under its own key only.
    let files = UnitFiles {
        files: evil.files.clone(),
        contents: [(evil.files[0].digest, EVIL.to_vec()), (evil.files[1].digest, predef.clone())]
            .into_iter()
            .collect(),
    };
    let lying = Request::CompileSourcesCached(CachedSources {
        key: victim_key,
        unit: evil,
        store_at: None,
    });
    let mut hostile = AgentClient::connect(&agent.socket).unwrap();
    match exchange(&mut hostile, &tools, &files, &lying, None) {
        Ok(Answer::Compiled(result, _)) => {
            assert_eq!(result.exit_code, 0, "{}", String::from_utf8_lossy(&result.stderr));
        }
        Ok(Answer::FarmHit { .. }) => panic!("a farm hit for a unit never compiled"),
        Err(_) => panic!("the hostile unit was not compiled"),
    }
    let stored = farm_entry(&agent.socket, evil_key, true).expect("the worker stored its entry");
    assert_eq!(stored.farm_key, Some(evil_key));
    assert!(farm_entry(&agent.socket, victim_key, false).is_none(), "stored under the lie");

    // 3. The victim's build: gcc's object, not a farm hit; the farm then holds it under the key
    // computed above, so that key was the one the victim asked for.
    let stats = tmp.path().join("victim.stats");
    let status = clean_command(bin("discomy-cc"))
        .current_dir(&src)
        .args(["gcc", "-O2", "-c", "v.c", "-o", "v.o"])
        .env("DISCOMY_CACHE", "1")
        .env("DISCOMY_CACHE_DIR", tmp.path().join("victim-cache"))
        .env("DISCOMY_SOCKET", &agent.socket)
        .env("DISCOMY_STATS_FILE", &stats)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(fs::read(src.join("v.o")).unwrap(), reference, "the victim got another object");
    let lines = read_stats(&stats);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].outcome, "remote", "{lines:?}");
    let entry = farm_entry(&agent.socket, victim_key, true).expect("the victim's entry");
    assert_eq!(entry.object, reference);
    // The node that made it, by the name quarantines use: an entry of a quarantined node is
    // never served.
    assert!(entry.node.as_deref().is_some_and(|n| worker.host_spec().starts_with(n)), "{entry:?}");
}
