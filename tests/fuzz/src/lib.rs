//! The checks behind discomy's fuzz targets, one function per target.
//!
//! Each takes one input of any bytes, must not panic on it, and asserts what the code under test
//! promises (round trips, caps, nothing written outside a tree). The cargo-fuzz targets in
//! `tests/fuzz/fuzz_targets/` call them, and the normal test suite replays the kept corpus
//! (`tests/fuzz/corpus/TARGET/`) through the same functions without cargo-fuzz
//! (`tests/tests/fuzz_corpus.rs` includes this file with `#[path]`), so this file uses only what
//! both builds depend on: the discomy crates, `tempfile` and tokio's multi-threaded runtime.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use discomy_compilerd::distcc::cidr::Cidr;
use discomy_compilerd::hosts::{HostKind, from_distcc_hosts, parse_host_list};
use discomy_compilerd::store::tools::{InstallStep, ToolStore};
use discomy_compilerd::worker::argcheck::{check_compile_args, check_source_args};
use discomy_protocol::coordinator::{CoordRequest, CoordResponse};
use discomy_protocol::distcc::{Limits, Reply, Version, lzo, tokens};
use discomy_protocol::handshake::{self, AuthOutcome, ClientAuth, ServerHello};
use discomy_protocol::toolchain::is_normal_absolute;
use discomy_protocol::{
    Digest, EntryKind, Payload, Request, Response, SourceFile, ToolchainManifest, TreeEntry, frame,
};
use discomy_wrapper::cache::elf_relocate::rewrite_dir;
use discomy_wrapper::scan::{scan, search_dirs};

/// A target's check: panics when the input breaks a property.
pub type Check = fn(&[u8]);

/// Every target by name (its corpus directory) with its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("frame_decode", frame_decode),
    ("payload", payload),
    ("distcc", distcc),
    ("lzo", lzo_codec),
    ("toolchain_manifest", toolchain_manifest),
    ("toolchain_materialise", toolchain_materialise),
    ("argcheck", argcheck),
    ("hosts", hosts),
    ("cidr", cidr),
    ("include_scan", include_scan),
    ("elf_rewrite", elf_rewrite),
];

/// A message decoded from a frame body encodes again, and that encoding is stable.
macro_rules! round_trip {
    ($ty:ty, $data:expr) => {
        if let Ok(msg) = frame::decode::<$ty>($data) {
            let bytes = frame::encode(&msg).expect("a decoded message encodes");
            let again: $ty = frame::decode(&bytes).expect("a re-encoded message decodes");
            let twice = frame::encode(&again).expect("a decoded message encodes");
            assert_eq!(twice, bytes, "{} does not encode stably", stringify!($ty));
        }
    };
}

/// Frame bodies as every message type a peer may send (`Request`, `Response`, the
/// coordinator's, the handshake's), the same bytes as a stream of frames, and the preamble.
pub fn frame_decode(data: &[u8]) {
    round_trip!(Request, data);
    round_trip!(Response, data);
    round_trip!(CoordRequest, data);
    round_trip!(CoordResponse, data);
    round_trip!(ServerHello, data);
    round_trip!(ClientAuth, data);
    round_trip!(AuthOutcome, data);
    let mut stream = data;
    for _ in 0..4 {
        if frame::read_frame::<_, Request>(&mut stream).is_err() {
            break;
        }
    }
    let mut stream = data;
    for _ in 0..4 {
        if frame::read_frame::<_, Response>(&mut stream).is_err() {
            break;
        }
    }
    if let Some(preamble) = data.first_chunk::<{ handshake::PREAMBLE_LEN }>() {
        let _ = handshake::check_preamble(preamble);
    }
}

