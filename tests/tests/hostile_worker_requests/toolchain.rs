//! A hostile toolchain on a worker with tight limits: its "compiler" tries to write outside its
//! directory, read host files, reach the network, burn CPU, fork-bomb and exhaust memory, and
//! manifests with symlinks out of the tree try to place files on the host. All are confined,
//! and a worker killed while a unit spins leaves none of its processes behind.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use discomy_protocol::Response;
use discomy_tests::{Worker, clean_command};

use crate::client::{Client, describe, unique_tag};
use crate::evil_toolchain::{
    EVIL_CC, EVIL_TOOL, RemoveOnDrop, Tree, check, evil_processes, names_with, run_evil,
};

/// The limits of the worker that runs the hostile toolchain.
const CPU_SECS: u64 = 5;
const MEM_MB: u64 = 512;
const COMPILE_TIMEOUT_SECS: u64 = 10;

#[test]
fn hostile_toolchain_is_confined() {
    // Not under /tmp: inside the sandbox /tmp is the unit directory, which would hide the
    // host paths the script aims at.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let dir = tmp.path().canonicalize().unwrap();
    let tag = unique_tag();
    assert!(!Path::new("/usr/bin/evil-cc").exists(), "this host has a /usr/bin/evil-cc");
    let dir_s = dir.to_str().unwrap().to_owned();

    let tool_src = dir.join("evil-tool.c");
    fs::write(&tool_src, EVIL_TOOL).unwrap();
    let tool = dir.join("evil-tool");
    let out = clean_command("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(&tool)
        .arg(&tool_src)
        .output()
        .unwrap();
    assert!(out.status.success(), "gcc -static: {}", String::from_utf8_lossy(&out.stderr));
    let secret = dir.join(format!("secret-{tag}"));
    fs::write(&secret, format!("TOPSECRET-{tag}\n")).unwrap();

    let mut base = Tree::default();
    base.host_program(Path::new("/usr/bin/dash"));
    base.file("/usr/bin/evil-cc", EVIL_CC.as_bytes().to_vec(), true);
    base.file("/usr/bin/evil-tool", fs::read(&tool).unwrap(), true);
    base.symlink("/usr/share/discomy-leak", "/etc/passwd");
    let manifest = base.manifest("evil-cc 1 (dash script)", "/usr/bin/evil-cc");
    eprintln!("[e2e] hostile toolchain: {:#?}", manifest.entries);

    let limits = [
        "--cpu-secs".to_owned(),
        CPU_SECS.to_string(),
        "--mem-mb".to_owned(),
        MEM_MB.to_string(),
        "--compile-timeout".to_owned(),
        COMPILE_TIMEOUT_SECS.to_string(),
    ];
    let limits: Vec<&str> = limits.iter().map(String::as_str).collect();
    let mut worker = Worker::start_with(&dir, "worker0", 2, &limits);
    let mut client = Client::connect(worker.addr);
    let identity = base.install(&mut client, &manifest).unwrap_or_else(|r| {
        panic!("the worker refused a valid toolchain (dash, libc, a script): {}", describe(&r))
    });
    client.ping("the install");

    let mut problems: Vec<String> = Vec::new();

    // The harness works: the script runs, inside the sandbox (its working directory is the unit
    // directory at /tmp), and its object comes back. Anything else stops the test before the
    // destructive cases.
    let hello = run_evil(&mut client, identity, "hello\n");
    assert!(
        hello.compiled_ok() && hello.stdout().contains("evil-cc: hello from /tmp,"),
        "the hostile toolchain's harmless mode did not run in a sandbox: {}",
        hello.text
    );

    // (a) Writes outside its directory.
    let host_markers: Vec<PathBuf> = vec![
        PathBuf::from(format!("/etc/discomy-marker-{tag}")),
        PathBuf::from(format!("/usr/discomy-marker-{tag}")),
        PathBuf::from(format!("/discomy-marker-{tag}")),
        PathBuf::from("/usr/bin/evil-cc"),
    ];
    let _cleanup = RemoveOnDrop(host_markers.clone());
    let write = run_evil(&mut client, identity, &format!("write {tag} {dir_s}\n"));
    let mut leaked: Vec<PathBuf> = host_markers.iter().filter(|p| p.exists()).cloned().collect();
    leaked.extend(names_with(&dir, &format!("discomy-marker-{tag}")));
    check(
        &mut problems,
        leaked.is_empty(),
        format!("write: files created on the host: {leaked:?}"),
    );
    check(
        &mut problems,
        !write.stdout().contains("WROTE"),
        format!("write: the script wrote: {}", write.text),
    );
    check(
        &mut problems,
        !matches!(write.response, Response::Compiled(_)) || write.stdout().contains("denied /etc/"),
        format!("write: the script did not report its attempts: {}", write.text),
    );

    // Reads of host files, directly and through a symlink in the tree.
    let read = run_evil(&mut client, identity, &format!("read {tag} {dir_s}\n"));
    check(
        &mut problems,
        !read.text.contains("root:") && !read.text.contains("TOPSECRET"),
        format!("read: host files leaked: {}", read.text),
    );

    // Its output made a link to a host file it cannot read itself, or to a device, or a FIFO:
    // the worker must not read any of them for it (the link is followed on the host, outside
    // the sandbox) and must not hang or fill its memory.
    let secret_s = secret.to_str().unwrap();
    for (mode, what) in [
        (format!("link {secret_s}\n"), "a link to a host file"),
        ("link /etc/shadow\n".to_owned(), "a link to /etc/shadow"),
        ("link /dev/zero\n".to_owned(), "a link to /dev/zero"),
        ("link /dev/null\n".to_owned(), "a link to /dev/null"),
        ("fifo\n".to_owned(), "a FIFO"),
        ("text\n".to_owned(), "a text file"),
    ] {
        let got = run_evil(&mut client, identity, &mode);
        let returned = match &got.response {
            Response::Compiled(r) => r.output.as_ref().map(|p| p.decompress(64 << 20)),
            _ => None,
        };
        check(
            &mut problems,
            returned.is_none() && !got.text.contains("TOPSECRET"),
            format!("output as {what}: the worker answered with an object: {}", got.text),
        );
        check(
            &mut problems,
            got.elapsed < Duration::from_secs(COMPILE_TIMEOUT_SECS),
            format!("output as {what}: the answer took {:.1?}", got.elapsed),
        );
    }

    // Kernel interfaces a compiler never needs (namespaces, ptrace, io_uring, bpf, …) are
    // filtered, while ordinary children still start.
    let calls = run_evil(&mut client, identity, "syscalls\n");
    check(
        &mut problems,
        calls.compiled_ok()
            && calls.stdout().matches(": filtered").count() == 10
            && calls.stdout().contains("fork: works"),
        format!("syscalls: not all filtered, or fork broken: {}", calls.stdout()),
    );

    // (b) The network.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let net = run_evil(&mut client, identity, &format!("net {port}\n"));
    std::thread::sleep(Duration::from_millis(300));
    let accepted = match listener.accept() {
        Ok((_, peer)) => Some(peer.to_string()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => Some(format!("accept error {e}")),
    };
    check(
        &mut problems,
        accepted.is_none(),
        format!("net: the listener got a connection from {accepted:?}"),
    );
    check(
        &mut problems,
        !net.stdout().contains("CONNECTED"),
        format!("net: the program connected: {}", net.text),
    );

    assert!(
        problems.is_empty(),
        "the sandbox leaks; stopping before the CPU, fork and memory cases:\n{}",
        problems.join("\n")
    );

    // (c) CPU and processes end by the limits: a busy loop (CPU time), a shell fork bomb (the
    // process limit makes dash give up) and one that keeps forking (the wall-time limit).
    let limit = Duration::from_secs(COMPILE_TIMEOUT_SECS + 15);
    for mode in ["spin", "bomb", "cbomb"] {
        let outcome = run_evil(&mut client, identity, &format!("{mode}\n"));
        check(
            &mut problems,
            !outcome.compiled_ok(),
            format!("{mode}: reported as a success: {}", outcome.text),
        );
        check(
            &mut problems,
            outcome.elapsed < limit,
            format!(
                "{mode}: took {:.1?} (limits: {CPU_SECS} s CPU, {COMPILE_TIMEOUT_SECS} s wall)",
                outcome.elapsed
            ),
        );
        let started = Instant::now();
        let mut left = evil_processes();
        while !left.is_empty() && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
            left = evil_processes();
        }
        check(&mut problems, left.is_empty(), format!("{mode}: processes left running: {left:?}"));
    }

    // (d) Memory.
    let mem = run_evil(&mut client, identity, "mem\n");
    check(
        &mut problems,
        !mem.text.contains("TOUCHED ALL"),
        format!("mem: 2 GiB allocated under a {MEM_MB} MB limit: {}", mem.text),
    );

    // The tree is intact: the harmless mode still works.
    let again = run_evil(&mut client, identity, "hello\n");
    check(&mut problems, again.compiled_ok(), format!("hello after the attacks: {}", again.text));

    // A symlink to / at the top of the tree, read and written through.
    let mut rooted = base.clone();
    rooted.symlink("/hostroot", "/");
    let rooted_manifest = rooted.manifest("evil-cc 1 (with /hostroot)", "/usr/bin/evil-cc");
    match rooted.install(&mut client, &rooted_manifest) {
        Ok(id) => {
            let read = run_evil(&mut client, id, &format!("read {tag} {dir_s} /hostroot\n"));
            check(
                &mut problems,
                !read.text.contains("root:") && !read.text.contains("TOPSECRET"),
                format!("/hostroot: host files leaked: {}", read.text),
            );
            let _ = run_evil(&mut client, id, &format!("write {tag} {dir_s} /hostroot\n"));
            let mut leaked: Vec<PathBuf> =
                host_markers.iter().filter(|p| p.exists()).cloned().collect();
            leaked.extend(names_with(&dir, &format!("discomy-marker-{tag}")));
            check(
                &mut problems,
                leaked.is_empty(),
                format!("/hostroot: files created on the host: {leaked:?}"),
            );
        }
        Err(r) => eprintln!("[e2e] /hostroot toolchain refused: {}", describe(&r)),
    }
    client.ping("the /hostroot toolchain");

    // Manifests whose files lie under a symlink that points out of the tree.
    let escapes = [
        ("/usr/lib/discomy-evil", "/etc".to_owned(), PathBuf::from("/etc")),
        ("/usr/up", "../".repeat(12) + "etc", PathBuf::from("/etc")),
        ("/usr/lib/discomy-out", dir_s.clone(), dir.clone()),
    ];
    for (i, (link, target, host_dir)) in escapes.iter().enumerate() {
        let name = format!("discomy-escape{i}-{tag}");
        let mut tree = base.clone();
        tree.symlink(link, target);
        tree.file(&format!("{link}/{name}"), format!("pwned {i}\n").into_bytes(), false);
        let m = tree.manifest(&format!("evil-cc escape {i}"), "/usr/bin/evil-cc");
        let written = host_dir.join(&name);
        let _cleanup = RemoveOnDrop(vec![written.clone()]);
        let result = tree.install(&mut client, &m);
        eprintln!("[e2e] escape through {link} -> {target}: {result:?}");
        if written.exists() {
            problems.push(format!(
                "installing a tree with {link} -> {target} wrote {} on the host ({result:?})",
                written.display()
            ));
        }
        client.ping(&format!("the escape through {link}"));
    }

    Client::connect(worker.addr).ping("the hostile toolchain (new connection)");
    assert!(worker.proc.try_wait().is_none(), "the worker died");

    // (e) Last: a worker killed (SIGKILL) while a unit spins leaves no compile behind. The
    // spin would run on to its CPU limit (5 s) without the helper's parent-death signal.
    let mut spinner = Client::connect(worker.addr);
    spinner.send(&crate::client::compile_request(identity, "evil-cc", &[], b"spin\n"));
    let started = Instant::now();
    while evil_processes().is_empty() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!evil_processes().is_empty(), "the spinning unit never started");
    let killed = clean_command("kill").args(["-KILL", &worker.proc.pid().to_string()]).status();
    assert!(killed.unwrap().success());
    let killed_at = Instant::now();
    let mut left = evil_processes();
    while !left.is_empty() && killed_at.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
        left = evil_processes();
    }
    check(
        &mut problems,
        left.is_empty(),
        format!("a killed worker left its unit's processes running: {left:?}"),
    );
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}
