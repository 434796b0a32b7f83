//! The client side of the hostile requests: a handshaken TCP connection to a worker with the
//! synchronous protocol API ([`Client`]), readable replies, toolchain installs, compile requests,
//! and the worker holding the system gcc that the argument and source-mode tests start from.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use discomy_protocol::frame::{HEADER_LEN, MAX_FRAME_LEN, decode, write_frame};
use discomy_protocol::handshake::client_handshake;
use discomy_protocol::{
    AuthConfig, CompileRequest, CompilerId, Digest, Language, OutputKind, Payload, Request,
    Response, ToolchainManifest,
};
use discomy_tests::{Worker, clean_command};
use discomy_wrapper::invocation::find_on_path;
use discomy_wrapper::toolchain::collect;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one reply may take (an upload of the system gcc, a compile that hits its limits).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

fn path_var() -> OsString {
    std::env::var_os("PATH").unwrap_or_default()
}

/// A unique tag for marker file names.
pub(crate) fn unique_tag() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// A client connection to a worker, after the handshake.
pub(crate) struct Client {
    stream: TcpStream,
}

impl Client {
    pub(crate) fn connect(addr: SocketAddr) -> Client {
        let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(REPLY_TIMEOUT)).unwrap();
        client_handshake(&mut stream, &AuthConfig::none())
            .unwrap_or_else(|e| panic!("handshake with {addr}: {e}"));
        Client { stream }
    }

    /// Sends `request`; returns the reply's frame body and the reply.
    pub(crate) fn call_raw(&mut self, request: &Request) -> (Vec<u8>, Response) {
        write_frame(&mut self.stream, request)
            .unwrap_or_else(|e| panic!("sending {}: {e}", request_name(request)));
        let mut header = [0u8; HEADER_LEN];
        self.stream.read_exact(&mut header).unwrap_or_else(|e| {
            panic!("no reply to {} (connection closed or timed out): {e}", request_name(request))
        });
        let len = u32::from_be_bytes(header) as usize;
        assert!(len <= MAX_FRAME_LEN, "reply frame of {len} bytes");
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).unwrap();
        let response = decode(&body).unwrap_or_else(|e| panic!("undecodable reply: {e}"));
        (body, response)
    }

    /// Sends `request` without waiting for the reply.
    pub(crate) fn send(&mut self, request: &Request) {
        write_frame(&mut self.stream, request)
            .unwrap_or_else(|e| panic!("sending {}: {e}", request_name(request)));
    }

    pub(crate) fn call(&mut self, request: &Request) -> Response {
        self.call_raw(request).1
    }

    /// Asserts that the worker still serves this connection.
    pub(crate) fn ping(&mut self, after: &str) {
        match self.call(&Request::Ping) {
            Response::Pong => {}
            other => panic!("after {after}: Ping answered with {}", describe(&other)),
        }
    }
}

fn request_name(request: &Request) -> &'static str {
    match request {
        Request::Compile(_) => "Compile",
        Request::Ping => "Ping",
        Request::PutBlob(_) => "PutBlob",
        Request::InstallToolchain(_) => "InstallToolchain",
        Request::CompileSources(_) => "CompileSources",
        Request::PutSource(_) => "PutSource",
        Request::CacheGet(_) => "CacheGet",
        Request::CachePut(_) => "CachePut",
        Request::Report(_) => "Report",
        Request::Stats => "Stats",
        Request::CompileSourcesCached(_) => "CompileSourcesCached",
        Request::Verified(_) => "Verified",
        Request::RememberedFarm => "RememberedFarm",
        Request::LtransStats => "LtransStats",
    }
}

/// A reply, readable (compiler output as text).
pub(crate) fn describe(response: &Response) -> String {
    match response {
        Response::Compiled(r) => format!(
            "Compiled {{ exit_code: {}, output: {:?}, stdout: {:?}, stderr: {:?} }}",
            r.exit_code,
            r.output,
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        ),
        other => format!("{other:?}"),
    }
}

/// Installs `manifest` on the worker (InstallToolchain, MissingBlobs, PutBlob…, Installed).
/// `Err` holds the reply that stopped it.
pub(crate) fn install(
    client: &mut Client,
    manifest: &ToolchainManifest,
    blob: &dyn Fn(&Digest) -> Vec<u8>,
) -> Result<Digest, Box<Response>> {
    let digest = manifest.digest();
    for _ in 0..3 {
        match client.call(&Request::InstallToolchain(manifest.clone())) {
            Response::Installed(d) if d == digest => return Ok(d),
            Response::MissingBlobs(missing) => {
                for d in missing {
                    assert!(
                        manifest.blobs().contains(&d),
                        "the worker asked for a foreign blob {d}"
                    );
                    match client.call(&Request::PutBlob(Payload::compress(&blob(&d)))) {
                        Response::Stored(s) if s == d => {}
                        other => return Err(Box::new(other)),
                    }
                }
            }
            other => return Err(Box::new(other)),
        }
    }
    panic!("toolchain {digest} still not installed after sending its blobs three times");
}

pub(crate) fn compile_request(
    identity: Digest,
    name: &str,
    args: &[String],
    unit: &[u8],
) -> Request {
    Request::Compile(CompileRequest {
        compiler: CompilerId { name: name.to_owned(), identity },
        language: Language::C,
        output: OutputKind::Object,
        args: args.to_vec(),
        source_name: "hostile.c".to_owned(),
        unit: Payload::compress(unit),
        source_date_epoch: None,
    })
}

pub(crate) fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// A worker holding the system gcc's toolchain (seeded, or uploaded here), a connection to it,
/// that toolchain's identity, and a preprocessed unit it compiles.
pub(crate) fn worker_with_system_gcc(dir: &Path) -> (Worker, Client, Digest, Vec<u8>) {
    let worker = Worker::start(dir, "worker0", 2);
    let gcc = find_on_path("gcc", &path_var(), None).expect("gcc on PATH");
    let toolchain = collect(&gcc, &[], &path_var()).unwrap();
    let mut client = Client::connect(worker.addr);
    let started = Instant::now();
    let identity =
        install(&mut client, &toolchain.manifest, &|d| fs::read(&toolchain.sources[d]).unwrap())
            .unwrap_or_else(|r| {
                panic!("the worker would not install the system gcc: {}", describe(&r))
            });
    eprintln!("[e2e] system gcc {identity} on the worker after {:.1?}", started.elapsed());

    let source = dir.join("plain.c");
    fs::write(&source, "int twice(int x) { return 2 * x; }\n").unwrap();
    let out = clean_command(&gcc).args(["-E", "-fdirectives-only"]).arg(&source).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let unit = out.stdout;
    match client.call(&compile_request(identity, "gcc", &strings(&["-O2"]), &unit)) {
        Response::Compiled(r) if r.exit_code == 0 && r.output.is_some() && r.stderr.is_empty() => {}
        other => {
            panic!("a plain -O2 compile with the worker's own gcc failed: {}", describe(&other))
        }
    }
    client.ping("a plain compile");
    (worker, client, identity, unit)
}