/// Payload decompression: hostile payloads (announced size, lz4 bytes, digest) are refused or
/// decode to exactly what they announce; honest ones round-trip, and the cap is exact.
pub fn payload(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            let p = Payload::compress(rest);
            assert_eq!(p.decompress(rest.len()).expect("round trip"), rest);
            if !rest.is_empty() {
                assert!(p.decompress(rest.len() - 1).is_err(), "cap not enforced");
            }
        }
        1 => {
            let Some((len, lz4)) = rest.split_first_chunk::<2>() else { return };
            let p = Payload {
                raw_len: u64::from(u16::from_le_bytes(*len)),
                digest: Digest::of(lz4),
                lz4: lz4.to_vec(),
            };
            check_payload(&p, 1 << 16);
        }
        _ => {
            if let Ok(p) = frame::decode::<Payload>(rest) {
                check_payload(&p, 1 << 16);
            }
        }
    }
}

fn check_payload(p: &Payload, cap: usize) {
    if let Ok(raw) = p.decompress(cap) {
        assert!(raw.len() <= cap);
        assert_eq!(raw.len() as u64, p.raw_len);
        assert!(Digest::of(&raw) == p.digest, "digest not checked");
    }
}

const DISTCC_LIMITS: Limits =
    Limits { max_args: 64, max_arg_len: 4096, max_wire_body: 1 << 17, max_raw_body: 1 << 16 };

/// distcc requests and replies (protocols 1 and 2) as a server and a client read them: what
/// parses re-encodes to the same request or reply; bodies stay within their caps.
pub fn distcc(data: &[u8]) {
    let limits = DISTCC_LIMITS;
    if let Ok(req) = tokens::read_request(&mut &data[..], &limits) {
        assert!(req.argv.len() <= limits.max_args as usize);
        assert!(req.source.len() <= limits.max_raw_body);
        let bytes = req.encode();
        let back = tokens::read_request(&mut &bytes[..], &limits).expect("request round trip");
        assert_eq!(back, req);
    }
    for version in [Version::Plain, Version::Lzo] {
        if let Ok(reply) = tokens::read_reply(&mut &data[..], version, &limits) {
            let bytes = reply.encode(version);
            let back = tokens::read_reply(&mut &bytes[..], version, &limits).expect("reply");
            let object = if reply.status == 0 { reply.object.clone() } else { Vec::new() };
            assert_eq!(back, Reply { object, ..reply });
        }
    }
    if let Ok(body) = Version::Lzo.decode_body(data.to_vec(), 1 << 16) {
        assert!(body.len() <= 1 << 16);
    }
}

/// The LZO1X decoder on any stream (output within the cap; what decodes re-compresses and
/// round-trips), and the encoder on any input (within LZO's worst case; exact round trip).
pub fn lzo_codec(data: &[u8]) {
    let cap = 1 << 16;
    if let Ok(out) = lzo::decompress(data, cap) {
        assert!(out.len() <= cap);
        let again = lzo::compress(&out);
        assert_eq!(lzo::decompress(&again, out.len()).expect("round trip of decoded"), out);
    }
    let packed = lzo::compress(data);
    assert!(packed.len() <= data.len() + data.len() / 16 + 64 + 3, "worse than LZO's bound");
    assert_eq!(lzo::decompress(&packed, data.len()).expect("round trip"), data);
    if !data.is_empty() {
        assert!(lzo::decompress(&packed, data.len() - 1).is_err(), "cap not enforced");
    }
}

