//! A worker without a sandbox (`--insecure-no-sandbox`) runs programs on its host, so it must run
//! only the compilers it seeded from that host: uploads are refused, and a toolchain its store
//! holds from an earlier, sandboxed run is not run either. Before, an uploaded "gcc" whose driver
//! path was the host's `/usr/bin/gcc` was compiled by the host's gcc and counted remote, and an
//! upload could point a driver at another upload's installed file and run it on the host.

use std::fs;
use std::path::Path;

use discomy_protocol::{Payload, RefusalKind, Request, Response};
use discomy_tests::Worker;

use crate::client::{Client, compile_request, describe, strings, worker_with_system_gcc};
use crate::evil_toolchain::{EVIL_CC, Tree};

/// A toolchain that claims to be gcc at the host's gcc path, but whose driver is a script.
fn fake_gcc() -> Tree {
    let mut tree = Tree::default();
    tree.host_program(Path::new("/usr/bin/dash"));
    tree.file("/usr/bin/gcc", EVIL_CC.as_bytes().to_vec(), true);
    tree
}

fn refused_no_toolchain(response: &Response) -> bool {
    matches!(response, Response::Refused(r) if r.kind == RefusalKind::NoToolchain)
}

#[test]
fn host_mode_worker_runs_only_its_own_compilers() {
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let dir = tmp.path().canonicalize().unwrap();
    let tree = fake_gcc();
    let manifest = tree.manifest("gcc (fake) 12", "/usr/bin/gcc");

    // A sandboxed worker takes the fake gcc into its store (where the sandbox confines it), and
    // compiles the system gcc's units.
    let (sandboxed, mut client, gcc, unit) = worker_with_system_gcc(&dir);
    let fake = tree.install(&mut client, &manifest).unwrap_or_else(|r| {
        panic!("the sandboxed worker refused a valid toolchain: {}", describe(&r))
    });
    drop(client);
    drop(sandboxed);
    fs::remove_file(dir.join("worker0.addr")).unwrap();

    // The same store, now without a sandbox.
    let worker = Worker::start_with(&dir, "worker0", 2, &["--insecure-no-sandbox"]);
    let mut client = Client::connect(worker.addr);
    let mut problems = Vec::new();

    let compiled = client.call(&compile_request(gcc, "gcc", &strings(&["-O2"]), &unit));
    if !matches!(&compiled, Response::Compiled(r) if r.exit_code == 0 && r.output.is_some()) {
        problems.push(format!("its own gcc did not compile: {}", describe(&compiled)));
    }
    let held = client.call(&compile_request(fake, "gcc", &strings(&["-O2"]), b"hello\n"));
    if !refused_no_toolchain(&held) {
        problems.push(format!("a toolchain from its store ran on the host: {}", describe(&held)));
    }
    client.ping("a stored toolchain");

    let blob = client.call(&Request::PutBlob(Payload::compress(EVIL_CC.as_bytes())));
    if !refused_no_toolchain(&blob) {
        problems.push(format!("a blob upload was taken: {}", describe(&blob)));
    }
    client.ping("a blob upload");
    let mut other_tree = tree.clone();
    other_tree.file("/usr/bin/gcc", b"#!/usr/bin/dash\necho other\n".to_vec(), true);
    let other = other_tree.manifest("gcc (another fake) 12", "/usr/bin/gcc");
    match other_tree.install(&mut client, &other) {
        Err(r) if refused_no_toolchain(&r) => {}
        Err(r) => problems.push(format!("an install was answered with {}", describe(&r))),
        Ok(d) => problems.push(format!("an uploaded toolchain {d} was installed")),
    }
    client.ping("an install");
    let uploaded = client.call(&compile_request(other.digest(), "gcc", &strings(&[]), b"x\n"));
    if !refused_no_toolchain(&uploaded) {
        problems.push(format!("an uploaded toolchain ran: {}", describe(&uploaded)));
    }
    assert!(problems.is_empty(), "host mode:\n{}", problems.join("\n"));
}
