//! An icecream toolchain tarball (made by Debian's `icecc-create-env`, named by `ICECC_VERSION`)
//! is accepted as the toolchain source: units compile remotely with the tarball's compiler, the
//! worker receives it once, and the objects are byte-identical to a local compile.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs;
use std::process::Command;

use discomy_tests::{Farm, agent_stats, bin, clean_command, extract_lua, read_stats, worker_stats};

const FLAGS: &[&str] =
    &["-std=gnu99", "-O2", "-Wall", "-Wextra", "-DLUA_COMPAT_5_3", "-DLUA_USE_LINUX"];

#[test]
fn icecc_tarball_is_a_toolchain_source() {
    let tmp = tempfile::tempdir().unwrap();
    let envdir = tmp.path().join("icecc-env");
    fs::create_dir_all(&envdir).unwrap();
    let out = Command::new("icecc-create-env")
        .args(["--gcc", "/usr/bin/gcc", "/usr/bin/g++"])
        .current_dir(&envdir)
        .output()
        .expect("icecc-create-env (Debian package icecc; run scripts/setup-debian.sh)");
    assert!(
        out.status.success(),
        "icecc-create-env failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tarball = fs::read_dir(&envdir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .expect("icecc-create-env made no tarball");

    let tree = extract_lua(tmp.path());
    let src = tree.join("src");
    let farm = Farm::start(tmp.path(), 1, 2);
    let stats = tmp.path().join("stats.tsv");
    let cache = tmp.path().join("cache");
    for unit in ["lapi.c", "lvm.c", "ltable.c"] {
        let obj = unit.replace(".c", ".o");
        let local = clean_command("gcc")
            .current_dir(&src)
            .args(FLAGS)
            .args(["-c", unit, "-o", &format!("local-{obj}")])
            .status()
            .unwrap();
        assert!(local.success());
        let out = clean_command(bin("discomy-cc"))
            .current_dir(&src)
            .env("DISCOMY_SOCKET", &farm.agent.socket)
            .env("DISCOMY_STATS_FILE", &stats)
            .env("DISCOMY_CACHE_DIR", &cache)
            .env("ICECC_VERSION", &tarball)
            .arg("gcc")
            .args(FLAGS)
            .args(["-c", unit, "-o", &format!("farm-{obj}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{unit}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{unit}: wrapper spoke");
        let (a, b) = (
            fs::read(src.join(format!("local-{obj}"))).unwrap(),
            fs::read(src.join(format!("farm-{obj}"))).unwrap(),
        );
        assert!(a == b, "{unit}: object from the icecc toolchain differs from the local one");
    }
    let lines = read_stats(&stats);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().all(|l| l.outcome == "remote"), "not all remote: {lines:?}");
    let agent = agent_stats(&farm.agent.socket);
    assert_eq!(
        agent["store"]["toolchains_pushed"].as_u64(),
        Some(1),
        "the tarball's toolchain should reach the worker exactly once: {agent}"
    );
    let worker = worker_stats(&farm.workers[0].addr);
    let installed = worker["store"]["installed"].as_array().map(Vec::len).unwrap_or(0);
    assert!(installed >= 1, "the worker installed nothing: {worker}");
}
