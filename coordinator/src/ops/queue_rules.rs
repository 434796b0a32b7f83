//! The queue's rules that need no database, shared by the SQLite queue
//! ([`super::job_queue`]) and the PostgreSQL one ([`super::pg`]): what a submission, a batch and
//! a report must look like, job names, what an infrastructure failure leads to, and the messages
//! and event details both stores give, word for word.

use discomy_protocol::ops::{
    BatchRequest, BlobRef, BuilderReport, Failure, FailureKind, FinishRequest, JobSource, JobState,
    SubmitRequest, is_plain_file_name,
};

use super::OpsError;
use super::job_queue::QueueConfig;

/// The name a job shows: the source file's name without `.src.rpm` or `.spec`.
pub(super) fn job_name(source: &JobSource) -> String {
    match source {
        JobSource::Srpm { srpm } => srpm.name.trim_end_matches(".rpm").trim_end_matches(".src"),
        JobSource::Spec { spec, .. } => spec.name.trim_end_matches(".spec"),
        JobSource::Check { check, .. } => return format!("check-{}", check.as_str()),
    }
    .to_owned()
}

pub(super) fn check_label(what: &str, value: &str, max: usize) -> Result<(), OpsError> {
    if value.is_empty() || value.len() > max || !is_plain_file_name(value) {
        return Err(OpsError::BadRequest(format!(
            "{what} {value:?}: expected 1 to {max} printable characters, no '/' or spaces"
        )));
    }
    Ok(())
}

/// JSON of what this crate's own types hold (cannot fail for them).
pub(super) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// Checks a builder's report before anything is read or changed.
pub(super) fn check_report(report: &BuilderReport) -> Result<(), OpsError> {
    check_label("builder", &report.builder, 64)?;
    if report.held.len() > 4096 || report.chroots.len() > 256 || report.arches.len() > 64 {
        return Err(OpsError::BadRequest("report too long".into()));
    }
    Ok(())
}

/// Checks a batch's name and size.
pub(super) fn check_batch(req: &BatchRequest) -> Result<(), OpsError> {
    check_label("batch", &req.batch, 128)?;
    if req.jobs.is_empty() || req.jobs.len() > 10_000 {
        return Err(OpsError::BadRequest("a batch holds 1 to 10000 jobs".into()));
    }
    Ok(())
}

/// One job of a batch, with the batch's name (a job naming another batch is refused).
pub(super) fn batch_member(
    req: &BatchRequest,
    job: &SubmitRequest,
) -> Result<SubmitRequest, OpsError> {
    if job.batch.as_deref().is_some_and(|b| b != req.batch) {
        return Err(OpsError::BadRequest(format!(
            "a job of batch {:?} names batch {:?}",
            req.batch,
            job.batch.as_deref().unwrap_or_default()
        )));
    }
    Ok(SubmitRequest { batch: Some(req.batch.clone()), ..job.clone() })
}

