//! Running one program through the helper: a warm helper or a fresh one, its output drained
//! under a cap, the wall-time limit, the run's end taken from the helper's record (the helper
//! may still be leaving its namespaces), and the outcome read from its status file; and the
//! start-up probe.

use super::*;

/// Runs `spec.program` in a sandbox and waits for it, at most `spec.limits.wall`.
///
/// A program that fails, crashes or hits a limit is an `Ok` answer (see
/// [`SandboxOutput::limits_hit`]); `Err` means the sandbox itself could not be run.
/// Dropping the future kills the whole process group.
pub async fn run(spec: &SandboxSpec<'_>) -> Result<SandboxOutput, SandboxError> {
    run_with(spec, None).await
}

/// [`run`], with a helper from `warm` when one is ready for these limits (the pool is refilled
/// in the background); otherwise, or when the warm helper has gone, a fresh one.
pub async fn run_with(
    spec: &SandboxSpec<'_>,
    warm: Option<&std::sync::Arc<WarmPool>>,
) -> Result<SandboxOutput, SandboxError> {
    let unit = unit_args(spec)?;
    let started = Instant::now();
    let mut taken = None;
    if let Some(pool) = warm {
        if let Some(helper) = pool.take(spec.helper, spec.limits, spec.cgroup_parents) {
            taken = helper.start(&unit).await;
            // Its replacement starts while this unit compiles.
            let pool = std::sync::Arc::clone(pool);
            tokio::spawn(async move { pool.fill() });
        }
    }
    let (mut child, status_file) = match taken {
        Some(started) => started,
        None => spawn_helper(spec.helper, spec.limits, spec.cgroup_parents, unit, Stdio::null())?,
    };
    // Kills the helper's process group (and with it the sandbox) unless disarmed.
    let mut killer = GroupKiller::new(child.id());
    let out_pipe = child.stdout.take();
    let err_pipe = child.stderr.take();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let (mut out_truncated, mut err_truncated) = (false, false);
    let exited = Notify::new();
    let pipes_closed = Notify::new();
    // The helper closes its output pipes once its record is complete: the run is over then,
    // though the helper may still be leaving its namespaces (see the helper's stage 1).
    let read_record =
        || std::fs::read_to_string(status_file.path()).ok().and_then(|t| HelperStatus::parse(&t));
    let finished = async {
        pipes_closed.notified().await;
        match read_record() {
            Some(record) if record.setup_error.is_none() => record,
            _ => std::future::pending().await,
        }
    };
    // How the run ended: the helper's exit (and whether the wall clock killed it), or its
    // complete record while it is still leaving its namespaces.
    enum Ended {
        Exited(std::process::ExitStatus, bool),
        Recorded(HelperStatus),
    }
    let wait = async {
        let result = tokio::select! {
            waited = tokio::time::timeout(spec.limits.wall, child.wait()) => match waited {
                Ok(result) => result.map(|status| Ended::Exited(status, false)),
                Err(_) => {
                    killer.kill();
                    child.wait().await.map(|status| Ended::Exited(status, true))
                }
            },
            record = finished => Ok(Ended::Recorded(record)),
        };
        exited.notify_one();
        result
    };
    let read = async {
        let both = async {
            tokio::join!(
                drain(out_pipe, &mut stdout, &mut out_truncated),
                drain(err_pipe, &mut stderr, &mut err_truncated)
            )
        };
        let grace = async {
            exited.notified().await;
            tokio::time::sleep(READ_GRACE).await;
        };
        tokio::select! {
            _ = both => pipes_closed.notify_one(),
            () = grace => {}
        }
    };
    let (waited, ()) = tokio::join!(wait, read);
    let ended = waited.map_err(SandboxError::Wait)?;
    killer.disarm();
    let elapsed = started.elapsed();
    let (status, wall_killed, record) = match ended {
        Ended::Exited(status, wall_killed) => (Some(status), wall_killed, read_record()),
        Ended::Recorded(record) => {
            // Finished but not yet exited: reaped in the background.
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            (None, false, Some(record))
        }
    };
    if let Some(msg) = record.as_ref().and_then(|r| r.setup_error.clone()) {
        return Err(SandboxError::Setup(msg));
    }
    // Without a usable record the helper's own exit says it (it always has one then).
    let exited = || status.as_ref().map_or((-1, None), exit_of);
    let (exit_code, signal) = match &record {
        Some(r) if !wall_killed => match (r.code, r.signal) {
            (_, Some(sig)) => (128 + sig, Some(sig)),
            (Some(code), None) => (code, None),
            (None, None) => exited(),
        },
        _ => exited(),
    };
    if record.is_none() && !wall_killed && exit_code == i32::from(SETUP_EXIT_CODE) {
        if let Some(msg) = setup_message(&stderr) {
            return Err(SandboxError::Setup(msg));
        }
    }

    let mut limits_hit = Vec::new();
    if wall_killed {
        limits_hit.push(LimitHit::WallTime);
    }
    let cpu_ms = record.as_ref().and_then(|r| r.cpu_ms);
    let cpu_over = cpu_ms.is_some_and(|ms| ms >= spec.limits.cpu_secs.saturating_mul(1000));
    match signal {
        Some(sig) if sig == nix::sys::signal::Signal::SIGXCPU as i32 => {
            limits_hit.push(LimitHit::CpuTime)
        }
        Some(sig) if sig == nix::sys::signal::Signal::SIGXFSZ as i32 => {
            limits_hit.push(LimitHit::FileSize)
        }
        Some(sig)
            if sig == nix::sys::signal::Signal::SIGKILL as i32 && cpu_over && !wall_killed =>
        {
            limits_hit.push(LimitHit::CpuTime);
        }
        _ => {}
    }
    if let Some(r) = &record {
        if r.oom_kills > 0 {
            limits_hit.push(LimitHit::Memory);
        }
        if r.pids_max_events > 0 {
            limits_hit.push(LimitHit::Processes);
        }
        if r.work_full {
            limits_hit.push(LimitHit::WorkDir);
        }
    }
    if out_truncated || err_truncated {
        limits_hit.push(LimitHit::Output);
    }
    Ok(SandboxOutput {
        exit_code,
        signal,
        stdout,
        stderr,
        elapsed,
        cpu_time: cpu_ms.map(Duration::from_millis),
        limits_hit,
    })
}

