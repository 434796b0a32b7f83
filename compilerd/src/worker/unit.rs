//! A unit on the worker, from request to answer: a native unit (preprocessed on the client,
//! [`compile`]) or a source-mode unit (the build's own command over the files it can open,
//! [`compile_sources`]; one whose files are not all stored yet is answered with
//! [`Response::MissingBlobs`], and the client sends them with `PutSource` and asks again), and
//! a source-mode unit asked with the farm tier ([`compile_cached`]: this worker derives the key,
//! answers from its store or compiles, and stores the entry it made).
//!
//! Both stand on the one skeleton every unit goes through, distcc's ([`super::distcc`]) too: a
//! slot (or the shutdown), the slot's own uid, the count of units compiling (what the
//! coordinator's load report reads), a private unit directory, the names of what the compiler
//! writes there, the checks on its output, and the directory's removal off the answer's path.
//! Each kind of unit adds only what differs: its checks, its files, its command line
//! ([`super::exec`]), its answer.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use discomy_protocol::payload::MAX_RAW_LEN;
use discomy_protocol::plumbing::read_untrusted;
use discomy_protocol::{
    CachedSources, CompileRequest, CompileResult, OutputKind, Payload, RefusalKind, Response,
    SourceCompileRequest, SourceResult, ToolchainManifest,
};
use tokio::sync::SemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::argcheck::{check_compile_args, check_source_args};
use super::exec::{self, ExecError, compile_unit};
use super::{State, UidLease};
use crate::store::cache_tier;
use crate::store::sources::Materialized;
use crate::store::tools::TreeLease;

/// The preprocessed input of a native unit, in its directory.
pub const INPUT: &str = "unit.i";
/// The dependency file a source-mode unit's compiler writes, in its output directory.
pub const DEP_FILE: &str = "unit.d";

/// Outputs up to this size are read on the async thread: a trip to the blocking pool costs more
/// than that work.
const READ_INLINE_BYTES: u64 = 4 << 20;

/// Reads an output the sandboxed compiler wrote ([`read_untrusted`]: a regular file, not through
/// a link, within the payload cap), on this thread when it is small, in the blocking pool
/// otherwise. Every kind of unit (native, source mode, distcc) reads its outputs here.
pub async fn read_output(path: PathBuf) -> io::Result<Vec<u8>> {
    let cap = MAX_RAW_LEN as u64;
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.len() <= READ_INLINE_BYTES) {
        return read_untrusted(&path, cap);
    }
    tokio::task::spawn_blocking(move || read_untrusted(&path, cap))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// Checks that a compiler's output is what was asked for: for `-c`, an object file (ELF
/// relocatable, or a COFF, Mach-O or LLVM bitcode object for cross compilers), never a text file,
/// an ELF executable or whatever a hostile toolchain chose. `Err` says what it is instead.
pub fn check_output(kind: OutputKind, bytes: &[u8]) -> Result<(), String> {
    if kind == OutputKind::Assembly {
        return Ok(());
    }
    if let Some(header) = bytes.strip_prefix(b"\x7fELF") {
        let big_endian = header.get(1) == Some(&2);
        let kind = bytes.get(16..18).map(|t| {
            let t = [t[0], t[1]];
            if big_endian { u16::from_be_bytes(t) } else { u16::from_le_bytes(t) }
        });
        return match kind {
            Some(1) => Ok(()),
            Some(k) => Err(format!("an ELF file of type {k}, not a relocatable object")),
            None => Err(format!("a truncated ELF file of {} bytes", bytes.len())),
        };
    }
    const OTHER_OBJECTS: [&[u8]; 8] = [
        b"\x64\x86",         // COFF x86-64
        b"\x4c\x01",         // COFF i386
        b"\x64\xaa",         // COFF arm64
        b"\xcf\xfa\xed\xfe", // Mach-O 64-bit
        b"\xce\xfa\xed\xfe", // Mach-O 32-bit
        b"\xfe\xed\xfa\xcf", // Mach-O 64-bit, big-endian
        b"BC\xc0\xde",       // LLVM bitcode
        b"\xde\xc0\x17\x0b", // LLVM bitcode wrapper
    ];
    if OTHER_OBJECTS.iter().any(|magic| bytes.starts_with(magic)) {
        return Ok(());
    }
    let start = discomy_protocol::digest::hex(&bytes[..bytes.len().min(8)]);
    Err(format!("not an object file ({} bytes starting {start})", bytes.len()))
}

