//! Requests a hostile client sends straight to a worker over TCP, with the synchronous protocol
//! API: compile arguments that would run programs or read host files (`-wrapper`, `-B`,
//! `-fplugin=`/`-specs=`/`-iplugindir=` outside the toolchain, `@/etc/passwd`), and a hostile
//! *toolchain* whose "compiler" is a dash script that tries to write outside its directory, read
//! host files, reach the network, burn CPU, fork-bomb and exhaust memory, plus manifests whose
//! symlinks point a file out of the tree.
//!
//! Every attack is first shown to work against the local gcc where that makes sense (so a refusal
//! means something). On the worker each one is refused or confined, nothing reaches the host, and
//! after each one the worker still answers `Ping` with `Pong` on the same connection.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use discomy_protocol::frame::{HEADER_LEN, MAX_FRAME_LEN, decode, write_frame};
use discomy_protocol::handshake::client_handshake;
use discomy_protocol::{
    AuthConfig, CompileRequest, CompilerId, Digest, EntryKind, Language, OutputKind, Payload,
    RefusalKind, Request, Response, ToolchainManifest,
};
use discomy_tests::{Worker, clean_command};
use discomy_wrapper::invocation::find_on_path;
use discomy_wrapper::toolchain::collect;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one reply may take (an upload of the system gcc, a compile that hits its limits).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// The limits of the worker that runs the hostile toolchain.
const CPU_SECS: u64 = 5;
const MEM_MB: u64 = 512;
const COMPILE_TIMEOUT_SECS: u64 = 10;

fn path_var() -> OsString {
    std::env::var_os("PATH").unwrap_or_default()
}

/// A unique tag for marker file names.
fn unique_tag() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// A client connection to a worker, after the handshake.
struct Client {
    stream: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let mut stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(REPLY_TIMEOUT)).unwrap();
        client_handshake(&mut stream, &AuthConfig::none())
            .unwrap_or_else(|e| panic!("handshake with {addr}: {e}"));
        Client { stream }
    }

    /// Sends `request`; returns the reply's frame body and the reply.
    fn call_raw(&mut self, request: &Request) -> (Vec<u8>, Response) {
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

    fn call(&mut self, request: &Request) -> Response {
        self.call_raw(request).1
    }

    /// Asserts that the worker still serves this connection.
    fn ping(&mut self, after: &str) {
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
    }
}

