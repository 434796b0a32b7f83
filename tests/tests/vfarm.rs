//! The virtual farm (`scripts/vfarm`) end to end, as the README shows it to a newcomer:
//! `vfarm up 3 --fleet` makes three hosts (network namespaces on a private bridge, each pivoted
//! into its own root tree) and installs discomy in each with `scripts/install.sh --root` and
//! `scripts/configure.sh --no-systemd`, as a working fleet (issue 17): h1's coordinator owns the
//! farm CA, h2 and h3 get provisioning bundles, run their `join.sh`, wait as pending, are approved
//! and then take units over mutual TLS; `vfarm build --json` builds Lua 5.4's RPM through the
//! coordinator's queue, the builder of h3 and the workers of h1 and h2; `vfarm status --json`
//! shows the hosts, their daemons and the coordinator's nodes; `vfarm down` removes everything.
//!
//! Asserts: every daemon runs; the job succeeded on h3's builder with the expected RPMs (the
//! binary RPM holds `/usr/bin/lua`); the compile units finished on more than one host (the
//! coordinator's `done_total` per node) and all of the agent's units ran remotely (`discomy stats
//! --json`); after `down`, no namespace, mount, process or file of the farm is left, and a second
//! `down` succeeds. The figures (up time, build time, units per host) are printed.
//!
//! Skipped with a message when not root, without network namespaces, jq, or the rpmbuild chroot
//! of `scripts/setup-chroot.sh` (under `CI` these fail instead).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use discomy_tests::{bin_dir, clean_command, or_skip, queue::chroot_prerequisites, workspace_root};

fn prerequisites() -> Result<(), String> {
    let uid = Command::new("id").arg("-u").output().map_err(|e| format!("id: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not root: network namespaces and mounts need it".to_owned());
    }
    for tool in ["ip", "jq", "unshare", "setpriv", "rpm"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool} >/dev/null"))
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(format!("{tool} is missing (scripts/setup-debian.sh)"));
        }
    }
    let probe = format!("vftprobe{}", std::process::id() % 10_000);
    let made = Command::new("ip").args(["netns", "add", &probe]).output();
    let _ = Command::new("ip").args(["netns", "del", &probe]).output();
    match made {
        Ok(out) if out.status.success() => {}
        _ => return Err("cannot create network namespaces here".to_owned()),
    }
    chroot_prerequisites().map(|_| ())
}

/// The farm of one test: its state directory and names; `down` on drop, also after a failure.
struct Farm {
    dir: PathBuf,
    name: String,
}

impl Farm {
    fn vfarm(&self, args: &[&str]) -> Command {
        let mut cmd = clean_command("bash");
        cmd.arg(workspace_root().join("scripts/vfarm"))
            .args(args)
            .env("VFARM_DIR", &self.dir)
            .env("VFARM_NAME", &self.name);
        cmd
    }

