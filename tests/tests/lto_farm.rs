//! Rocky 9's flags through a long-running agent: LTO compile units go to the farm, and the
//! agent's counters (`discomy stats --json`) say what happened.
//!
//! - A unit compiled with `-frandom-seed=…` and `-flto`, `-flto=auto`, `-flto=N` or
//!   `-flto=jobserver`, fat or slim, with and without `-g`, is byte-identical to a local compile. Without a seed gcc names LTO sections randomly, so
//!   two local compiles already differ; then what counts is the link.
//! - Lua built with EL9's full `%optflags` and an `-flto=auto` link, its compiler being
//!   `discomy-cc gcc`: at least 90 % of the units run remotely, and the linked `lua` and `luac`
//!   are byte-identical to a plain local build's in the same directory.
//! - The links' LTRANS units (the partitions `lto-wrapper` compiles after its whole-program
//!   analysis) run on the farm too, counted apart from compile units (`ltrans` in
//!   `discomy stats --json`), and the binaries are still byte-identical.
//! - The counters: links and `-E` are counted apart from units, a `conftest.c` stays local with
//!   its reason, and a rebuild with the object cache on is served from it (LTO objects are cached
//!   like any other), still giving identical binaries.
//! - With every remote result verified (`DISCOMY_VERIFY_RATE=1`), LTRANS units are compiled
//!   locally too and compared byte for byte: no mismatch, no quarantine, identical binaries.
//! - The same build through `discomy run --local-farm 2`: at least 90 % of units and of LTRANS
//!   units remote by its summary, identical binaries.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::Path;
use std::process::Command;

use discomy_tests::lto::run_quietly;
use discomy_tests::{
    Agent, Farm, MAKE_JOBS, Proc, agent_stats, bin, clean_command, discomy_run, extract_lua,
    make_clean, read_summary, run_to_success,
};

/// Rocky Linux 9's `%optflags` for x86_64 (without the redhat specs files, which Debian lacks).
const EL9_CFLAGS: &str = "-O2 -flto=auto -ffat-lto-objects -fexceptions -g \
    -grecord-gcc-switches -pipe -Wall -Werror=format-security -Wp,-D_FORTIFY_SOURCE=2 \
    -Wp,-D_GLIBCXX_ASSERTIONS -fstack-protector-strong -m64 -march=x86-64-v2 -mtune=generic \
    -fasynchronous-unwind-tables -fstack-clash-protection -fcf-protection";

fn count(stats: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = stats;
    for p in path {
        match v.get(p) {
            Some(next) => v = next,
            None => return 0,
        }
    }
    v.as_u64().unwrap_or_else(|| panic!("{path:?} is not a count in {stats}"))
}

/// A command through the wrapper (`discomy-cc gcc …`) with the agent at `socket`.
fn wrapped(dir: &Path, socket: &Path, cache: Option<&Path>) -> Command {
    let mut cmd = clean_command(bin("discomy-cc"));
    cmd.current_dir(dir).env("DISCOMY_SOCKET", socket).arg("gcc");
    if let Some(cache) = cache {
        cmd.env("DISCOMY_CACHE", "1").env("DISCOMY_CACHE_DIR", cache);
    }
    cmd
}

/// `make -C src linux` with Rocky's flags and an LTO link, compiling with `cc`.
fn make_el9(tree: &Path, name: &str, cc: &str, env: &[(&str, &Path)], log_dir: &Path) -> Proc {
    let mut cmd = clean_command("make");
    cmd.current_dir(tree)
        .args(["-C", "src", MAKE_JOBS, "linux"])
        .arg(format!("CC={cc} -std=gnu99"))
        .arg(format!("MYCFLAGS={EL9_CFLAGS}"))
        .arg("MYLDFLAGS=-flto=auto -Wl,-z,relro -Wl,-z,now");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_to_success(name, &mut cmd, log_dir)
}

fn binaries(tree: &Path) -> Vec<(String, Vec<u8>)> {
    ["lua", "luac"]
        .iter()
        .map(|b| (b.to_string(), std::fs::read(tree.join("src").join(b)).unwrap()))
        .collect()
}