/// A reply, readable (compiler output as text).
fn describe(response: &Response) -> String {
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
fn install(
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

fn compile_request(identity: Digest, name: &str, args: &[String], unit: &[u8]) -> Request {
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

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

// ---------------------------------------------------------------------------------------------
// Hostile arguments, with the system gcc (a toolchain the worker holds).
// ---------------------------------------------------------------------------------------------

/// A worker holding the system gcc's toolchain (seeded, or uploaded here), a connection to it,
/// that toolchain's identity, and a preprocessed unit it compiles.
fn worker_with_system_gcc(dir: &Path) -> (Worker, Client, Digest, Vec<u8>) {
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

/// Runs the local gcc with `args` on a small file in `dir` (the attack works here).
fn run_local_gcc(dir: &Path, args: &[String]) -> std::process::Output {
    let source = dir.join("local.c");
    fs::write(&source, "int main(void) { return 0; }\n").unwrap();
    clean_command("gcc")
        .current_dir(dir)
        .args(args)
        .arg("-c")
        .arg(&source)
        .arg("-o")
        .arg(dir.join("local.o"))
        .output()
        .unwrap()
}

/// A gcc plugin whose `plugin_init` creates `marker`.
fn build_marker_plugin(dir: &Path, marker: &Path) -> PathBuf {
    let source = dir.join("evilplugin.cc");
    fs::write(
        &source,
        format!(
            "#include <cstdio>\nextern \"C\" {{\nint plugin_is_GPL_compatible;\n\
             int plugin_init(void *, void *) {{\n  std::FILE *f = std::fopen({:?}, \"w\");\n  \
             if (f) std::fclose(f);\n  return 0;\n}}\n}}\n",
            marker.to_str().unwrap()
        ),
    )
    .unwrap();
    let plugin = dir.join("evilplugin.so");
    let out = clean_command("g++")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&plugin)
        .arg(&source)
        .output()
        .unwrap();
    assert!(out.status.success(), "g++ plugin: {}", String::from_utf8_lossy(&out.stderr));
    plugin
}

#[test]
fn hostile_arguments_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().canonicalize().unwrap();
    let (mut worker, mut client, identity, unit) = worker_with_system_gcc(&dir);

    let marker = |what: &str| dir.join(format!("marker-{what}"));
    let plugin = build_marker_plugin(&dir, &marker("plugin"));
    let bdir = dir.join("bdir");
    fs::create_dir(&bdir).unwrap();
    let fake_cc1 = bdir.join("cc1");
    fs::write(&fake_cc1, format!("#!/bin/sh\ntouch '{}'\nexit 1\n", marker("b").display()))
        .unwrap();
    fs::set_permissions(&fake_cc1, fs::Permissions::from_mode(0o755)).unwrap();
    let specs = dir.join("evil.specs");
    fs::write(&specs, format!("*cc1_options:\n+ -fplugin={}\n", plugin.display())).unwrap();

    let attacks: Vec<(&str, Vec<String>, PathBuf)> = vec![
        (
            "-wrapper",
            vec![
                "-O2".into(),
                "-wrapper".into(),
                format!("/bin/sh,-c,touch {}", marker("wrapper").display()),
            ],
            marker("wrapper"),
        ),
        ("-B", vec!["-O2".into(), format!("-B{}/", bdir.display())], marker("b")),
        (
            "-fplugin=",
            vec!["-O2".into(), format!("-fplugin={}", plugin.display())],
            marker("plugin"),
        ),
        (
            "-iplugindir=",
            vec![
                "-O2".into(),
                format!("-iplugindir={}", dir.display()),
                "-fplugin=evilplugin".into(),
            ],
            marker("plugin"),
        ),
        ("-specs=", vec!["-O2".into(), format!("-specs={}", specs.display())], marker("plugin")),
    ];

    let mut problems = Vec::new();
    for (name, args, marker) in &attacks {
        // The attack is real: the local gcc runs it.
        let _ = fs::remove_file(marker);
        let local = run_local_gcc(&dir, args);
        assert!(
            marker.exists(),
            "{name}: the local gcc did not create {} ({}), so the attack proves nothing:\n{}",
            marker.display(),
            local.status,
            String::from_utf8_lossy(&local.stderr)
        );
        fs::remove_file(marker).unwrap();

        let response = client.call(&compile_request(identity, "gcc", args, &unit));
        eprintln!("[e2e] {name}: {}", describe(&response));
        match &response {
            Response::Refused(r) if r.kind == RefusalKind::BadArguments => {}
            other => problems.push(format!(
                "{name} {args:?}: expected Refused(BadArguments), got {}",
                describe(other)
            )),
        }
        if marker.exists() {
            problems.push(format!("{name}: the worker created {}", marker.display()));
        }
        client.ping(name);
    }
    Client::connect(worker.addr).ping("the hostile arguments (new connection)");
    assert!(worker.proc.try_wait().is_none(), "the worker died");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn response_files_are_refused_and_not_leaked() {
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    assert!(passwd.contains("root:"), "/etc/passwd has no root entry: the check would be vacuous");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().canonicalize().unwrap();
    let (mut worker, mut client, identity, unit) = worker_with_system_gcc(&dir);

    // The attack is real: gcc reads the file and echoes its words in its errors.
    let local = run_local_gcc(&dir, &strings(&["@/etc/passwd"]));
    assert!(
        String::from_utf8_lossy(&local.stderr).contains("root:"),
        "the local gcc did not leak /etc/passwd: {}",
        String::from_utf8_lossy(&local.stderr)
    );
    // A response file that smuggles a -wrapper in.
    let marker = dir.join("marker-rsp");
    let rsp = dir.join("args.rsp");
    fs::write(&rsp, format!("-wrapper /bin/sh,-c,'touch {}'\n", marker.display())).unwrap();
    let rsp_arg = format!("@{}", rsp.display());
    let _ = run_local_gcc(&dir, std::slice::from_ref(&rsp_arg));
    assert!(marker.exists(), "the local gcc did not follow the response file");
    fs::remove_file(&marker).unwrap();

    let unknown = Digest::of(b"a toolchain no worker holds");
    let cases: Vec<(Digest, Vec<String>)> = vec![
        (identity, strings(&["@/etc/passwd"])),
        (identity, strings(&["-O2", "@/etc/passwd"])),
        (identity, strings(&["-Xassembler", "@/etc/passwd"])),
        (identity, strings(&["-Wa,@/etc/passwd"])),
        (identity, vec!["-O2".into(), rsp_arg.clone()]),
        (unknown, strings(&["@/etc/passwd"])),
    ];
    let mut problems = Vec::new();
    for (id, args) in &cases {
        let what =
            format!("{args:?} (identity {})", if *id == identity { "held" } else { "unknown" });
        let (body, response) = client.call_raw(&compile_request(*id, "gcc", args, &unit));
        let text = describe(&response);
        eprintln!("[e2e] {what}: {text}");
        let refused_as_expected = match &response {
            Response::Refused(r) if *id == identity => r.kind == RefusalKind::BadArguments,
            Response::Refused(_) => true,
            _ => false,
        };
        if !refused_as_expected {
            problems.push(format!("{what}: expected a BadArguments refusal, got {text}"));
        }
        if text.contains("root:") || body.windows(5).any(|w| w == b"root:") {
            problems.push(format!("{what}: the reply leaks /etc/passwd: {text}"));
        }
        if marker.exists() {
            problems.push(format!("{what}: the worker created {}", marker.display()));
        }
        client.ping(&what);
    }
    Client::connect(worker.addr).ping("the response files (new connection)");
    assert!(worker.proc.try_wait().is_none(), "the worker died");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// A hostile toolchain: dash, libc, a static helper, and a driver script.
// ---------------------------------------------------------------------------------------------

/// The hostile "compiler". The first line of the unit says what to try.
const EVIL_CC: &str = r#"#!/usr/bin/dash
# discomy test fixture: a hostile "compiler". The unit's first line says what to try:
#   hello | write TAG DIR [PREFIX] | read TAG DIR [PREFIX] | net PORT | spin | bomb | cbomb | mem
unit=unit.i
out=unit.o
prev=
for a in "$@"; do
  case "$a" in *.i) unit="$a" ;; esac
  if [ "$prev" = "-o" ]; then out="$a"; fi
  prev="$a"
done
read -r mode a1 a2 a3 < "$unit" || { echo "evil-cc: cannot read $unit" >&2; exit 3; }
case "$mode" in
hello)
  echo "evil-cc: hello from $(pwd), args: $*"
  ;;
write)
  for t in "/etc/discomy-marker-$a1" "/usr/discomy-marker-$a1" "/discomy-marker-$a1" \
      "../discomy-marker-$a1" "$a2/discomy-marker-$a1" "$a2/worker0.work/discomy-marker-$a1" \
      "/usr/bin/evil-cc" "$a3/etc/discomy-marker-$a1" \
      "$a3$a2/discomy-marker-$a1"; do
    if (echo pwned > "$t") 2>/dev/null; then echo "WROTE $t"; else echo "denied $t"; fi
  done
  ;;
read)
  for f in /etc/passwd /etc/shadow /usr/share/discomy-leak "$a2/secret-$a1" \
      /proc/1/root/etc/passwd "$a3/etc/passwd" "$a3$a2/secret-$a1"; do
    if (while IFS= read -r l; do echo "LEAK $f: $l"; done < "$f") 2>/dev/null; then
      echo "opened $f"
    else
      echo "unreadable $f"
    fi
  done
  ;;