    /// Runs `vfarm ARGS`, asserts success, returns stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = self.vfarm(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "vfarm {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        let _ = self.vfarm(&["down"]).output();
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn namespaces_named(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = format!("{}/", dir.display());
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn vfarm_up_build_status_down() {
    if or_skip("vfarm", prerequisites()).is_none() {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let farm = Farm {
        dir: scratch.path().join("vfarm"),
        name: format!("vft{}", std::process::id() % 10_000),
    };
    let bins = bin_dir();
    let bins = bins.to_str().unwrap();

    let started = Instant::now();
    let up = farm.run(&["up", "3", "--from", bins, "--fleet"]);
    let up_time = started.elapsed();
    eprintln!("[vfarm] up 3 in {up_time:.1?}:\n{up}");

    let status = json(&farm.run(&["status", "--json"]));
    let hosts = status["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{status:#}");
    let mut pids = Vec::new();
    for host in hosts {
        for daemon in host["daemons"].as_array().unwrap() {
            assert_eq!(daemon["running"], true, "a daemon is down: {host:#}");
            pids.push(daemon["pid"].as_u64().unwrap());
        }
    }
    assert_eq!(pids.len(), 5, "coordinator, 2 workers, agent, builder: {status:#}");
    assert_eq!(status["coordinator"]["nodes"].as_array().map(Vec::len), Some(2), "{status:#}");
    assert_eq!(status["agent"]["coordinator_joined"], true, "{status:#}");
    // The working fleet: h1's worker enrolled with the local admin certificate, h2 and h3 joined
    // through their bundles' join.sh, waited as pending, and were approved.
    let fleet = status["fleet"].as_array().unwrap();
    let mut approved: Vec<&str> = fleet
        .iter()
        .filter(|n| n["state"] == "approved")
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    approved.sort_unstable();
    let names: Vec<String> = (1..=3).map(|i| format!("{}-h{i}", farm.name)).collect();
    assert_eq!(approved.len(), 3, "{fleet:?}");
    for name in &names[1..] {
        assert!(approved.contains(&name.as_str()), "{name} not approved: {fleet:?}");
    }

    let started = Instant::now();
    let build = json(&farm.run(&["build", "--json"]));
    let build_time = started.elapsed();
    eprintln!("[vfarm] build in {build_time:.1?}: {build}");
    assert_eq!(build["state"], "succeeded", "{build:#}");
    assert_eq!(build["builder"], format!("{}-h3", farm.name), "{build:#}");
    let rpms: Vec<&str> =
        build["rpms"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    for expected in ["lua-5.4.4-1.el9.x86_64.rpm", "lua-devel-5.4.4-1.el9.x86_64.rpm"] {
        assert!(rpms.contains(&expected), "{expected} not built: {rpms:?}");
    }
    let out = Path::new(build["out"].as_str().unwrap());
    let listed = Command::new("rpm")
        .args(["-qlp"])
        .arg(out.join("lua-5.4.4-1.el9.x86_64.rpm"))
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.lines().any(|l| l == "/usr/bin/lua"), "lua's RPM lacks /usr/bin/lua:\n{listed}");
    let by_host = build["units_by_host"].as_object().unwrap();
    let busy: Vec<&String> =
        by_host.iter().filter(|(_, n)| n.as_u64().unwrap_or(0) > 0).map(|(h, _)| h).collect();
    assert!(busy.len() >= 2, "units ran on fewer than two hosts: {by_host:?}");
    let units = build["agent"]["units"].as_u64().unwrap();
    let remote = build["agent"]["remote"].as_u64().unwrap();
    assert!(units >= 20 && remote == units, "agent: {}", build["agent"]);
    let finished: u64 = by_host.values().map(|n| n.as_u64().unwrap()).sum();
    assert!(finished >= remote, "the workers finished {finished} units, the agent sent {remote}");

    let status = json(&farm.run(&["status", "--json"]));
    assert!(status["agent"]["remote"].as_u64().unwrap() >= remote, "{status:#}");

    // configure.sh on a live host, as its administrator would run it again: same settings (its
    // certificate is kept, no join token needed), so the running worker is left alone; then --stop stops it (and only it).
    let worker_pid = status["hosts"][1]["daemons"][0]["pid"].as_u64().unwrap();
    let again = farm.run(&[
        "exec",
        "2",
        "/usr/libexec/discomy/configure.sh",
        "--no-systemd",
        "--role",
        "worker",
        "--coordinator",
        "10.77.0.1:3634",
        "--slots",
        "2",
    ]);
    assert!(again.contains(&format!("worker runs (pid {worker_pid}), unchanged")), "{again}");
    assert!(!again.contains("wrote"), "the same configuration was written again:\n{again}");
    let stopped = farm.run(&["exec", "2", "/usr/libexec/discomy/configure.sh", "--stop"]);
    assert!(stopped.contains(&format!("stopped worker (pid {worker_pid})")), "{stopped}");
    let status = json(&farm.run(&["status", "--json"]));
    assert_eq!(status["hosts"][1]["daemons"][0]["running"], false, "{status:#}");
    assert_eq!(status["hosts"][0]["daemons"][1]["running"], true, "h1's worker: {status:#}");

    let started = Instant::now();
    farm.run(&["down"]);
    eprintln!(
        "[vfarm] figures: up {up_time:.1?}, build {build_time:.1?} ({units} units: {}), down {:.1?}",
        build["units_by_host"],
        started.elapsed()
    );
    assert_eq!(namespaces_named(&format!("{}-", farm.name)), Vec::<String>::new());
    assert_eq!(mounts_under(&farm.dir), Vec::<String>::new());
    for pid in &pids {
        // A live process of that pid that is not discomy's is a reused pid, not a leftover.
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        assert!(!exe.to_string_lossy().contains("discomy"), "pid {pid} outlived vfarm down");
    }
    assert!(!farm.dir.exists(), "{} is left", farm.dir.display());
    farm.run(&["down"]);
}