/// A successful unit's output as it travels: checked ([`check_output`]) and small enough, once
/// compressed, for one frame. `Err` is the refusal to send instead (the client compiles
/// locally; the connection and the worker's standing stay intact).
pub fn output_payload(kind: OutputKind, bytes: &[u8]) -> Result<Payload, String> {
    check_output(kind, bytes).map_err(|what| format!("the compiler's output is {what}"))?;
    let payload = Payload::compress(bytes);
    // Room for the rest of the answer (stdout, stderr, names) within the frame.
    let room = discomy_protocol::frame::MAX_FRAME_LEN - (1 << 20);
    if payload.lz4.len() > room {
        return Err(format!(
            "the output ({} bytes, {} compressed) does not fit in one frame ({room} bytes)",
            bytes.len(),
            payload.lz4.len()
        ));
    }
    Ok(payload)
}

/// The object or assembly a unit's compiler writes in its directory.
pub fn output_name(kind: OutputKind) -> &'static str {
    match kind {
        OutputKind::Object => "unit.o",
        OutputKind::Assembly => "unit.s",
    }
}

/// Whether a compile's status says it was killed (a signal, a limit), not that it failed.
pub fn killed(exit_code: i32) -> bool {
    exit_code >= 128
}

/// A unit holding one of the worker's slots: while it lives, the slot is taken, the slot's uid
/// lent, and the unit counted as running.
pub(crate) struct Slot<'a> {
    _permit: SemaphorePermit<'a>,
    uid: UidLease<'a>,
    running: &'a AtomicUsize,
}

impl<'a> Slot<'a> {
    /// Waits for a free slot; `None` when the worker shuts down first.
    pub(crate) async fn take(state: &'a State, shutdown: &CancellationToken) -> Option<Slot<'a>> {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return None,
            permit = state.slots.acquire() => permit.ok()?,
        };
        state.config.running.fetch_add(1, Ordering::Relaxed);
        Some(Slot { _permit: permit, uid: state.uid(), running: &state.config.running })
    }

