//! One assignment's HTTP side: check it, download its blobs into a private work directory
//! (`WORK_DIR/job-ID-ATTEMPT`, 0700), run [`super::job::build`] while its log streams to the
//! coordinator about every second, upload the RPMs and the log, say `finish`.
//!
//! Uploads and `finish` are retried with a backoff while the coordinator is unreachable or
//! answers 5xx (it may be restarted mid-build), until accepted, refused with a 4xx, the attempt
//! is stopped, or the builder shuts down. The assignment itself is checked like any peer's input:
//! names, digests, sizes, the chroot and the architecture.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use discomy_protocol::ops::{
    Assignment, BlobRef, Failure, FailureKind, FinishRequest, JobSource, Outcome, is_blake3_hex,
    is_plain_file_name,
};
use tokio_util::sync::CancellationToken;

use super::cgroup::Limits;
use super::config::Config;
use super::job::{BuildSettings, Control, Inputs, LocalFile, build};
use crate::coord::api::{ApiClient, ApiClientError};

/// The largest blob downloaded.
pub const MAX_BLOB_BYTES: u64 = 16 << 30;
/// The most blobs one job may name.
pub const MAX_BLOBS: usize = 1000;
/// The longest timeout obeyed (a week).
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
/// Free space needed in the work directory, beyond the job's sources, to start.
pub const MIN_FREE_BYTES: u64 = 1 << 30;
/// Log bytes per append request.
const LOG_CHUNK: u64 = 1 << 20;
/// How often the log is sent.
const LOG_EVERY: Duration = Duration::from_secs(1);
/// Tries of one blob download before the attempt fails as infrastructure.
const DOWNLOAD_TRIES: u32 = 3;

/// Everything an attempt's thread needs.
#[derive(Debug, Clone)]
pub struct AttemptEnv {
    /// The coordinator.
    pub client: ApiClient,
    /// The configuration.
    pub config: Arc<Config>,
    /// The builder's shutdown.
    pub shutdown: CancellationToken,
    /// The builder's counts for `/metrics`.
    pub metrics: Arc<super::metrics::BuilderMetrics>,
}

fn failure(kind: FailureKind, message: impl Into<String>) -> Failure {
    Failure { kind, message: message.into() }
}

/// Runs assignment `a` to its end and says how it ended to the coordinator (unless stopped).
pub fn run_attempt(env: &AttemptEnv, a: &Assignment, control: &Control) {
    let work = work_path(&env.config, a.job, a.attempt);
    let started = std::time::Instant::now();
    let outcome = match attempt(env, a, control, &work) {
        Ok(outcome) => outcome,
        Err(f) => Outcome::Failed(f),
    };
    let seconds = started.elapsed().as_secs_f64();
    if control.stop.load(Ordering::SeqCst) {
        tracing::info!(job = a.job, attempt = a.attempt, "stopped");
        env.metrics.build_ended(None, seconds);
    } else {
        env.metrics.build_ended(Some(&outcome), seconds);
        finish(env, a, outcome, control);
    }
    if !env.config.keep_work
        && let Err(e) = remove_tree(&work)
    {
        tracing::warn!("cannot remove {}: {e}", work.display());
    }
}

/// Says `failure` for an assignment this builder will not run.
pub fn refuse(env: &AttemptEnv, a: &Assignment, failure: Failure) {
    finish(env, a, Outcome::Failed(failure), &Control::default());
}