/// Toolchain manifests as peers send them: a manifest that validates has only absolute,
/// normalised, sorted, unique paths (none can leave the tree's root) and its driver is a file.
pub fn toolchain_manifest(data: &[u8]) {
    let Ok(m) = frame::decode::<ToolchainManifest>(data) else { return };
    let _ = (m.digest(), m.content_size(), m.blobs());
    if m.validate().is_err() {
        return;
    }
    assert!(m.has_file(&m.driver));
    for pair in m.entries.windows(2) {
        assert!(pair[0].path < pair[1].path);
    }
    for e in &m.entries {
        assert!(is_normal_absolute(&e.path));
        let rel = Path::new(e.path.trim_start_matches('/'));
        assert!(rel.components().all(|c| matches!(c, std::path::Component::Normal(_))));
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// A manifest from text lines `KIND PATH[ REST]`: `f`/`x` a file (executable with `x`) with
/// content REST, `l` a symlink to REST, `d` a directory. The first byte: bit 0 keeps the
/// entries as given (else sorted, first of each path kept), bit 1 names the first entry the
/// driver (else the first file).
fn manifest_from_text(data: &[u8]) -> Option<(ToolchainManifest, Vec<Vec<u8>>)> {
    let (&flags, rest) = data.split_first()?;
    let mut entries = Vec::new();
    let mut blobs = Vec::new();
    for line in rest.split(|b| *b == b'\n').take(64) {
        let Some((&kind, line)) = line.split_first() else { continue };
        let (path, tail) = match line.iter().position(|b| *b == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &[][..]),
        };
        let path = String::from_utf8_lossy(path).into_owned();
        let kind = match kind {
            b'f' | b'x' => {
                blobs.push(tail.to_vec());
                EntryKind::File {
                    digest: Digest::of(tail),
                    size: tail.len() as u64,
                    executable: kind == b'x',
                }
            }
            b'l' => EntryKind::Symlink { target: String::from_utf8_lossy(tail).into_owned() },
            b'd' => EntryKind::Dir,
            _ => continue,
        };
        entries.push(TreeEntry { path, kind });
    }
    if flags & 1 == 0 {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        entries.dedup_by(|b, a| a.path == b.path);
    }
    let driver = if flags & 2 != 0 {
        entries.first().map(|e| e.path.clone())
    } else {
        entries.iter().find(|e| matches!(e.kind, EntryKind::File { .. })).map(|e| e.path.clone())
    };
    let driver = driver.unwrap_or_else(|| "/usr/bin/cc".into());
    Some((ToolchainManifest { name: "fuzz".into(), driver, entries }, blobs))
}

/// Every path under `dir`, not following symlinks.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Toolchain installs on a worker's store (validation, then the tree built from blobs) in a
/// temporary directory: a manifest that does not validate is refused, and whatever it holds
/// (symlinks out of the tree, files under them, `..`), nothing appears outside the store, and
/// the tree holds only the manifest's paths and their parents.
pub fn toolchain_materialise(data: &[u8]) {
    let Some((manifest, blobs)) = manifest_from_text(data) else { return };
    let root = tempfile::tempdir().expect("temporary directory");
    let store_dir = root.path().join("store");
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    let store = ToolStore::open(&store_dir, 1 << 30, true).expect("open store");
    for blob in &blobs {
        store.put_blob(&Payload::compress(blob)).expect("put blob");
    }
    let valid = manifest.validate().is_ok();
    let result = runtime().block_on(store.install(&manifest));
    if !valid {
        assert!(result.is_err(), "an invalid manifest was installed");
    }
    let mut top: Vec<_> = std::fs::read_dir(root.path())
        .expect("read root")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["outside", "store"], "something was written next to the store");
    assert!(walk(&outside).is_empty(), "something was written outside the store");
    let digest = manifest.digest();
    let tree = store_dir.join("trees").join(digest.to_hex());
    if matches!(result, Ok(InstallStep::Ready)) {
        assert!(store.is_installed(&digest));
        assert!(tree.is_dir());
    }
    for p in walk(&tree) {
        let rel = p.strip_prefix(&tree).expect("under the tree").to_string_lossy().into_owned();
        let abs = format!("/{rel}");
        let prefix = format!("{abs}/");
        assert!(
            manifest.entries.iter().any(|e| e.path == abs || e.path.starts_with(&prefix)),
            "{abs} is in the tree but not in the manifest"
        );
    }
}