    /// The unprivileged uid the unit's compiler runs as (when the worker runs as root).
    pub(crate) fn uid(&self) -> Option<u32> {
        self.uid.1
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker's budget of decompressed request payloads in MiB, for `slots` slots
/// ([`discomy_protocol::plumbing::admission::PayloadBudget`]): one payload of the largest size,
/// or 64 MiB per slot when that is more.
pub fn payload_budget_mib(slots: usize) -> usize {
    (discomy_protocol::payload::MAX_RAW_LEN >> 20).max(slots.saturating_mul(64))
}

/// A fresh private directory for one unit under `work_dir` (random name, made exclusively,
/// mode 0700).
pub(crate) fn unit_dir(work_dir: &Path) -> io::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix("unit-").tempdir_in(work_dir)
}

/// Removes a finished unit directory off the answer's path: freeing directories is slow on some
/// file systems (ext4 with `discard` takes milliseconds per directory).
pub fn remove_later(dir: tempfile::TempDir) {
    tokio::task::spawn_blocking(move || drop(dir));
}

/// Compiles one native unit (preprocessed on the client), or says why not.
pub(crate) async fn compile(
    mut req: CompileRequest,
    state: &State,
    shutdown: &CancellationToken,
) -> Response {
    if let Some(why) = state.config.runner.refuses(&req.compiler.identity) {
        return Response::refused(RefusalKind::NoToolchain, why);
    }
    let Some(tree) = state.store.lease(&req.compiler.identity) else {
        return Response::refused(
            RefusalKind::NeedToolchain,
            format!(
                "this worker does not hold toolchain {} ({}) yet",
                req.compiler.identity, req.compiler.name
            ),
        );
    };
    if let Err(why) = check_compile_args(&req.args, &tree.manifest) {
        return Response::refused(RefusalKind::BadArguments, why.to_string());
    }
    // The slot first: at most one unit per slot is decompressed (up to MAX_RAW_LEN each).
    let Some(slot) = Slot::take(state, shutdown).await else {
        return Response::refused(RefusalKind::Unavailable, "worker is shutting down");
    };
    let Some(_room) = state.payload.room(req.unit.raw_len).await else {
        return Response::refused(RefusalKind::BadRequest, "unit larger than any unit may be");
    };
    // Moved to the blocking pool, not copied: only the decompressed unit is used after this.
    let lz4 = std::mem::take(&mut req.unit.lz4);
    let payload = Payload { lz4, ..req.unit };
    let unit = match tokio::task::spawn_blocking(move || payload.decompress(MAX_RAW_LEN)).await {
        Ok(Ok(unit)) => unit,
        Ok(Err(err)) => return Response::refused(RefusalKind::BadRequest, err.to_string()),
        Err(err) => return Response::refused(RefusalKind::Internal, err.to_string()),
    };
    match run_in_dir(&tree, &req, &unit, state, &slot).await {
        Ok(result) => Response::Compiled(result),
        Err(response) => response,
    }
}

async fn run_in_dir(
    tree: &TreeLease<'_>,
    req: &CompileRequest,
    unit: &[u8],
    state: &State,
    slot: &Slot<'_>,
) -> Result<CompileResult, Response> {
    let internal =
        |e: io::Error| Response::refused(RefusalKind::Internal, format!("unit directory: {e}"));
    let dir = unit_dir(&state.config.work_dir).map_err(internal)?;
    tokio::fs::write(dir.path().join(INPUT), unit).await.map_err(internal)?;
    let run =
        compile_unit(&state.config.runner, &tree.root, &tree.manifest, req, dir.path(), slot.uid())
            .await
            .map_err(|e: ExecError| {
                Response::refused(RefusalKind::CompilerFailed, e.to_string())
            })?;
    if killed(run.exit_code) {
        return Err(Response::refused(
            RefusalKind::CompilerFailed,
            format!("compiler killed (status {})", run.exit_code),
        ));
    }
    let output = if run.exit_code == 0 {
        let name = output_name(req.output);
        let bytes = read_output(dir.path().join(name)).await.map_err(|e| {
            Response::refused(RefusalKind::CompilerFailed, format!("compiler wrote no output: {e}"))
        })?;
        let payload = output_payload(req.output, &bytes)
            .map_err(|why| Response::refused(RefusalKind::CompilerFailed, why))?;
        Some(payload)
    } else {
        None
    };
    debug!(source = %req.source_name, exit = run.exit_code, ms = run.elapsed.as_millis() as u64, "compiled");
    state.note_unit(&req.source_name, run.elapsed);
    remove_later(dir);
    Ok(CompileResult {
        exit_code: run.exit_code,
        stdout: run.stdout,
        stderr: run.stderr,
        output,
        node: state.config.node_name.clone(),
        compile_ms: run.elapsed.as_millis() as u64,
        verify: false,
    })
}

/// Compiles one source-mode unit, or says why not.
pub(crate) async fn compile_sources(
    req: SourceCompileRequest,
    node: &State,
    shutdown: &CancellationToken,
) -> Response {
    if let Err(why) = req.validate() {
        return Response::refused(RefusalKind::BadRequest, why.to_string());
    }
    let Some(tree) = node.store.lease(&req.compiler.identity) else {
        return Response::refused(
            RefusalKind::NeedToolchain,
            format!(
                "this worker does not hold toolchain {} ({}) yet",
                req.compiler.identity, req.compiler.name
            ),
        );
    };
    if let Err(why) = check_source_args(&req.args, &tree.manifest, &req.files, &req.cwd) {
        return Response::refused(RefusalKind::BadArguments, why.to_string());
    }
    let missing = node.sources.missing(&req.files);
    if !missing.is_empty() {
        return Response::MissingBlobs(missing);
    }
    let Some(slot) = Slot::take(node, shutdown).await else {
        return Response::refused(RefusalKind::Unavailable, "worker is shutting down");
    };
    match run_sources(&tree.root, &tree.manifest, &req, node, &slot).await {
        Ok((result, None)) => Response::Compiled(result),
        Ok((result, Some(dep_file))) => {
            Response::CompiledSources(SourceResult { result, dep_file })
        }
        Err(response) => response,
    }
}

async fn run_sources(
    tree: &Path,
    manifest: &ToolchainManifest,
    req: &SourceCompileRequest,
    node: &State,
    slot: &Slot<'_>,
) -> Result<(CompileResult, Option<Vec<u8>>), Response> {
    let started = std::time::Instant::now();
    let internal = |e: std::io::Error| {
        Response::refused(RefusalKind::Internal, format!("unit directory: {e}"))
    };
    let list = match node.sources.tree_list(&req.files, &req.cwd) {
        Materialized::Ready(list) => list,
        Materialized::Missing(blobs) => return Err(Response::MissingBlobs(blobs)),
    };
    // A directory, an empty one in it and a small file, in the work directory (a tmpfs by
    // default): done here, a trip to the blocking pool would cost more than the work.
    let dir = sources_dir(&node.config.work_dir, &list).map_err(internal)?;
    let out_dir = dir.path().join("out");
    let tree_list = dir.path().join("tree.list");
    let placed = started.elapsed();
    let ran = exec::compile_sources(
        &node.config.runner,
        tree,
        manifest,
        req,
        &out_dir,
        &tree_list,
        slot.uid(),
    )
    .await;
    let run = ran.map_err(|e| {
        // A blob evicted before the helper copied it: the client sends it again.
        let missing = node.sources.missing_on_disk(&req.files);
        if missing.is_empty() {
            Response::refused(RefusalKind::CompilerFailed, e.to_string())
        } else {
            Response::MissingBlobs(missing)
        }
    })?;
    if killed(run.exit_code) {
        return Err(Response::refused(
            RefusalKind::CompilerFailed,
            format!("compiler killed (status {})", run.exit_code),
        ));
    }
    let (output, dep_file) = if run.exit_code == 0 {
        let wrote_no = |what: &str, e: std::io::Error| {
            Response::refused(RefusalKind::CompilerFailed, format!("compiler wrote no {what}: {e}"))
        };
        let object = read_output(out_dir.join(output_name(req.output)))
            .await
            .map_err(|e| wrote_no("output", e))?;
        let dep_file = match &req.deps {
            Some(_) => Some(
                read_output(out_dir.join(DEP_FILE))
                    .await
                    .map_err(|e| wrote_no("dependency file", e))?,
            ),
            None => None,
        };
        let payload = output_payload(req.output, &object)
            .map_err(|why| Response::refused(RefusalKind::CompilerFailed, why))?;
        (Some(payload), dep_file)
    } else {
        (None, None)
    };
    debug!(
        source = %req.source_name,
        exit = run.exit_code,
        files = req.files.len(),
        tree_ms = placed.as_secs_f64() * 1e3,
        compile_ms = run.elapsed.as_secs_f64() * 1e3,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "compiled from sources"
    );
    remove_later(dir);
    node.note_unit(&req.source_name, run.elapsed);
    let result = CompileResult {
        exit_code: run.exit_code,
        stdout: run.stdout,
        stderr: run.stderr,
        output,
        node: node.config.node_name.clone(),
        compile_ms: run.elapsed.as_millis() as u64,
        verify: false,
    };
    Ok((result, dep_file))
}

/// A source-mode unit asked with the farm tier ([`Request::CompileSourcesCached`]): the entry
/// stored under the key this worker derives from the unit (never the client's) when it owns the
/// key, else the compile; a clean compile's entry, bound to that key, is kept here or handed to
/// the owner the agent named, after the answer is on its way (off the unit's path).
pub(crate) async fn compile_cached(
    cached: CachedSources,
    node: &Arc<State>,
    shutdown: &CancellationToken,
) -> Response {
    let CachedSources { unit, store_at, .. } = cached;
    // Looked up only when this worker owns the key. A key derived now is kept for the store; a
    // unit whose files were not all here yet, or one for another owner, is keyed after its
    // compile (its files are here then, their facts remembered).
    let known = match store_at {
        None => match unit_key(node, unit.clone()).await {
            Some(Ok(key)) => Some(key),
            _ => None,
        },
        Some(_) => None,
    };
    if let Some(Some(key)) = known
        && let Some(body) = node.farm.get(key).await
    {
        return Response::CacheHit(body);
    }
    let for_key = known.is_none().then(|| unit.clone());
    let cwd = unit.cwd.clone();
    let response = compile_sources(unit, node, shutdown).await;
    if matches!(response, Response::Compiled(_) | Response::CompiledSources(_)) {
        let (node, response) = (node.clone(), response.clone());
        tokio::spawn(async move {
            let key = match (known, for_key) {
                (Some(key), _) => key,
                (None, Some(unit)) => unit_key(&node, unit).await.and_then(Result::ok).flatten(),
                (None, None) => None,
            };
            let Some(key) = key else { return };
            let name = node.config.node_name.clone();
            let made = tokio::task::spawn_blocking(move || {
                cache_tier::entry_of(&response, key, cwd, &name)
            });
            let Ok(Some(body)) = made.await else { return };
            match store_at {
                None => node.farm.keep(key, body).await,
                Some(owner) => node.farm.push(&owner, &node.config.auth, key, &body),
            }
        });
    }
    response
}

/// [`cache_tier::FarmStore::unit_key`] off the runtime's threads; `None` if that task failed.
async fn unit_key(
    node: &Arc<State>,
    unit: SourceCompileRequest,
) -> Option<Result<Option<discomy_protocol::Digest>, discomy_protocol::Digest>> {
    let node = node.clone();
    tokio::task::spawn_blocking(move || node.farm.unit_key(&unit, &node.sources)).await.ok()
}

/// Makes a unit's directory under `work_dir`, with its empty `out/` and its `tree.list`.
fn sources_dir(work_dir: &Path, list: &[u8]) -> std::io::Result<tempfile::TempDir> {
    let dir = unit_dir(work_dir)?;
    std::fs::create_dir(dir.path().join("out"))?;
    std::fs::write(dir.path().join("tree.list"), list)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sources::SourceStore;
    use crate::store::tools::ToolStore;
    use crate::worker::WorkerConfig;
    use crate::worker::exec::Runner;
    use discomy_protocol::stats::WorkerStats;
    use std::sync::Arc;

    fn state(dir: &Path, slots: usize) -> State {
        let config = WorkerConfig {
            slots,
            auth: discomy_protocol::AuthConfig::none(),
            runner: Runner::Host {
                wall: std::time::Duration::from_secs(1),
                seeded: Arc::default(),
            },
            node_name: "test".into(),
            work_dir: dir.join("work"),
            running: Arc::default(),
            metrics_listen: None,
        };
        State {
            config,
            store: ToolStore::open(&dir.join("store"), 1 << 20, false).expect("store"),
            sources: SourceStore::open(&dir.join("sources"), 1 << 20).expect("sources"),
            farm: crate::store::cache_tier::FarmStore::open(&dir.join("store")),
            slots: tokio::sync::Semaphore::new(slots),
            payload: discomy_protocol::plumbing::admission::PayloadBudget::new(payload_budget_mib(
                slots,
            )),
            uids: std::sync::Mutex::new(vec![64000, 64001]),
            distcc_results: std::sync::Mutex::default(),
            recent_units: std::sync::Mutex::default(),
            metrics: Default::default(),
        }
    }

    /// A client names its source freely: the worker's list of recent units keeps a bounded
    /// prefix of each name, and a bounded number of them.
    #[test]
    fn recent_units_are_bounded_in_count_and_name_length() {
        let dir = tempfile::tempdir().expect("dir");
        let state = state(dir.path(), 2);
        let long = "é".repeat(1 << 16);
        for _ in 0..(WorkerStats::RECENT_UNITS + 5) {
            state.note_unit(&long, std::time::Duration::from_millis(3));
        }
        let units = state.recent_units.lock().expect("lock");
        assert_eq!(units.len(), WorkerStats::RECENT_UNITS);
        assert!(units.iter().all(|u| u.source.len() <= discomy_protocol::sources::MAX_SOURCE_PATH));
        assert!(units[0].source.starts_with('é'));
    }

    /// Every kind of unit takes its slot here, so every kind is counted as running and gives
    /// its uid back (source-mode and distcc units used to be missing from the load report).
    #[tokio::test]
    async fn a_slot_counts_the_unit_running_and_lends_a_uid_until_dropped() {
        let dir = tempfile::tempdir().expect("dir");
        let state = state(dir.path(), 2);
        let shutdown = CancellationToken::new();
        let running = || state.config.running.load(Ordering::Relaxed);
        let a = Slot::take(&state, &shutdown).await.expect("slot");
        let b = Slot::take(&state, &shutdown).await.expect("slot");
        assert_eq!(running(), 2);
        assert_ne!(a.uid(), b.uid());
        assert!(a.uid().is_some() && b.uid().is_some());
        drop(a);
        assert_eq!(running(), 1);
        assert_eq!(state.uids.lock().expect("uids").len(), 1, "the uid went back");
        drop(b);
        assert_eq!(running(), 0);
    }

    #[test]
    fn names() {
        assert_eq!(output_name(OutputKind::Object), "unit.o");
        assert_eq!(output_name(OutputKind::Assembly), "unit.s");
        assert!(killed(137) && !killed(1));
    }

    #[test]
    fn only_objects_pass_for_dash_c() {
        let mut elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x01\0".to_vec();
        assert_eq!(check_output(OutputKind::Object, &elf), Ok(()));
        elf[16] = 2;
        let exec = check_output(OutputKind::Object, &elf).expect_err("an executable");
        assert!(exec.contains("type 2"), "{exec}");
        for bad in [&b""[..], b"root:x:0:0:root:/root:/bin/bash\n", b"\x7fELF"] {
            assert!(check_output(OutputKind::Object, bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_output(OutputKind::Object, b"\xcf\xfa\xed\xfe rest"), Ok(()));
        assert_eq!(check_output(OutputKind::Assembly, b"\t.file \"a.c\"\n"), Ok(()));
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let big: Vec<u8> = (0..(80u32 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut big_elf = elf.clone();
        big_elf[16] = 1;
        big_elf.extend_from_slice(&big);
        let refused = output_payload(OutputKind::Object, &big_elf).expect_err("80 MiB of noise");
        assert!(refused.contains("does not fit in one frame"), "{refused}");
    }
}