net)
  /usr/bin/evil-tool net 127.0.0.1 "$a1"
  echo "evil-tool exit $?"
  ;;
spin)
  while :; do :; done
  ;;
bomb)
  bomb() { bomb | bomb & }
  while :; do bomb; done
  ;;
cbomb)
  /usr/bin/evil-tool bomb
  echo "evil-tool exit $?"
  ;;
mem)
  /usr/bin/evil-tool mem 2048
  echo "evil-tool exit $?"
  ;;
*)
  echo "evil-cc: unknown mode $mode" >&2
  exit 4
  ;;
esac
printf 'not an object\n' > "$out"
exit 0
"#;

/// A static helper: `net HOST PORT` connects, `mem MIB` allocates and touches memory, `bomb`
/// forks forever.
const EVIL_TOOL: &str = r#"
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc >= 4 && strcmp(argv[1], "net") == 0) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) { printf("net: socket failed: %s\n", strerror(errno)); return 1; }
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)atoi(argv[3]));
    inet_pton(AF_INET, argv[2], &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
      printf("net: CONNECTED\n");
      (void)!write(fd, "pwned\n", 6);
      return 0;
    }
    printf("net: connect failed: %s\n", strerror(errno));
    return 1;
  }
  if (argc >= 3 && strcmp(argv[1], "mem") == 0) {
    long want = atol(argv[2]), got = 0;
    for (; got < want; got += 64) {
      char *p = malloc(64L << 20);
      if (!p) { printf("mem: malloc failed after %ld MiB\n", got); return 1; }
      memset(p, 1, 64L << 20);
      printf("mem: %ld MiB\n", got + 64);
      fflush(stdout);
    }
    printf("mem: TOUCHED ALL %ld MiB\n", got);
    return 0;
  }
  if (argc >= 2 && strcmp(argv[1], "bomb") == 0) {
    /* A fork bomb that does not give up when fork fails (dash does). */
    for (;;) (void)fork();
  }
  return 2;
}
"#;