/// Starts the helper as the worker runs it, with a fresh status file, the options for `limits`
/// and then `extra`: an empty environment, output captured, its own process group (killed as a
/// whole), killed when dropped.
pub(crate) fn spawn_helper(
    helper: &Path,
    limits: &Limits,
    cgroup_parents: &[PathBuf],
    extra: Vec<OsString>,
    stdin: Stdio,
) -> Result<(tokio::process::Child, tempfile::NamedTempFile), SandboxError> {
    let status_file = tempfile::Builder::new()
        .prefix("discomy-sandbox-status-")
        .tempfile()
        .map_err(SandboxError::StatusFile)?;
    let mut args = base_args(limits, cgroup_parents, Some(status_file.path()));
    args.extend(extra);
    let child = Command::new(helper)
        .args(&args)
        .env_clear()
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SandboxError::Spawn { helper: helper.to_path_buf(), source })?;
    Ok((child, status_file))
}

/// Checks once, at worker start-up, that sandboxes can be created on this host: runs
/// `HELPER --probe`, which sets up every namespace, mount and limit of a real run with `/` as
/// the toolchain tree and exits instead of running a program.
///
/// `Ok` holds the helper's one-line description of what is enforced here (user namespace or
/// root, cgroups, process limit), for the log. `Err` explains what failed, including a hint
/// when the kernel forbids unprivileged user namespaces.
pub fn probe(helper: &Path) -> Result<String, ProbeError> {
    let out = std::process::Command::new(helper)
        .arg("--probe")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ProbeError::Run { helper: helper.display().to_string(), source })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.status.success() {
        return Ok(report);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why = setup_message(&out.stderr).unwrap_or_else(|| stderr.trim().to_owned());
    Err(ProbeError::Refused {
        helper: helper.display().to_string(),
        status: out.status.to_string(),
        why,
    })
}

/// Why sandboxes cannot be made on this host.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The helper could not be started.
    #[error("cannot run {helper}: {source}")]
    Run {
        /// The helper.
        helper: String,
        /// The error.
        source: std::io::Error,
    },
    /// The helper's set-up failed.
    #[error("sandboxes cannot be created here ({helper} --probe: {status}): {why}")]
    Refused {
        /// The helper.
        helper: String,
        /// Its exit status.
        status: String,
        /// Its one-line reason, with the user-namespace hint when that is the cause.
        why: String,
    },
}

pub(super) fn exit_of(status: &std::process::ExitStatus) -> (i32, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        (None, None) => (-1, None),
    }
}

/// The helper's own messages in `stderr`, without their prefix.
pub(super) fn setup_message(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix(SETUP_PREFIX)).collect();
    (!lines.is_empty()).then(|| lines.join("; "))
}

pub(super) async fn drain<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    buf: &mut Vec<u8>,
    truncated: &mut bool,
) {
    let Some(mut pipe) = pipe else { return };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = MAX_OUTPUT_BYTES.saturating_sub(buf.len());
                if n > room {
                    *truncated = true;
                }
                buf.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}
