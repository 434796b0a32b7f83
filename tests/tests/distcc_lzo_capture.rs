//! Our LZO1X decoder reads what the real distcc 3.4 client sends with `,lzo`: a tiny recorder
//! stands in for a server, captures the request, and answers with an explicit refusal (the client
//! then compiles locally and succeeds). The captured `DOTI` decodes to the client's cpp output,
//! and our encoder's output of it round-trips.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;

use discomy_protocol::distcc::lzo;
use discomy_protocol::distcc::tokens::{Limits, Reply, Version, read_request};
use discomy_tests::clean_command;
use discomy_tests::distcc::distcc_env;

/// Records everything read through it.
struct Tee<R> {
    inner: R,
    seen: Vec<u8>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

#[test]
fn distcc_lzo_capture() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    // Big enough for long matches and literal runs: a real header set.
    let source = "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n\
                  int main(int c, char **v) { printf(\"%zu\\n\", strlen(v[0])); return c > 1 ? atoi(v[1]) : 0; }\n";
    fs::write(dir.join("cap.c"), source).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let recorder = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut tee = Tee { inner: stream, seen: Vec::new() };
        let request = read_request(&mut tee, &Limits::default()).unwrap();
        let mut stream = tee.inner;
        stream
            .write_all(&Reply::refusal(114, "recorder: not compiling").encode(request.version))
            .unwrap();
        (request, tee.seen)
    });

    let mut cmd = clean_command("distcc");
    cmd.current_dir(dir).args(["gcc", "-O2", "-c", "cap.c", "-o", "cap.o"]);
    distcc_env(&mut cmd, dir, &format!("127.0.0.1:{port},lzo"), &dir.join("distcc.log"));
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "distcc fell back locally and should succeed: {out:?}");
    assert!(fs::read_to_string(dir.join("distcc.log")).unwrap().contains("exit code 114"));
    let (request, wire) = recorder.join().unwrap();

    assert!(wire.starts_with(b"DIST00000002ARGC"), "{:?}", String::from_utf8_lossy(&wire[..16]));
    assert_eq!(request.version, Version::Lzo);
    assert!(request.argv.iter().any(|a| a == "cap.c"), "{:?}", request.argv);
    let doti_at = wire.windows(4).rposition(|w| w == b"DOTI").unwrap();
    let body = &wire[doti_at + 12..];
    assert_eq!(&body[body.len() - 3..], &[0x11, 0, 0], "LZO end-of-stream marker");

    let cpp = clean_command("gcc").current_dir(dir).args(["-O2", "-E", "cap.c"]).output().unwrap();
    assert!(cpp.status.success());
    assert_eq!(request.source, cpp.stdout, "decoded DOTI differs from the client's cpp output");
    eprintln!(
        "[e2e] captured DOTI: {} bytes on the wire, {} decoded; our encoder: {} bytes ({})",
        body.len(),
        request.source.len(),
        lzo::compress(&request.source).len(),
        if lzo::compress(&request.source) == body {
            "byte-identical to distcc's"
        } else {
            "differs"
        }
    );
    let ours = lzo::compress(&request.source);
    assert_eq!(lzo::decompress(&ours, 1 << 30).unwrap(), request.source);
}