/// A toolchain tree built by hand: entries by path, and the content of each blob.
#[derive(Default, Clone)]
struct Tree {
    entries: BTreeMap<String, EntryKind>,
    blobs: HashMap<Digest, Vec<u8>>,
}

impl Tree {
    fn file(&mut self, path: &str, data: Vec<u8>, executable: bool) {
        let digest = Digest::of(&data);
        let size = data.len() as u64;
        self.blobs.insert(digest, data);
        self.entries.insert(path.to_owned(), EntryKind::File { digest, size, executable });
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.entries.insert(path.to_owned(), EntryKind::Symlink { target: target.to_owned() });
    }

    /// A host file at `path`, resolved one component at a time: every symlink met on the way
    /// (`/lib` → `usr/lib`, …) becomes a symlink entry with its literal target, the file itself
    /// a file entry at its real path.
    fn host(&mut self, path: &Path) {
        let mut pending: Vec<OsString> =
            path.components().rev().filter_map(|c| normal(c).map(OsString::from)).collect();
        let mut cur = PathBuf::from("/");
        let mut hops = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                cur.pop();
                continue;
            }
            let next = cur.join(&name);
            let meta = fs::symlink_metadata(&next)
                .unwrap_or_else(|e| panic!("{} (for {}): {e}", next.display(), path.display()));
            if meta.file_type().is_symlink() {
                hops += 1;
                assert!(hops < 40, "symlink loop at {}", next.display());
                let target = fs::read_link(&next).unwrap();
                self.symlink(next.to_str().unwrap(), target.to_str().unwrap());
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                for c in target.components().rev() {
                    match c {
                        Component::ParentDir => pending.push("..".into()),
                        c => pending.extend(normal(c).map(OsString::from)),
                    }
                }
            } else {
                cur = next;
            }
        }
        let meta = fs::metadata(&cur).unwrap();
        assert!(meta.is_file(), "{} is not a file", cur.display());
        let executable = meta.permissions().mode() & 0o111 != 0;
        self.file(cur.to_str().unwrap(), fs::read(&cur).unwrap(), executable);
    }

    /// A host program and the libraries `ldd` names for it, the loader included.
    fn host_program(&mut self, program: &Path) {
        self.host(program);
        let out = Command::new("ldd").arg(program).output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let lib = line.rsplit("=>").next().unwrap_or("").trim();
            let lib = lib.split(" (").next().unwrap_or("").trim();
            if lib.starts_with('/') {
                self.host(Path::new(lib));
            }
        }
    }

    fn manifest(&self, name: &str, driver: &str) -> ToolchainManifest {
        let manifest = ToolchainManifest {
            name: name.to_owned(),
            driver: driver.to_owned(),
            entries: self
                .entries
                .iter()
                .map(|(path, kind)| discomy_protocol::TreeEntry {
                    path: path.clone(),
                    kind: kind.clone(),
                })
                .collect(),
        };
        manifest.validate().unwrap();
        manifest
    }

    fn install(
        &self,
        client: &mut Client,
        manifest: &ToolchainManifest,
    ) -> Result<Digest, Box<Response>> {
        install(client, manifest, &|d| self.blobs[d].clone())
    }
}

fn normal(c: Component<'_>) -> Option<&std::ffi::OsStr> {
    match c {
        Component::Normal(n) => Some(n),
        Component::ParentDir => Some("..".as_ref()),
        _ => None,
    }
}

