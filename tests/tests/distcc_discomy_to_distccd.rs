//! discomy sends units to a real distccd 3.4 over protocol 1 (`DISCOMY_HOSTS=distcc://…`) and
//! protocol 2 (`DISTCC_HOSTS=host:port,lzo`, taken over from distcc's own variable): Lua builds
//! byte-identical to a local build, the units ran on distccd (its log counts them), and our LZO
//! encoder's output is what distccd decoded. A dead distccd host means backoff and local compiles.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs;

use discomy_tests::distcc::{Distccd, free_port};
use discomy_tests::{
    Agent, BUILD_TIMEOUT, MAKE_JOBS, Proc, ShowOnFailure, agent_stats, assert_lua_runs,
    assert_same_objects, bin, clean_command, discomy_run, extract_lua, make_clean, make_lua,
    objects, read_summary,
};

#[test]
fn discomy_to_distccd() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = extract_lua(tmp.path());
    make_lua(&tree, "make-local", &[], tmp.path());
    let reference = objects(&tree.join("src"));
    let distccd = Distccd::start(tmp.path(), "distccd", 4);
    let mut show = ShowOnFailure::default();
    show.add("distccd log", &distccd.log);

    let port = distccd.port;
    let cases = [
        ("DISCOMY_HOSTS", format!("distcc://127.0.0.1:{port}")),
        ("DISTCC_HOSTS", format!("localhost/2 127.0.0.1:{port},lzo")),
    ];
    for (var, hosts) in cases {
        make_clean(&tree, tmp.path());
        let before = distccd.compiles_ok();
        let summary_path = tmp.path().join(format!("summary-{var}.json"));
        let mut cmd = discomy_run(&tree, tmp.path());
        cmd.env("XDG_CONFIG_HOME", tmp.path()).env_remove("DISTCC_HOSTS").env(var, &hosts);
        cmd.arg("--summary-json").arg(&summary_path);
        cmd.args(["--", "make", "-C", "src", MAKE_JOBS, "linux"]);
        let mut run = Proc::spawn(&format!("discomy-run-{var}"), &mut cmd, tmp.path());
        let status = run.wait_timeout(BUILD_TIMEOUT);
        assert!(status.success(), "discomy run with {var}={hosts} failed ({status})");
        assert_same_objects(&reference, &objects(&tree.join("src")), &format!("{var}={hosts}"));
        assert_lua_runs(&tree);

        let s = read_summary(&summary_path);
        let ran = distccd.compiles_ok() - before;
        eprintln!("[e2e] {var}={hosts}: {}; distccd compiled {ran}", s.raw.trim());
        assert!(s.remote >= 30, "expected at least 30 remote units: {}", s.raw);
        assert_eq!(s.failed, 0, "failed units: {}", s.raw);
        assert!(
            ran as u64 >= s.remote,
            "distccd logged {ran} compiles for {} remote units",
            s.remote
        );
        assert!(s.raw.contains(&format!("distcc://127.0.0.1:{port}")), "hosts: {}", s.raw);
    }
}

/// A distccd host that is down costs one failed connect: the agent backs off from it and the
/// wrapper compiles locally, with the local compiler's own object.
#[test]
fn dead_distccd_host_falls_back_locally() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    fs::write(dir.join("hello.c"), "int main(void) { return 0; }\n").unwrap();
    let dead = format!("distcc://127.0.0.1:{},lzo", free_port());
    let agent = Agent::start(dir, "agent", &dead);
    for out in ["a.o", "b.o"] {
        let status = clean_command(bin("discomy-cc"))
            .current_dir(dir)
            .env("DISCOMY_SOCKET", &agent.socket)
            .args(["gcc", "-O2", "-c", "hello.c", "-o", out])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let local = clean_command("gcc")
        .current_dir(dir)
        .args(["-O2", "-c", "hello.c", "-o", "l.o"])
        .status()
        .unwrap();
    assert!(local.success());
    assert_eq!(fs::read(dir.join("a.o")).unwrap(), fs::read(dir.join("l.o")).unwrap());
    let stats = agent_stats(&agent.socket);
    assert_eq!(stats["backoffs"], 1, "one attempt, then backoff: {stats}");
}
