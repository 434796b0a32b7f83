//! The distcc listener refuses hostile or unsupported requests with an explicit reply (`DONE`, a
//! non-zero `STAT`, an `SERR` saying why, `DOTO` of length 0), runs nothing for them, and keeps
//! serving: a client outside `--allow`, gcc's `-wrapper` and `@file`, a foreign compiler path, a
//! malformed token stream, oversized counts, a decompression bomb, and pump mode.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs;
use std::path::Path;

use discomy_protocol::distcc::tokens::{Limits, Reply, Request, Version, read_reply};
use discomy_tests::distcc::{distcc_env, distcc_worker, raw_exchange};
use discomy_tests::{clean_command, worker_stats};

const HELLO: &str = "#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n";

fn preprocessed(dir: &Path) -> Vec<u8> {
    fs::write(dir.join("hello.c"), HELLO).unwrap();
    let out =
        clean_command("gcc").current_dir(dir).args(["-O2", "-E", "hello.c"]).output().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn request(version: Version, argv: &str, source: &[u8]) -> Vec<u8> {
    let argv = argv.split(' ').map(String::from).collect();
    Request { version, argv, source: source.to_vec() }.encode()
}

/// Sends `bytes`, parses the answer, and checks it is a refusal with `code` saying `why`.
fn assert_refused(port: u16, version: Version, bytes: &[u8], code: i32, why: &str) -> Reply {
    let answer = raw_exchange(port, bytes);
    let reply = read_reply(&mut &answer[..], version, &Limits::default()).unwrap_or_else(|e| {
        panic!("no well-formed refusal ({e}): {:?}", String::from_utf8_lossy(&answer))
    });
    let stderr = String::from_utf8_lossy(&reply.stderr).into_owned();
    eprintln!("[e2e] refused with {}: {}", reply.exit_code(), stderr.trim());
    assert_eq!(reply.exit_code(), code, "{stderr}");
    assert!(stderr.contains(why), "expected `{why}` in {stderr:?}");
    assert!(reply.object.is_empty());
    reply
}

#[test]
fn distcc_refusals() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = preprocessed(tmp.path());
    let good = "gcc -O2 -c hello.c -o hello.o";

    // A listener whose --allow does not include loopback.
    let (mut fenced, fport) = distcc_worker(tmp.path(), "fenced", 1, &["--allow", "192.0.2.0/24"]);
    assert_refused(
        fport,
        Version::Plain,
        &request(Version::Plain, good, &source),
        113,
        "access denied",
    );
    // The real client shows the reason (with local retries off) instead of "no answer".
    let mut cmd = clean_command("distcc");
    cmd.current_dir(tmp.path()).args(["gcc", "-O2", "-c", "hello.c", "-o", "fenced.o"]);
    distcc_env(&mut cmd, tmp.path(), &format!("127.0.0.1:{fport}"), &tmp.path().join("fenced.log"));
    let out =
        cmd.env("DISTCC_SKIP_LOCAL_RETRY", "1").env("DISTCC_BACKOFF_PERIOD", "0").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("discomy: access denied"), "{stderr}");
    assert!(fenced.proc.try_wait().is_none(), "the fenced worker died");

    let (mut worker, port) = distcc_worker(tmp.path(), "worker", 2, &[]);
    let marker = tmp.path().join("pwned");
    let wrapper = format!("gcc -wrapper /bin/touch,{} -c hello.c -o hello.o", marker.display());
    assert_refused(
        port,
        Version::Plain,
        &request(Version::Plain, &wrapper, &source),
        101,
        "-wrapper",
    );
    let reply = assert_refused(
        port,
        Version::Plain,
        &request(Version::Plain, "gcc @/etc/os-release -c hello.c -o hello.o", &source),
        101,
        "@/etc/os-release` refused",
    );
    assert!(!String::from_utf8_lossy(&reply.stderr).contains("PRETTY_NAME"));
    let foreign = "/tmp/evil/gcc -c hello.c -o hello.o";
    assert_refused(
        port,
        Version::Plain,
        &request(Version::Plain, foreign, &source),
        101,
        "bare name",
    );
    assert_refused(
        port,
        Version::Lzo,
        &request(Version::Lzo, "mycc -c hello.c -o hello.o", &source),
        110,
        "mycc",
    );
    assert_refused(port, Version::Plain, b"GET / HTTP/1.0\r\n\r\n", 109, "malformed");
    assert_refused(port, Version::Plain, b"DIST00000001ARGC7fffffff", 109, "exceeds the limit");
    assert_refused(
        port,
        Version::Plain,
        b"DIST00000001ARGC00000001ARGV00000003gc",
        109,
        "malformed",
    );

    // A decompression bomb: ~1.1 MB of LZO expanding to ~280 MB, past the 256 MiB cap.
    let mut bomb = vec![18u8, b'A'];
    for _ in 0..1100 {
        bomb.push(32);
        bomb.extend(std::iter::repeat_n(0u8, 1000));
        bomb.extend([1, 0, 0]);
    }
    bomb.extend([0x11, 0, 0]);
    let mut bytes = request(Version::Lzo, good, b"");
    bytes.truncate(bytes.len() - 12); // drop the empty DOTI
    bytes.extend(format!("DOTI{:08x}", bomb.len()).as_bytes());
    bytes.extend(&bomb);
    assert_refused(port, Version::Lzo, &bytes, 109, "expands beyond");

    // Pump mode is refused in its own protocol version: lsdistcc marks the host down for it.
    let out = clean_command("lsdistcc")
        .args(["-x", "-pgcc", &format!("-r{port}"), "-P3", "127.0.0.1"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("127.0.0.1:{port},lzo,cpp,down")
    );

    // Nothing ran, and the listener still serves a good request.
    assert!(!marker.exists(), "the -wrapper command ran");
    for version in [Version::Plain, Version::Lzo] {
        let answer = raw_exchange(port, &request(version, good, &source));
        let reply = read_reply(&mut &answer[..], version, &Limits::default()).unwrap();
        assert_eq!(reply.status, 0, "{}", String::from_utf8_lossy(&reply.stderr));
        let local = clean_command("gcc")
            .current_dir(tmp.path())
            .args(["-O2", "-c", "hello.c", "-o", "local.o"])
            .status()
            .unwrap();
        assert!(local.success());
        assert_eq!(
            reply.object,
            fs::read(tmp.path().join("local.o")).unwrap(),
            "object differs from local"
        );
    }
    assert!(worker.proc.try_wait().is_none(), "the worker died");
    let stats = worker_stats(&worker.addr);
    assert_eq!(stats["distcc"]["COMPILE_OK"], 2, "only the two good requests compiled: {stats}");
    assert_eq!(stats["distcc"]["REJ_PUMP"], 1, "the pump-mode request: {stats}");
}
