//! Running one compile on a worker: the unit's toolchain tree as the root of a sandbox, the unit
//! directory as its private `/tmp`, the compiler in its own process group under a time limit.
//!
//! Without a sandbox (`--insecure-no-sandbox`, for hosts that cannot create namespaces) only
//! toolchains seeded from this host's own compilers can run, directly on the host.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use discomy_protocol::plumbing::GroupKiller;
use discomy_protocol::{
    CompileRequest, Language, OutputKind, SourceCompileRequest, ToolchainManifest,
};
use tokio::process::Command;

use crate::sandbox::{self, Limits, SandboxSpec};
use crate::worker::unit;

/// What a compile run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit status (128 + signal when killed).
    pub exit_code: i32,
    /// Captured standard output.
    pub stdout: Vec<u8>,
    /// Captured standard error.
    pub stderr: Vec<u8>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why a compile could not run to completion.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The compiler could not be started.
    #[error("failed to start the compiler: {0}")]
    Spawn(std::io::Error),
    /// The time limit ran out; the process group was killed.
    #[error("compile exceeded the time limit of {0:?}")]
    Timeout(Duration),
    /// Waiting for the compiler failed.
    #[error("failed to wait for the compiler: {0}")]
    Wait(std::io::Error),
    /// The sandbox could not be set up or a limit stopped the compile.
    #[error("sandbox: {0}")]
    Sandbox(String),
}

/// How this worker runs compilers.
#[derive(Debug, Clone)]
pub enum Runner {
    /// In a fresh sandbox per unit, through the `discomy-sandbox` helper.
    Sandbox {
        /// The helper binary.
        helper: PathBuf,
        /// Resource limits per unit.
        limits: Limits,
        /// Helpers started ahead of time for these limits ([`sandbox::WarmPool`]).
        warm: Option<std::sync::Arc<sandbox::WarmPool>>,
    },
    /// Directly on the host: only the toolchains seeded from the host's own compilers at start-up
    /// run, and the worker accepts no uploads (`--insecure-no-sandbox`).
    Host {
        /// Wall-time limit per unit.
        wall: Duration,
        /// The toolchains seeded from this host's compilers, the only ones that may run.
        seeded: std::sync::Arc<std::collections::BTreeSet<discomy_protocol::Digest>>,
    },
}

impl Runner {
    /// Why this runner will not run `toolchain`, if it will not: a host-mode worker runs only the
    /// toolchains seeded from its own compilers, whatever its store holds from earlier runs.
    pub fn refuses(&self, toolchain: &discomy_protocol::Digest) -> Option<String> {
        match self {
            Runner::Host { seeded, .. } if !seeded.contains(toolchain) => Some(format!(
                "toolchain {toolchain} is not one of this host's own compilers, the only ones a \
                 worker without a sandbox (--insecure-no-sandbox) runs"
            )),
            _ => None,
        }
    }

    /// Whether this worker takes toolchain uploads (`PutBlob`, `InstallToolchain`): only with
    /// its sandbox, since without one an uploaded program would run on the host.
    pub fn accepts_uploads(&self) -> bool {
        matches!(self, Runner::Sandbox { .. })
    }
}

/// The compile-step command line the worker runs for a request (inputs and outputs its own).
pub fn compile_args(req: &CompileRequest) -> Vec<String> {
    let lang = match req.language {
        Language::C => "cpp-output",
        Language::Cxx => "c++-cpp-output",
    };
    let mode = match req.output {
        OutputKind::Object => "-c",
        OutputKind::Assembly => "-S",
    };
    let out = unit::output_name(req.output);
    let mut args = req.args.clone();
    args.extend(
        ["-fpreprocessed", "-fdirectives-only", "-x", lang, mode, unit::INPUT, "-o", out]
            .map(String::from),
    );
    args
}

/// PATH inside the sandbox: every `bin` directory of the toolchain, then the usual ones.
fn tree_path_var(manifest: &ToolchainManifest) -> String {
    let mut dirs: Vec<&str> = manifest
        .entries
        .iter()
        .filter_map(|e| e.path.rsplit_once('/').map(|(dir, _)| dir))
        .filter(|dir| dir.ends_with("/bin"))
        .collect();
    dirs.dedup();
    for d in ["/usr/local/bin", "/usr/bin", "/bin"] {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs.join(":")
}

/// Compiles `dir/unit.i` into `dir/unit.o` (or `.s`) with the toolchain rooted at `tree`.
pub async fn compile_unit(
    runner: &Runner,
    tree: &Path,
    manifest: &ToolchainManifest,
    req: &CompileRequest,
    dir: &Path,
    uid: Option<u32>,
) -> Result<RunOutput, ExecError> {
    let args = compile_args(req);
    run_compiler(runner, tree, manifest, &args, req.source_date_epoch.as_deref(), dir, uid, None)
        .await
}

/// What a source-mode compile sees besides the toolchain: the unit's files laid over it, and
/// the build's working directory.
#[derive(Debug, Clone, Copy)]
pub struct SourceView<'a> {
    /// The unit tree's list (files at their absolute paths; see
    /// [`crate::store::sources::SourceStore::tree_list`]).
    pub tree_list: &'a Path,
    /// The working directory inside the sandbox.
    pub cwd: &'a Path,
}

