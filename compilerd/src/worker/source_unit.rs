//! A worker compiling a source-mode unit: check it, build its file tree from the source store,
//! run the build's own command in the sandbox over that tree, and answer with the result.
//!
//! A unit whose files are not all stored yet is answered with [`Response::MissingBlobs`]; the
//! client sends them with `PutSource` and asks again.

use std::path::Path;
use std::sync::Mutex;

use discomy_protocol::{
    CompileResult, OutputKind, Payload, RefusalKind, Response, SourceCompileRequest, SourceResult,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::store::sources::{Materialized, SourceStore};
use crate::store::tools::ToolStore;
use crate::worker::argcheck::check_source_args;
use crate::worker::exec::{Runner, compile_sources};

/// What a worker lends to one source-mode unit.
pub struct Node<'a> {
    /// Toolchains.
    pub store: &'a ToolStore,
    /// Source-mode file contents.
    pub sources: &'a SourceStore,
    /// Compile slots.
    pub slots: &'a Semaphore,
    /// Free per-slot uids.
    pub uids: &'a Mutex<Vec<u32>>,
    /// How compilers run.
    pub runner: &'a Runner,
    /// Where unit directories are made.
    pub work_dir: &'a Path,
    /// Name reported in results.
    pub node_name: &'a str,
}

/// Compiles one source-mode unit, or says why not.
pub async fn compile(
    req: SourceCompileRequest,
    node: &Node<'_>,
    shutdown: &CancellationToken,
) -> Response {
    if let Err(why) = req.validate() {
        return Response::refused(RefusalKind::BadRequest, why);
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
        return Response::refused(RefusalKind::BadArguments, why);
    }
    let missing = node.sources.missing(&req.files);
    if !missing.is_empty() {
        return Response::MissingBlobs(missing);
    }
    let _permit = tokio::select! {
        _ = shutdown.cancelled() => {
            return Response::refused(RefusalKind::Unavailable, "worker is shutting down");
        }
        permit = node.slots.acquire() => match permit {
            Ok(p) => p,
            Err(_) => return Response::refused(RefusalKind::Unavailable, "worker is shutting down"),
        },
    };
    match run(&tree.root, &tree.manifest, &req, node).await {
        Ok((result, None)) => Response::Compiled(result),
        Ok((result, Some(dep_file))) => {
            Response::CompiledSources(SourceResult { result, dep_file })
        }
        Err(response) => response,
    }
}

async fn run(
    tree: &Path,
    manifest: &discomy_protocol::ToolchainManifest,
    req: &SourceCompileRequest,
    node: &Node<'_>,
) -> Result<(CompileResult, Option<Vec<u8>>), Response> {
    let started = std::time::Instant::now();
    let internal = |e: std::io::Error| {
        Response::refused(RefusalKind::Internal, format!("unit directory: {e}"))
    };
    let list = match node.sources.tree_list(&req.files, &req.cwd) {
        Materialized::Ready(list) => list,
        Materialized::Missing(blobs) => return Err(Response::MissingBlobs(blobs)),
    };
    // One trip to the blocking pool for the unit's directory, its output directory and list.
    let work_dir = node.work_dir.to_path_buf();
    let dir = tokio::task::spawn_blocking(move || unit_dir(&work_dir, &list))
        .await
        .map_err(|e| internal(std::io::Error::other(e)))?
        .map_err(internal)?;
    let out_dir = dir.path().join("out");
    let tree_list = dir.path().join("tree.list");
    let placed = started.elapsed();
    let uid = node.uids.lock().unwrap_or_else(|e| e.into_inner()).pop();
    let ran = compile_sources(node.runner, tree, manifest, req, &out_dir, &tree_list, uid).await;
    if let Some(uid) = uid {
        node.uids.lock().unwrap_or_else(|e| e.into_inner()).push(uid);
    }
    let run = ran.map_err(|e| {
        // A blob evicted before the helper copied it: the client sends it again.
        let missing = node.sources.missing(&req.files);
        if missing.is_empty() {
            Response::refused(RefusalKind::CompilerFailed, e.to_string())
        } else {
            Response::MissingBlobs(missing)
        }
    })?;
    if run.exit_code >= 128 {
        return Err(Response::refused(
            RefusalKind::CompilerFailed,
            format!("compiler killed (status {})", run.exit_code),
        ));
    }
    let (output, dep_file) = if run.exit_code == 0 {
        let name = match req.output {
            OutputKind::Object => "unit.o",
            OutputKind::Assembly => "unit.s",
        };
        let want_deps = req.deps.is_some();
        let read = tokio::task::spawn_blocking(move || read_outputs(&out_dir, name, want_deps))
            .await
            .map_err(|e| Response::refused(RefusalKind::Internal, e.to_string()))?;
        let (output, dep_file) = read.map_err(|why| {
            Response::refused(RefusalKind::CompilerFailed, format!("compiler wrote no {why}"))
        })?;
        (Some(output), dep_file)
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
    let result = CompileResult {
        exit_code: run.exit_code,
        stdout: run.stdout,
        stderr: run.stderr,
        output,
        node: node.node_name.to_string(),
        compile_ms: run.elapsed.as_millis() as u64,
    };
    Ok((result, dep_file))
}

/// Makes a unit's directory under `work_dir`, with its empty `out/` and its `tree.list`.
fn unit_dir(work_dir: &Path, list: &[u8]) -> std::io::Result<tempfile::TempDir> {
    std::fs::create_dir_all(work_dir)?;
    let dir = tempfile::Builder::new().prefix("unit-").tempdir_in(work_dir)?;
    std::fs::create_dir(dir.path().join("out"))?;
    std::fs::write(dir.path().join("tree.list"), list)?;
    Ok(dir)
}

/// Reads a finished unit's output (compressed for the answer) and, when asked for, its
/// dependency file; `Err` names what is missing.
fn read_outputs(
    out_dir: &Path,
    name: &str,
    want_deps: bool,
) -> Result<(Payload, Option<Vec<u8>>), String> {
    let bytes = std::fs::read(out_dir.join(name)).map_err(|e| format!("output: {e}"))?;
    let dep_file = match want_deps {
        true => Some(
            std::fs::read(out_dir.join("unit.d")).map_err(|e| format!("dependency file: {e}"))?,
        ),
        false => None,
    };
    Ok((Payload::compress(&bytes), dep_file))
}

/// Removes a finished unit directory off the answer's path: freeing directories is slow on
/// some file systems (ext4 with `discard` takes milliseconds per directory).
pub fn remove_later(dir: tempfile::TempDir) {
    tokio::task::spawn_blocking(move || drop(dir));
}