fn fuzz_toolchain() -> ToolchainManifest {
    let file = |path: &str| TreeEntry {
        path: path.into(),
        kind: EntryKind::File { digest: Digest::of(path.as_bytes()), size: 1, executable: true },
    };
    ToolchainManifest {
        name: "gcc".into(),
        driver: "/usr/bin/gcc".into(),
        entries: vec![
            file("/usr/bin/gcc"),
            file("/usr/lib/gcc/x86_64-linux-gnu/12/plugin/annobin.so"),
            file("/usr/lib/rpm/redhat/redhat-hardened-cc1"),
        ],
    }
}

/// What a command line the worker accepted may never contain, outside the values of the
/// source mode's preprocessor options: ways to run programs, read local files or write
/// anywhere but the unit's directory.
const NEVER: &[&str] = &["@", "-B", "-wrapper", "-o", "-save-temps", "-fdump", "-iplugindir"];

/// The worker's argument checks (native and source mode) on any argument list (one per line):
/// nothing they accept runs another program, reads a local file or writes outside the unit;
/// `-specs=`/`-fplugin=` only name the toolchain's own files.
pub fn argcheck(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let args: Vec<String> = text.split('\n').take(64).map(String::from).collect();
    let toolchain = fuzz_toolchain();
    let shipped = |arg: &str| {
        ["-specs=", "-fplugin="]
            .iter()
            .find_map(|p| arg.strip_prefix(p))
            .is_some_and(|path| toolchain.has_file(path) || arg == "-fplugin=annobin")
    };
    if check_compile_args(&args, &toolchain).is_ok() {
        for arg in &args {
            if shipped(arg) {
                continue;
            }
            assert!(arg.starts_with('-'), "input {arg:?} accepted");
            assert!(!NEVER.iter().any(|p| arg.starts_with(p)), "{arg:?} accepted");
            assert!(!arg.starts_with("-specs") && !arg.starts_with("-fplugin"), "{arg:?}");
            assert!(!arg.starts_with("-x") && !arg.starts_with("-I"), "{arg:?} accepted");
        }
    }
    let file = |path: &str| SourceFile { path: path.into(), digest: Digest::of(b""), size: 0 };
    let files = [file("/src/a.c"), file("/src/inc/a.h"), file("/src/part.ltrans0.o")];
    if check_source_args(&args, &toolchain, &files, "/src").is_ok() {
        let with_value =
            ["-I", "-D", "-U", "-include", "-imacros", "-isystem", "-iquote", "-idirafter", "-x"];
        let (mut i, mut inputs, mut modes) = (0, 0, 0);
        while i < args.len() {
            let arg = args[i].as_str();
            i += 1;
            if with_value.contains(&arg) {
                i += 1;
                continue;
            }
            if arg == "-c" || arg == "-S" {
                modes += 1;
            } else if !arg.starts_with('-') || arg == "-" {
                inputs += 1;
            } else if !shipped(arg) {
                assert!(!NEVER.iter().any(|p| arg.starts_with(p)), "{arg:?} accepted");
            }
        }
        assert_eq!((inputs, modes), (1, 1), "source mode accepted {args:?}");
    }
}

/// The host-list parser (discomy's syntax and `DISTCC_HOSTS`): no panic; parsed hosts are
/// non-empty with a limit; an ordinary host written back with `Display` parses to itself.
pub fn hosts(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(hosts) = parse_host_list(&text) {
        for h in &hosts {
            assert!(!h.host.is_empty() && h.limit >= 1, "{h:?}");
            let _ = h.address();
            let plain = !h.host.starts_with('-')
                && h.host.bytes().all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b));
            if plain {
                let again = parse_host_list(&h.to_string()).expect("a written host parses");
                assert_eq!(again, std::slice::from_ref(h));
            }
            if let HostKind::Distcc { .. } = h.kind {
                assert!(!h.host.contains("://"));
            }
        }
    }
    let converted = from_distcc_hosts(&text);
    let _ = parse_host_list(&converted);
}

