//! Running one compile on a worker: a private directory, the compiler in its own process group,
//! a time limit, and resource limits; the whole group is killed on timeout or cancellation.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use discomy_protocol::{CompileRequest, Language, OutputKind};
use tokio::process::Command;

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
}

/// Compiles `dir/unit.i` into `dir/unit.o` (or `.s`) with `driver` and the request's arguments.
pub async fn compile_unit(
    driver: &Path,
    path_var: &std::ffi::OsStr,
    req: &CompileRequest,
    dir: &Path,
    limit: Duration,
) -> Result<RunOutput, ExecError> {
    let lang = match req.language {
        Language::C => "cpp-output",
        Language::Cxx => "c++-cpp-output",
    };
    let (mode, out) = match req.output {
        OutputKind::Object => ("-c", "unit.o"),
        OutputKind::Assembly => ("-S", "unit.s"),
    };
    let mut cmd = Command::new(driver);
    cmd.args(&req.args)
        .args(["-fpreprocessed", "-fdirectives-only", "-x", lang, mode, "unit.i", "-o", out])
        .current_dir(dir)
        .env_clear()
        .env("PATH", path_var)
        .env("LC_ALL", "C")
        .env("TMPDIR", dir)
        .envs(req.source_date_epoch.as_deref().map(|v| ("SOURCE_DATE_EPOCH", v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let child = cmd.spawn().map_err(ExecError::Spawn)?;
    let pid = child.id();
    let guard = GroupKiller(pid);
    let result = tokio::time::timeout(limit, child.wait_with_output()).await;
    match result {
        Err(_) => Err(ExecError::Timeout(limit)),
        Ok(Err(e)) => Err(ExecError::Wait(e)),
        Ok(Ok(out)) => {
            std::mem::forget(guard);
            Ok(RunOutput {
                exit_code: out.status.code().unwrap_or_else(|| {
                    use std::os::unix::process::ExitStatusExt;
                    128 + out.status.signal().unwrap_or(0)
                }),
                stdout: out.stdout,
                stderr: out.stderr,
                elapsed: started.elapsed(),
            })
        }
    }
}

/// Kills a compile's whole process group (driver, cc1, as) when dropped before completion.
struct GroupKiller(Option<u32>);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
