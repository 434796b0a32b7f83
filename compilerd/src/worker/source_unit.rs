//! A worker compiling a source-mode unit: check it, build its file tree from the source store,
//! run the build's own command in the sandbox over that tree, and answer with the result.
//!
//! A unit whose files are not all stored yet is answered with [`Response::MissingBlobs`]; the
//! client sends them with `PutSource` and asks again.

use std::path::Path;

use discomy_protocol::{CompileResult, RefusalKind, Response, SourceCompileRequest, SourceResult};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::State;
use super::unit::{self, Slot};
use crate::store::sources::Materialized;
use crate::worker::argcheck::check_source_args;
use crate::worker::exec::compile_sources;

/// Compiles one source-mode unit, or says why not.
pub(crate) async fn compile(
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
    match run(&tree.root, &tree.manifest, &req, node, &slot).await {
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
    let dir = unit_dir(&node.config.work_dir, &list).map_err(internal)?;
    let out_dir = dir.path().join("out");
    let tree_list = dir.path().join("tree.list");
    let placed = started.elapsed();
    let ran =
        compile_sources(&node.config.runner, tree, manifest, req, &out_dir, &tree_list, slot.uid())
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
    if unit::killed(run.exit_code) {
        return Err(Response::refused(
            RefusalKind::CompilerFailed,
            format!("compiler killed (status {})", run.exit_code),
        ));
    }
    let (output, dep_file) = if run.exit_code == 0 {
        let wrote_no = |what: &str, e: std::io::Error| {
            Response::refused(RefusalKind::CompilerFailed, format!("compiler wrote no {what}: {e}"))
        };
        let object = unit::read_output(out_dir.join(unit::output_name(req.output)))
            .await
            .map_err(|e| wrote_no("output", e))?;
        let dep_file = match &req.deps {
            Some(_) => Some(
                unit::read_output(out_dir.join(unit::DEP_FILE))
                    .await
                    .map_err(|e| wrote_no("dependency file", e))?,
            ),
            None => None,
        };
        let payload = unit::output_payload(req.output, &object)
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
    unit::remove_later(dir);
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

/// Makes a unit's directory under `work_dir`, with its empty `out/` and its `tree.list`.
fn unit_dir(work_dir: &Path, list: &[u8]) -> std::io::Result<tempfile::TempDir> {
    let dir = unit::unit_dir(work_dir)?;
    std::fs::create_dir(dir.path().join("out"))?;
    std::fs::write(dir.path().join("tree.list"), list)?;
    Ok(dir)
}