/// `--allow` networks: what parses is shown in a form that parses to itself and contains its
/// own address (IPv4-mapped networks included); membership of any address does not panic.
pub fn cidr(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (spec, probe) = text.split_once('\n').unwrap_or((&text, ""));
    let Ok(net) = spec.parse::<Cidr>() else { return };
    let shown = net.to_string();
    assert_eq!(shown.parse::<Cidr>().expect("a shown network parses"), net);
    let addr: IpAddr = spec.split_once('/').map_or(spec, |(a, _)| a).parse().expect("address");
    assert!(net.contains(addr), "{net} does not contain {addr}");
    if let Ok(ip) = probe.parse::<IpAddr>() {
        let _ = net.contains(ip);
    }
    let bytes = probe.as_bytes();
    if let Some(v4) = bytes.first_chunk::<4>() {
        let _ = net.contains(IpAddr::from(*v4));
    }
    if let Some(v6) = bytes.first_chunk::<16>() {
        let _ = net.contains(IpAddr::from(*v6));
    }
}

/// The include scanner on a small tree written to a temporary directory: the input, split at
/// NUL bytes, is `main.c`, `a.h`, `inc/b.h`, `sub/c.h` and `inc/sub/d.h`, compiled with
/// `-Iinc -isystem sub` and two `-D` macros for computed includes. Any result but a panic;
/// a scan that succeeds lists `main.c` first, normalised paths and every content.
/// Inputs naming `proc`, `sys` or `dev` are skipped: the scanner would read the host's.
pub fn include_scan(data: &[u8]) {
    if [&b"proc"[..], b"sys", b"dev"].iter().any(|w| data.windows(w.len()).any(|x| x == *w)) {
        return;
    }
    let root = tempfile::tempdir().expect("temporary directory");
    let cwd = root.path().join("src");
    for dir in ["inc/sub", "sub"] {
        std::fs::create_dir_all(cwd.join(dir)).expect("mkdir");
    }
    let names = ["main.c", "a.h", "inc/b.h", "sub/c.h", "inc/sub/d.h"];
    for (name, content) in names.iter().zip(data.split(|b| *b == 0)) {
        std::fs::write(cwd.join(name), content).expect("write");
    }
    let cwd = cwd.to_str().expect("UTF-8 temporary directory").to_string();
    let args: Vec<String> =
        ["-Iinc", "-isystem", "sub", "-DHDR=\"a.h\"", "-DNEXT=HDR", "-c", "main.c"]
            .map(String::from)
            .to_vec();
    let dirs = search_dirs(&args, &cwd, &[]).expect("fixed arguments");
    if let Ok(unit) = scan("main.c", &cwd, &dirs) {
        assert_eq!(unit.files.first().map(|f| f.path.as_str()), Some(&*format!("{cwd}/main.c")));
        for f in &unit.files {
            assert!(is_normal_absolute(&f.path), "{}", f.path);
            assert!(unit.contents.contains_key(&f.digest));
        }
    }
}

/// The ELF rewriter for `-g` objects moved to another build directory. Input: one byte N, N
/// bytes of the old directory, then the object. Any result but a panic; an object it rewrites
/// (to a directory it did not mention) is restored exactly by rewriting it back.
pub fn elf_rewrite(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return };
    let (old, obj) = rest.split_at(usize::from(n).min(rest.len()));
    let old = String::from_utf8_lossy(old);
    let longer = format!("{old}/and/a/longer/tail");
    for new in ["/b", "/tmp/build-elsewhere/src", longer.as_str()] {
        if let Some(out) = rewrite_dir(obj, &old, new) {
            let back = rewrite_dir(&out, new, &old);
            if !obj.windows(new.len()).any(|w| w == new.as_bytes()) {
                assert!(back.as_deref() == Some(obj), "moving the object back does not undo it");
            }
        }
    }
}