/// Runs the toolchain's driver with `args` (already checked; inputs and outputs inside `dir`) in
/// `dir`, the way [`compile_unit`] does. The distcc listener uses it with distcc's own argv;
/// source-mode units pass their [`SourceView`] (sandbox only).
#[allow(clippy::too_many_arguments)]
pub async fn run_compiler(
    runner: &Runner,
    tree: &Path,
    manifest: &ToolchainManifest,
    args: &[String],
    source_date_epoch: Option<&str>,
    dir: &Path,
    uid: Option<u32>,
    view: Option<SourceView<'_>>,
) -> Result<RunOutput, ExecError> {
    let mut env = vec![
        ("PATH".to_string(), tree_path_var(manifest)),
        ("LC_ALL".to_string(), "C".to_string()),
    ];
    if let Some(epoch) = source_date_epoch {
        env.push(("SOURCE_DATE_EPOCH".to_string(), epoch.to_string()));
    }
    match runner {
        Runner::Sandbox { helper, limits, warm } => {
            env.push(("TMPDIR".to_string(), "/tmp".to_string()));
            let spec = SandboxSpec {
                helper,
                root: tree,
                work: dir,
                program: &manifest.driver,
                args,
                env: &env,
                limits,
                run_as: uid.map(|u| (u, u)),
                cgroup_parents: &[],
                overlay: None,
                overlay_files: view.map(|v| v.tree_list),
                cwd: view.map(|v| v.cwd),
            };
            let out = sandbox::run_with(&spec, warm.as_ref())
                .await
                .map_err(|e| ExecError::Sandbox(e.to_string()))?;
            // The compiler saw ENOSPC and failed, which it would not have done at home: that
            // is the farm's limit, never the unit's result.
            if out.hit(sandbox::LimitHit::WorkDir) {
                return Err(ExecError::Sandbox(format!(
                    "the unit directory outgrew its limit of {} bytes",
                    limits.work_bytes
                )));
            }
            Ok(RunOutput {
                exit_code: out.exit_code,
                stdout: out.stdout,
                stderr: out.stderr,
                elapsed: out.elapsed,
            })
        }
        Runner::Host { .. } if view.is_some() => Err(ExecError::Sandbox(
            "source-mode units need the sandbox (this worker runs --insecure-no-sandbox)".into(),
        )),
        Runner::Host { wall, .. } => {
            env.push(("TMPDIR".to_string(), dir.to_string_lossy().into_owned()));
            run_on_host(&manifest.driver, args, &env, dir, *wall).await
        }
    }
}

/// The command line of a source-mode unit: the build's own arguments, the object or assembly
/// written into the work directory mounted at `work_at`.
pub fn source_args(req: &SourceCompileRequest, work_at: &str) -> Vec<String> {
    let out = unit::output_name(req.output);
    let mut args = req.args.clone();
    args.push("-o".into());
    args.push(format!("{work_at}/{out}"));
    if let Some(deps) = &req.deps {
        args.push(if deps.user_only { "-MMD" } else { "-MD" }.into());
        args.push("-MF".into());
        args.push(format!("{work_at}/{}", unit::DEP_FILE));
        args.extend(deps.targets.iter().cloned());
    }
    args
}

/// Compiles a source-mode unit: the build's command in the build's working directory, over the
/// unit tree of `tree_list` (the client's files at their absolute paths) laid on the toolchain
/// at `tree`; the output lands in `dir` as `unit.o` (or `.s`). Needs the sandbox.
#[allow(clippy::too_many_arguments)]
pub async fn compile_sources(
    runner: &Runner,
    tree: &Path,
    manifest: &ToolchainManifest,
    req: &SourceCompileRequest,
    dir: &Path,
    tree_list: &Path,
    uid: Option<u32>,
) -> Result<RunOutput, ExecError> {
    // The unit's own files under /tmp make /tmp the tree's, as a tree with a `tmp` would.
    let under_tmp = |p: &str| p == "/tmp" || p.starts_with("/tmp/");
    let work_at = if req.files.iter().any(|f| under_tmp(&f.path)) || under_tmp(&req.cwd) {
        sandbox::WORK_ELSEWHERE
    } else {
        sandbox::work_mount_point(&[tree])
    };
    let args = source_args(req, work_at);
    let view = SourceView { tree_list, cwd: Path::new(&req.cwd) };
    let epoch = req.source_date_epoch.as_deref();
    run_compiler(runner, tree, manifest, &args, epoch, dir, uid, Some(view)).await
}

async fn run_on_host(
    program: &str,
    args: &[String],
    env: &[(String, String)],
    dir: &Path,
    limit: Duration,
) -> Result<RunOutput, ExecError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let child = cmd.spawn().map_err(ExecError::Spawn)?;
    // Kills the compile's whole process group (driver, cc1, as) if it is abandoned.
    let mut guard = GroupKiller::new(child.id());
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Err(_) => Err(ExecError::Timeout(limit)),
        Ok(Err(e)) => Err(ExecError::Wait(e)),
        Ok(Ok(out)) => {
            guard.disarm();
            use std::os::unix::process::ExitStatusExt;
            Ok(RunOutput {
                exit_code: out
                    .status
                    .code()
                    .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0)),
                stdout: out.stdout,
                stderr: out.stderr,
                elapsed: started.elapsed(),
            })
        }
    }
}