/// Checks one submission (names, sources uploaded, timeout); returns its timeout in seconds.
pub(super) fn check_submission(
    req: &SubmitRequest,
    config: &QueueConfig,
    blob_present: &dyn Fn(&BlobRef) -> bool,
) -> Result<u64, OpsError> {
    check_label("chroot", &req.target.chroot, 64)?;
    check_label("arch", &req.target.arch, 32)?;
    check_label("submitter", &req.submitter, 64)?;
    if let Some(batch) = &req.batch {
        check_label("batch", batch, 128)?;
    }
    for (what, names) in [("requires", &req.requires), ("provides", &req.provides)] {
        if names.len() > 1024 {
            return Err(OpsError::BadRequest(format!("more than 1024 {what}")));
        }
        for name in names {
            check_label(what, name, 255)?;
        }
    }
    match &req.source {
        JobSource::Srpm { srpm } if !srpm.name.ends_with(".src.rpm") => {
            return Err(OpsError::BadRequest(format!("{:?} is not a .src.rpm", srpm.name)));
        }
        JobSource::Spec { spec, .. } if !spec.name.ends_with(".spec") => {
            return Err(OpsError::BadRequest(format!("{:?} is not a .spec", spec.name)));
        }
        JobSource::Spec { sources, .. } if sources.len() > 1024 => {
            return Err(OpsError::BadRequest("more than 1024 sources".into()));
        }
        JobSource::Check { baseline, .. }
            if baseline.len() > 1024 || baseline.iter().any(|b| !b.name.ends_with(".rpm")) =>
        {
            return Err(OpsError::BadRequest("a check's baseline is at most 1024 RPMs".into()));
        }
        JobSource::Check { .. } if req.batch.is_none() || req.requires.is_empty() => {
            return Err(OpsError::BadRequest(
                "a check belongs to a batch and requires what the batch builds".into(),
            ));
        }
        _ => {}
    }
    let blobs = req.source.blobs();
    for (i, blob) in blobs.iter().enumerate() {
        check_label("file name", &blob.name, 255)?;
        if blobs[..i].iter().any(|b| b.name == blob.name) {
            return Err(OpsError::BadRequest(format!("{:?} named twice", blob.name)));
        }
        if !blob_present(blob) {
            return Err(OpsError::BadRequest(format!(
                "{} ({}, {} bytes) has not been uploaded",
                blob.name, blob.blake3, blob.size
            )));
        }
    }
    let timeout = req.timeout_secs.unwrap_or(config.default_timeout_secs);
    if timeout == 0 || timeout > config.max_timeout_secs {
        return Err(OpsError::BadRequest(format!(
            "timeout {timeout} s: expected 1 to {} s",
            config.max_timeout_secs
        )));
    }
    Ok(timeout)
}

/// After the `failures`-th infrastructure failure: the backoff before the next attempt, or the
/// failure for good past [`QueueConfig::max_infra_failures`].
pub(super) fn infra_verdict(
    config: &QueueConfig,
    failures: u32,
    why: &str,
) -> Result<f64, Failure> {
    if failures >= config.max_infra_failures {
        return Err(Failure {
            kind: FailureKind::Infrastructure,
            message: format!("{why} ({failures} infrastructure failures)"),
        });
    }
    Ok(config.backoff(failures))
}

/// The event's detail of a job sent back to `waiting` after an infrastructure failure.
pub(super) fn retried_detail(why: &str, delay: f64) -> String {
    format!("{why}; retried in {delay:.0} s")
}

/// The conflict of a finish for an attempt that is not current.
pub(super) fn stale_finish(
    job: u64,
    req: &FinishRequest,
    state: JobState,
    attempt: u32,
) -> OpsError {
    OpsError::Conflict(format!(
        "attempt {} of job {job} by {} is not current (the job is {}, attempt {attempt})",
        req.attempt,
        req.builder,
        state.as_str()
    ))
}

/// The conflict of an upload or log for an attempt that is not current.
pub(super) fn stale_attempt(
    job: u64,
    attempt: u32,
    state: &str,
    current: u32,
    owner: Option<String>,
) -> OpsError {
    OpsError::Conflict(format!(
        "attempt {attempt} of job {job} is not current (the job is {state}, attempt \
         {current} on {})",
        owner.unwrap_or_default()
    ))
}

/// The event's detail of a job that failed for good.
pub(super) fn failed_detail(failure: &Failure) -> String {
    format!("{} failure: {}", failure.kind.as_str(), failure.message)
}

/// One row of a `SELECT state, COUNT(*) … GROUP BY state` (either store).
pub(super) fn state_count(state: &str, n: i64) -> Result<(JobState, u64), OpsError> {
    let parsed =
        JobState::parse(state).ok_or_else(|| OpsError::Corrupt(format!("job state {state:?}")))?;
    Ok((parsed, u64::try_from(n).unwrap_or(0)))
}