/// Processes on this host running the hostile driver or its helper (forks keep the command line).
fn evil_processes() -> Vec<String> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("/usr/bin/evil-cc") || cmdline.contains("/usr/bin/evil-tool") {
            out.push(format!("{} {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    out
}

/// Every path under `dir` whose name contains `tag`.
fn names_with(dir: &Path, tag: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok) {
        let path = entry.path();
        if entry.file_name().to_string_lossy().contains(tag) {
            out.push(path.clone());
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(names_with(&path, tag));
        }
    }
    out
}

/// Removes files that a failed confinement left on the host, also when the test panics.
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// Records `what` as a problem unless `ok`.
fn check(problems: &mut Vec<String>, ok: bool, what: String) {
    if !ok {
        problems.push(what);
    }
}

/// What one hostile compile produced: the reply, its text, and how long it took.
struct Outcome {
    response: Response,
    text: String,
    elapsed: Duration,
}

impl Outcome {
    fn compiled_ok(&self) -> bool {
        matches!(&self.response, Response::Compiled(r) if r.exit_code == 0)
    }

    fn stdout(&self) -> String {
        match &self.response {
            Response::Compiled(r) => String::from_utf8_lossy(&r.stdout).into_owned(),
            _ => String::new(),
        }
    }
}

fn run_evil(client: &mut Client, identity: Digest, unit: &str) -> Outcome {
    let started = Instant::now();
    let (body, response) =
        client.call_raw(&compile_request(identity, "evil-cc", &strings(&["-O2"]), unit.as_bytes()));
    let elapsed = started.elapsed();
    let mut text = describe(&response);
    text.push_str(&String::from_utf8_lossy(&body));
    eprintln!("[e2e] evil-cc `{}` after {elapsed:.1?}: {}", unit.trim(), describe(&response));
    client.ping(unit.trim());
    Outcome { response, text, elapsed }
}

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
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Hostile source-mode units: the build's own command line runs on the worker, so it is checked
// as strictly as a preprocessed unit's, and the unit's file list cannot reach outside its tree.
// ---------------------------------------------------------------------------------------------

fn source_request(
    identity: Digest,
    args: &[String],
    cwd: &str,
    files: &[discomy_protocol::SourceFile],
) -> Request {
    Request::CompileSources(discomy_protocol::SourceCompileRequest {
        compiler: CompilerId { name: "gcc".to_owned(), identity },
        language: Language::C,
        output: OutputKind::Object,
        args: args.to_vec(),
        cwd: cwd.to_owned(),
        source_name: "plain.c".to_owned(),
        files: files.to_vec(),
        source_date_epoch: None,
        deps: None,
    })
}

#[test]
fn hostile_source_mode_requests_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().canonicalize().unwrap();
    let (mut worker, mut client, identity, _unit) = worker_with_system_gcc(&dir);
    let cwd = dir.to_str().unwrap().to_owned();

    // A legitimate unit first (its files as the wrapper finds them): the worker asks for the
    // files, then compiles, and the object is the local gcc's, byte for byte.
    let args = strings(&["-O2", "-g", "-c", "plain.c"]);
    let cpp = clean_command("gcc")
        .current_dir(&dir)
        .args(["-O2", "-g", "-E", "-fdirectives-only", "plain.c"])
        .output()
        .unwrap();
    assert!(cpp.status.success());
    let unit_files = discomy_wrapper::sources::collect(&cpp.stdout, &args, &cwd, &[]).unwrap();
    let files = unit_files.files.clone();
    let file = files.iter().find(|f| f.path.ends_with("/plain.c")).unwrap().clone();
    match client.call(&source_request(identity, &args, &cwd, &files)) {
        Response::MissingBlobs(blobs) => {
            assert!(blobs.contains(&file.digest), "the source is not among {blobs:?}");
            for blob in blobs {
                let content = &unit_files.contents[&blob];
                match client.call(&Request::PutSource(Payload::compress(content))) {
                    Response::Stored(d) => assert_eq!(d, blob),
                    other => panic!("PutSource: {}", describe(&other)),
                }
            }
        }
        other => panic!("expected MissingBlobs for the unit's files, got {}", describe(&other)),
    }
    let remote = match client.call(&source_request(identity, &args, &cwd, &files)) {
        Response::Compiled(r) if r.exit_code == 0 && r.stderr.is_empty() => {
            r.output.unwrap().decompress(1 << 30).unwrap()
        }
        other => panic!("a plain source-mode compile failed: {}", describe(&other)),
    };
    let local = clean_command("gcc")
        .current_dir(&dir)
        .args(["-O2", "-g", "-c", "plain.c", "-o", "local-plain.o"])
        .output()
        .unwrap();
    assert!(local.status.success());
    assert!(remote == fs::read(dir.join("local-plain.o")).unwrap(), "source-mode object differs");
    client.ping("a plain source-mode compile");

    let marker = dir.join("marker-source-wrapper");
    let with = |extra: &[&str]| {
        let mut a = strings(extra);
        a.extend(strings(&["-c", "plain.c"]));
        a
    };
    let wrapper = format!("/bin/sh,-c,touch {}", marker.display());
    let bad_args: Vec<(&str, Vec<String>)> = vec![
        ("-wrapper", with(&["-wrapper", &wrapper])),
        ("-B", with(&["-B/tmp/"])),
        ("-o", with(&["-o", "/tmp/evil.o"])),
        ("-MD -MF", with(&["-MD", "-MF", "/tmp/evil.d"])),
        ("-Wp,-MD", with(&["-Wp,-MD,/tmp/evil.d"])),
        ("@file", with(&["@/etc/passwd"])),
        ("-save-temps", with(&["-save-temps"])),
        ("-fdump", with(&["-fdump-tree-all"])),
        ("-x assembler", with(&["-x", "assembler"])),
        ("input outside the unit", strings(&["-c", "/etc/passwd"])),
        ("two inputs", strings(&["-c", "plain.c", "plain.c"])),
        ("no -c", strings(&["plain.c"])),
    ];
    let mut problems = Vec::new();
    for (name, args) in &bad_args {
        let response = client.call(&source_request(identity, args, &cwd, &files));
        eprintln!("[e2e] source mode {name}: {}", describe(&response));
        if !matches!(&response, Response::Refused(r) if r.kind == RefusalKind::BadArguments) {
            problems.push(format!(
                "{name}: expected Refused(BadArguments), got {}",
                describe(&response)
            ));
        }
        client.ping(name);
    }
    let escape =
        |path: &str| discomy_protocol::SourceFile { path: path.to_owned(), ..file.clone() };
    let bad_units: Vec<(&str, String, Vec<discomy_protocol::SourceFile>)> = vec![
        ("file path with ..", cwd.clone(), vec![file.clone(), escape("/tmp/../etc/x.h")]),
        ("relative file path", cwd.clone(), vec![file.clone(), escape("etc/x.h")]),
        ("relative cwd", "work".to_owned(), files.clone()),
        ("cwd with ..", format!("{cwd}/.."), files.clone()),
        ("no files", cwd.clone(), Vec::new()),
        ("a file named twice", cwd.clone(), vec![file.clone(), file.clone()]),
    ];
    for (name, unit_cwd, unit_files) in &bad_units {
        let args = strings(&["-O2", "-c", "plain.c"]);
        let response = client.call(&source_request(identity, &args, unit_cwd, unit_files));
        eprintln!("[e2e] source mode {name}: {}", describe(&response));
        if !matches!(&response, Response::Refused(r) if r.kind == RefusalKind::BadRequest) {
            problems
                .push(format!("{name}: expected Refused(BadRequest), got {}", describe(&response)));
        }
        client.ping(name);
    }
    // Dependency-file options other than targets: refused before anything runs.
    for targets in [&["-MF", "/tmp/evil.d"][..], &["-MT"][..], &["-o", "/tmp/x"][..]] {
        let mut request = source_request(identity, &strings(&["-c", "plain.c"]), &cwd, &files);
        if let Request::CompileSources(r) = &mut request {
            r.deps =
                Some(discomy_protocol::DepRequest { user_only: false, targets: strings(targets) });
        }
        let response = client.call(&request);
        eprintln!("[e2e] source mode deps {targets:?}: {}", describe(&response));
        if !matches!(&response, Response::Refused(r) if r.kind == RefusalKind::BadRequest) {
            problems.push(format!(
                "deps {targets:?}: expected Refused(BadRequest), got {}",
                describe(&response)
            ));
        }
        client.ping("dependency options");
    }
    // Reading a host file the unit does not ship: the sandbox has nothing there.
    let args = strings(&["-O2", "-include", "/etc/shadow", "-c", "plain.c"]);
    match client.call(&source_request(identity, &args, &cwd, &files)) {
        Response::Compiled(r) if r.exit_code != 0 => {
            let stderr = String::from_utf8_lossy(&r.stderr);
            if stderr.contains("root:") {
                problems.push(format!("-include /etc/shadow leaked host content: {stderr}"));
            }
        }
        other => problems.push(format!(
            "-include /etc/shadow: expected a failed compile, got {}",
            describe(&other)
        )),
    }
    if marker.exists() {
        problems.push(format!("the worker created {}", marker.display()));
    }
    Client::connect(worker.addr).ping("the hostile source-mode units (new connection)");
    assert!(worker.proc.try_wait().is_none(), "the worker died");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