#[test]
fn lto_units_go_to_the_farm_and_link_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = extract_lua(tmp.path());
    let src = tree.join("src");
    let farm = Farm::start(tmp.path(), 2, 2);
    let socket = farm.agent.socket.clone();

    // One unit with a fixed seed: byte-identical, for every form of -flto, fat and slim, with
    // and without -g.
    let forms = [
        ["-flto=auto", "-ffat-lto-objects", "-g"],
        ["-flto", "-fno-fat-lto-objects", "-g0"],
        ["-flto=4", "-ffat-lto-objects", "-g0"],
        ["-flto=jobserver", "-fno-fat-lto-objects", "-g"],
    ];
    for (i, form) in forms.iter().enumerate() {
        let args = ["-O2", "-frandom-seed=lapi.o", form[0], form[1], form[2], "-c"];
        let local = format!("seed-local{i}.o");
        let remote = format!("seed-remote{i}.o");
        run_quietly(
            clean_command("gcc").current_dir(&src).args(args).args(["lapi.c", "-o", &local]),
            "local seeded LTO compile",
        );
        run_quietly(
            wrapped(&src, &socket, None).args(args).args(["lapi.c", "-o", &remote]),
            "seeded LTO compile through discomy-cc",
        );
        assert_eq!(
            std::fs::read(src.join(&local)).unwrap(),
            std::fs::read(src.join(&remote)).unwrap(),
            "LTO unit with -frandom-seed ({form:?}) differs from the local compile"
        );
        std::fs::remove_file(src.join(&local)).unwrap();
        std::fs::remove_file(src.join(&remote)).unwrap();
    }
    let seeded = agent_stats(&socket);
    assert_eq!(count(&seeded, &["remote"]), 4, "seeded units were not remote: {seeded}");

    // A conftest stays local, with its reason; -E is not a unit.
    std::fs::write(src.join("conftest.c"), "int main(void) { return 0; }\n").unwrap();
    run_quietly(wrapped(&src, &socket, None).args(["-c", "conftest.c"]), "conftest");
    let out = wrapped(&src, &socket, None).args(["-E", "lapi.c"]).output().unwrap();
    assert!(out.status.success());
    for f in ["conftest.c", "conftest.o"] {
        std::fs::remove_file(src.join(f)).unwrap();
    }

    // The whole project, locally, then through the farm in the same directory.
    make_el9(&tree, "make-local-el9", "gcc", &[], tmp.path());
    let reference = binaries(&tree);
    make_clean(&tree, tmp.path());
    let before = agent_stats(&socket);
    let wrapper = format!("{} gcc", bin("discomy-cc").display());
    make_el9(&tree, "make-farm-el9", &wrapper, &[("DISCOMY_SOCKET", &socket)], tmp.path());
    let after = agent_stats(&socket);
    eprintln!("[e2e] agent stats after the farm build: {after}");
    let delta = |path: &[&str]| count(&after, path) - count(&before, path);
    let (units, remote) = (delta(&["units"]), delta(&["remote"]));
    assert!(units >= 33, "only {units} units counted: {after}");
    assert!(remote * 10 >= units * 9, "{remote} of {units} units remote (< 90 %): {after}");
    assert_eq!(delta(&["failed"]), 0, "{after}");
    assert!(delta(&["other_calls", "link"]) >= 2, "links not counted apart: {after}");
    assert_eq!(count(&after, &["local_reasons", "conftest"]), 1, "{after}");
    assert_eq!(count(&after, &["other_calls", "preprocess"]), 1, "{after}");
    // The links' LTRANS units (partitions) went to the farm too, counted apart from units.
    let (ltrans, ltrans_remote) = (delta(&["ltrans", "units"]), delta(&["ltrans", "remote"]));
    eprintln!("[e2e] LTRANS units: {ltrans_remote} of {ltrans} remote");
    assert!(ltrans_remote >= 2, "LTRANS units did not run remotely: {after}");
    assert!(ltrans_remote * 10 >= ltrans * 9, "{ltrans_remote} of {ltrans} LTRANS units remote");
    assert_eq!(binaries(&tree), reference, "LTO-linked lua/luac differ from the local build");

    // Cached like any other unit: a rebuild with the cache on fills it, the next is all hits.
    let cache = tmp.path().join("cache");
    for round in ["cache-fill", "cache-hit"] {
        make_clean(&tree, tmp.path());
        let before = agent_stats(&socket);
        let env = [("DISCOMY_SOCKET", socket.as_path()), ("DISCOMY_CACHE_DIR", cache.as_path())];
        let mut cmd = clean_command("make");
        cmd.current_dir(&tree)
            .args(["-C", "src", MAKE_JOBS, "linux"])
            .arg(format!("CC={wrapper} -std=gnu99"))
            .arg(format!("MYCFLAGS={EL9_CFLAGS}"))
            .arg("MYLDFLAGS=-flto=auto -Wl,-z,relro -Wl,-z,now")
            .env("DISCOMY_CACHE", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_to_success(round, &mut cmd, tmp.path());
        let after = agent_stats(&socket);
        let hits = count(&after, &["cache_hits"]) - count(&before, &["cache_hits"]);
        let units = count(&after, &["units"]) - count(&before, &["units"]);
        eprintln!("[e2e] {round}: {hits} cache hits of {units} units");
        if round == "cache-hit" {
            assert_eq!(hits, units, "LTO units not served from the cache: {after}");
        }
        assert_eq!(binaries(&tree), reference, "{round}: lua/luac differ from the local build");
    }

    // Verification covers LTRANS units too: with every remote result checked, each partition is
    // compiled locally as well and compared byte for byte; none differs, no node is quarantined.
    let hosts = discomy_tests::hosts_of(&farm.workers);
    let verifying =
        Agent::start_with(tmp.path(), "agent-verify", &hosts, &[("DISCOMY_VERIFY_RATE", "1")], &[]);
    make_clean(&tree, tmp.path());
    let vsocket = verifying.socket.clone();
    make_el9(&tree, "make-verify-el9", &wrapper, &[("DISCOMY_SOCKET", &vsocket)], tmp.path());
    let checked = agent_stats(&vsocket);
    eprintln!("[e2e] agent stats with every result verified: {checked}");
    assert!(count(&checked, &["ltrans", "remote"]) >= 2, "no LTRANS unit remote: {checked}");
    let requested = count(&checked, &["verification", "requested"]);
    assert!(requested >= count(&checked, &["ltrans", "remote"]), "{checked}");
    assert_eq!(count(&checked, &["verification", "checked"]), requested, "{checked}");
    assert_eq!(count(&checked, &["verification", "mismatched"]), 0, "{checked}");
    assert_eq!(checked["verification"]["quarantined"], serde_json::json!([]), "{checked}");
    assert_eq!(binaries(&tree), reference, "verified build: lua/luac differ from the local build");
    drop(verifying);
    drop(farm);

    // Through `discomy run --local-farm 2`, its embedded farm sized for the LTRANS units too: the
    // summary counts them, and the programs are still the local build's.
    make_clean(&tree, tmp.path());
    let summary_path = tmp.path().join("run-summary.json");
    let mut cmd = discomy_run(&tree, tmp.path());
    cmd.args(["--local-farm", "2", "--summary-json"])
        .arg(&summary_path)
        .args(["--", "make", "-C", "src", MAKE_JOBS, "linux", "CC=gcc -std=gnu99"])
        .arg(format!("MYCFLAGS={EL9_CFLAGS}"))
        .arg("MYLDFLAGS=-flto=auto -Wl,-z,relro -Wl,-z,now");
    run_to_success("discomy-run-el9", &mut cmd, tmp.path());
    let summary = read_summary(&summary_path);
    eprintln!("[e2e] discomy run summary: {}", summary.raw.trim());
    let json: serde_json::Value = serde_json::from_str(&summary.raw).unwrap();
    let (units, remote) = (count(&json, &["units"]), count(&json, &["remote"]));
    assert!(units >= 33 && remote * 10 >= units * 9, "{remote} of {units} units remote");
    let (ltrans, ltrans_remote) =
        (count(&json, &["ltrans", "units"]), count(&json, &["ltrans", "remote"]));
    assert!(
        ltrans_remote >= 2 && ltrans_remote * 10 >= ltrans * 9,
        "{ltrans_remote} of {ltrans} LTRANS"
    );
    assert_eq!(binaries(&tree), reference, "discomy run: lua/luac differ from the local build");
}
