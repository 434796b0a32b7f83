//! The real distcc 3.4 client compiles Lua on a compilerd worker's distcc listener, protocol 1
//! (`host:port`) and 2 (`host:port,lzo`): every object is byte-identical to a local build,
//! distcc's own log shows every compile ran on the listener, and `lsdistcc` finds it.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs;

use discomy_tests::distcc::{distcc_env, distcc_worker};
use discomy_tests::{
    MAKE_JOBS, assert_lua_runs, assert_same_objects, clean_command, extract_lua, make_clean,
    make_lua, objects, run_to_success,
};

#[test]
fn distcc_client_to_compilerd() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = extract_lua(tmp.path());
    make_lua(&tree, "make-local", &[], tmp.path());
    let reference = objects(&tree.join("src"));

    let (mut worker, port) = distcc_worker(tmp.path(), "worker", 4, &[]);

    // lsdistcc probes with a real compile (gcc), in protocols 1 and 2.
    for (proto, expected) in
        [("-P1", format!("127.0.0.1:{port}")), ("-P2", format!("127.0.0.1:{port},lzo"))]
    {
        let out = clean_command("lsdistcc")
            .args(["-x", "-pgcc", &format!("-r{port}"), proto, "127.0.0.1"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.trim(), expected, "lsdistcc {proto}: {text}");
    }

    for (label, hosts) in
        [("plain", format!("127.0.0.1:{port}")), ("lzo", format!("127.0.0.1:{port},lzo"))]
    {
        make_clean(&tree, tmp.path());
        let log = tmp.path().join(format!("distcc-{label}.log"));
        let mut cmd = clean_command("make");
        cmd.current_dir(&tree).args(["-C", "src", MAKE_JOBS, "linux", "CC=distcc gcc -std=gnu99"]);
        distcc_env(&mut cmd, tmp.path(), &hosts, &log);
        run_to_success(&format!("make-distcc-{label}"), &mut cmd, tmp.path());
        assert_same_objects(&reference, &objects(&tree.join("src")), &format!("distcc {hosts}"));
        assert_lua_runs(&tree);

        let text = fs::read_to_string(&log).unwrap();
        let remote = text
            .lines()
            .filter(|l| l.contains(&format!(" on {hosts} completed ok")) && l.contains("compile "))
            .count();
        eprintln!("[e2e] distcc {hosts}: {remote} compiles ran on the listener");
        assert_eq!(
            remote,
            reference.len(),
            "every object should have been compiled remotely on {hosts}; distcc log:\n{}",
            text.lines()
                .filter(|l| l.contains("failed") || l.contains("ERROR") || l.contains("warning"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(!text.contains("running locally instead"), "distcc fell back to local compiles");
        assert!(worker.proc.try_wait().is_none(), "the worker died");
    }
}