fn attempt(
    env: &AttemptEnv,
    a: &Assignment,
    control: &Control,
    work: &Path,
) -> Result<Outcome, Failure> {
    let config = &env.config;
    let chroot = check_assignment(config, a)?;
    let infra = |what: &str, e: &dyn std::fmt::Display| {
        failure(FailureKind::Infrastructure, format!("{what}: {e}"))
    };
    remove_tree(work).map_err(|e| infra("clearing the work directory", &e))?;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(work)
        .map_err(|e| infra("making the work directory", &e))?;
    let need: u64 = a
        .source
        .blobs()
        .into_iter()
        .chain(&a.deps)
        .map(|b| b.size)
        .fold(MIN_FREE_BYTES, u64::saturating_add);
    let free = disk_free(work);
    if free < need {
        return Err(failure(
            FailureKind::Infrastructure,
            format!("{free} bytes free in the work directory, {need} needed"),
        ));
    }
    let (inputs, deps) = download(env, a, control, work)?;
    if control.stop.load(Ordering::SeqCst) {
        return Err(failure(FailureKind::Infrastructure, "stopped"));
    }
    let settings = BuildSettings {
        runner: &config.runner,
        chroot,
        farm: config.farm.as_ref(),
        limits: Limits { memory: config.memory_limit, cpus: config.cpus },
        timeout: Duration::from_secs(a.timeout_secs.clamp(1, MAX_TIMEOUT_SECS)),
        deps: &deps,
    };
    // Dropping `done` wakes the streamer at once for its last round.
    let (done, ended) = std::sync::mpsc::channel::<()>();
    let streamer = {
        let (client, log) = (env.client.clone(), work.join("build.log"));
        let (job, attempt) = (a.job, a.attempt);
        std::thread::spawn(move || stream_log(&client, job, attempt, &log, &ended))
    };
    let result = build(&settings, work, &format!("job-{}-{}", a.job, a.attempt), &inputs, control);
    drop(done);
    let _ = streamer.join();
    for why in &result.refused {
        tracing::warn!(job = a.job, "output not taken: {why}");
    }
    if result.stopped {
        return Ok(result.outcome);
    }
    // The log always goes up; the RPMs only from a successful build.
    let mut uploads = Vec::new();
    if matches!(result.outcome, Outcome::Succeeded) {
        uploads.extend(result.artifacts.iter().cloned());
    }
    uploads.push(LocalFile { name: "build.log".into(), path: result.log.clone() });
    for file in &uploads {
        let put = || env.client.put_artifact(a.job, a.attempt, &file.name, &file.path);
        if let Err(e) = deliver(env, control, &format!("uploading {}", file.name), put) {
            let kind =
                if e.is_refusal() { FailureKind::Refused } else { FailureKind::Infrastructure };
            return Err(failure(kind, format!("uploading {}: {e}", file.name)));
        }
    }
    Ok(result.outcome)
}

/// The chroot, after checking everything the assignment says.
fn check_assignment<'c>(
    config: &'c Config,
    a: &Assignment,
) -> Result<&'c super::config::ChrootConfig, Failure> {
    let refused = |why: String| failure(FailureKind::Refused, why);
    let chroot = config.chroot(&a.target.chroot).ok_or_else(|| {
        refused(format!("builder {} has no chroot {:?}", config.name, a.target.chroot))
    })?;
    if !config.arches.contains(&a.target.arch) {
        return Err(refused(format!(
            "builder {} does not build for {:?}",
            config.name, a.target.arch
        )));
    }
    let blobs = a.source.blobs();
    if blobs.len() + a.deps.len() > MAX_BLOBS {
        return Err(refused(format!("{} files, at most {MAX_BLOBS}", blobs.len() + a.deps.len())));
    }
    for d in &a.deps {
        let rpm = d.name.ends_with(".rpm") && !d.name.ends_with(".src.rpm");
        if !rpm
            || !is_plain_file_name(&d.name)
            || !is_blake3_hex(&d.blake3)
            || d.size > MAX_BLOB_BYTES
        {
            return Err(refused(format!(
                "bad dependency {:?} ({} bytes, blake3 {:?})",
                d.name, d.size, d.blake3
            )));
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for b in &blobs {
        if !is_plain_file_name(&b.name) || !is_blake3_hex(&b.blake3) || b.size > MAX_BLOB_BYTES {
            return Err(refused(format!(
                "bad file {:?} ({} bytes, blake3 {:?})",
                b.name, b.size, b.blake3
            )));
        }
        if b.name == "build.log" || !names.insert(b.name.as_str()) {
            return Err(refused(format!("file name {:?} used twice or reserved", b.name)));
        }
    }
    match &a.source {
        JobSource::Srpm { srpm } if !srpm.name.ends_with(".src.rpm") => {
            Err(refused(format!("{:?} is not a .src.rpm", srpm.name)))
        }
        JobSource::Spec { spec, .. } if !spec.name.ends_with(".spec") => {
            Err(refused(format!("{:?} is not a .spec", spec.name)))
        }
        _ => Ok(chroot),
    }
}

/// Downloads every blob to `WORK/in/N` and every dependency to `WORK/deps/N` (numbered: a peer's
/// name never becomes a host path).
fn download(
    env: &AttemptEnv,
    a: &Assignment,
    control: &Control,
    work: &Path,
) -> Result<(Inputs, Vec<LocalFile>), Failure> {
    let files = fetch_all(env, a, control, &work.join("in"), &a.source.blobs())?;
    let deps = fetch_all(env, a, control, &work.join("deps"), &a.deps.iter().collect::<Vec<_>>())?;
    if let JobSource::Check { check, warn_only, .. } = &a.source {
        // The batch's RPMs are what is checked, not installed.
        let inputs =
            Inputs::Check { check: *check, warn_only: *warn_only, new: deps, baseline: files };
        return Ok((inputs, Vec::new()));
    }
    let mut files = files.into_iter();
    let first =
        files.next().ok_or_else(|| failure(FailureKind::Refused, "the job names no file"))?;
    let inputs = match &a.source {
        JobSource::Srpm { .. } => Inputs::Srpm(first),
        _ => Inputs::Spec { spec: first, sources: files.collect() },
    };
    Ok((inputs, deps))
}

fn fetch_all(
    env: &AttemptEnv,
    a: &Assignment,
    control: &Control,
    dir: &Path,
    blobs: &[&BlobRef],
) -> Result<Vec<LocalFile>, Failure> {
    fs::create_dir(dir)
        .map_err(|e| failure(FailureKind::Infrastructure, format!("{}: {e}", dir.display())))?;
    let mut files = Vec::new();
    for (i, blob) in blobs.iter().enumerate() {
        let path = dir.join(i.to_string());
        let mut tries = 0;
        loop {
            tries += 1;
            match env.client.get_blob(blob, &path) {
                Ok(()) => break,
                Err(e) if e.is_not_found() => {
                    return Err(failure(
                        FailureKind::Refused,
                        format!("{} does not exist: {e}", blob.name),
                    ));
                }
                Err(e)
                    if tries >= DOWNLOAD_TRIES
                        || control.stop.load(Ordering::SeqCst)
                        || env.shutdown.is_cancelled() =>
                {
                    return Err(failure(
                        FailureKind::Infrastructure,
                        format!("downloading {}: {e}", blob.name),
                    ));
                }
                Err(e) => {
                    tracing::warn!(job = a.job, "downloading {} (try {tries}): {e}", blob.name);
                    std::thread::sleep(Duration::from_secs(u64::from(tries)));
                }
            }
        }
        files.push(LocalFile { name: blob.name.clone(), path });
    }
    Ok(files)
}

/// Sends the log's new bytes every [`LOG_EVERY`] until the build ends (`ended` disconnects),
/// then what is left, at once. A refusal (the attempt is no longer current) ends it; an
/// unreachable coordinator is tried again later (the server ignores bytes it already has).
fn stream_log(
    client: &ApiClient,
    job: u64,
    attempt: u32,
    log: &Path,
    ended: &std::sync::mpsc::Receiver<()>,
) {
    let mut sent = 0u64;
    let mut last_round = false;
    loop {
        loop {
            let chunk = read_at(log, sent, LOG_CHUNK);
            if chunk.is_empty() {
                break;
            }
            match client.append_log(job, attempt, sent, &chunk) {
                Ok(()) => sent += chunk.len() as u64,
                Err(e) if e.is_refusal() => {
                    tracing::info!(job, attempt, "log refused: {e}");
                    return;
                }
                Err(e) => {
                    tracing::debug!(job, attempt, "log not sent: {e}");
                    break;
                }
            }
        }
        if last_round {
            return;
        }
        match ended.recv_timeout(LOG_EVERY) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => last_round = true,
        }
    }
}

/// Up to `max` bytes of `path` from `offset` (empty on any error).
fn read_at(path: &Path, offset: u64, max: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = Vec::new();
    if let Ok(mut f) = fs::File::open(path)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = f.take(max).read_to_end(&mut out);
    }
    out
}

/// Says how the attempt ended, until the coordinator takes or refuses it.
fn finish(env: &AttemptEnv, a: &Assignment, outcome: Outcome, control: &Control) {
    let req = FinishRequest { builder: env.config.name.clone(), attempt: a.attempt, outcome };
    match deliver(env, control, "finish", || env.client.finish(a.job, &req)) {
        Ok(view) => tracing::info!(
            job = a.job,
            attempt = a.attempt,
            state = view.state.as_str(),
            "finished"
        ),
        Err(e) => tracing::warn!(job = a.job, attempt = a.attempt, "finish not delivered: {e}"),
    }
}

/// Calls `f` until it succeeds or is refused with a 4xx, with a backoff from 0.5 s to 10 s; gives
/// up when the attempt is stopped or the builder shuts down.
fn deliver<T>(
    env: &AttemptEnv,
    control: &Control,
    what: &str,
    mut f: impl FnMut() -> Result<T, ApiClientError>,
) -> Result<T, ApiClientError> {
    let mut wait = Duration::from_millis(500);
    let mut failures = 0u32;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e)
                if e.is_refusal()
                    || control.stop.load(Ordering::SeqCst)
                    || env.shutdown.is_cancelled() =>
            {
                return Err(e);
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures % 20 == 0 {
                    tracing::warn!("{what}: {e} (retrying)");
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Free bytes for unprivileged use in the file system holding `path` (0 when unknown).
#[allow(clippy::useless_conversion)] // u64 on 64-bit targets only
pub fn disk_free(path: &Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size())))
        .unwrap_or(0)
}

/// Removes `path` and everything under it (nothing when it does not exist).
fn remove_tree(path: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `WORK_DIR/job-ID-ATTEMPT`.
pub fn work_path(config: &Config, job: u64, attempt: u32) -> PathBuf {
    config.work_dir.join(format!("job-{job}-{attempt}"))
}
