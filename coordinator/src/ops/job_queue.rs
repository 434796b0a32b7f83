//! job_queue: the persistent queue of package builds. Submission, the claim a builder's report
//! makes (priority first, then fair share between submitters, then age), leases kept alive by
//! reports, finishing an attempt exactly once, retries with backoff after infrastructure
//! failures, timeouts, cancel and retry. Every state change goes through
//! [`super::queue_executor::transition`] inside one SQLite transaction with the rest of the
//! change, so a `kill -9` at any moment leaves the queue as it was before or after the change.
//!
//! Time is a parameter (`now`, Unix seconds): tests drive the clock.

use discomy_protocol::ops::{
    Assignment, BatchRequest, BlobRef, BuilderAnswer, BuilderReport, Failure, FailureKind,
    FinishRequest, JobEvent, JobState, JobView, Outcome, SubmitRequest,
};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Deserialize;

use super::OpsError;
use super::db::{Db, JOB_COLUMNS, job_from_row};
use super::queue_executor::{Change, transition};
use super::queue_rules::{
    batch_member, check_batch, check_report, check_submission, failed_detail, infra_verdict,
    job_name, retried_detail, stale_attempt, stale_finish, to_json,
};
use super::{batch, host_scheduler};

/// The queue's limits and timings (`[queue]` in the coordinator's configuration file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Timeout of one attempt when the submission names none.
    pub default_timeout_secs: u64,
    /// The longest timeout a submission may ask for.
    pub max_timeout_secs: u64,
    /// Infrastructure failures after which a job fails for good.
    pub max_infra_failures: u32,
    /// Backoff before the first retry; doubles with each further failure.
    pub backoff_secs: f64,
    /// The longest backoff.
    pub backoff_max_secs: f64,
    /// A builder that has not reported for this long loses its jobs (they are retried).
    pub lease_secs: f64,
    /// How often builders report.
    pub report_every_secs: f64,
    /// No new job for a builder with less free disk than this.
    pub min_free_disk_bytes: u64,
    /// Memory a build needs: no new job for a builder that cannot give each build this much.
    pub min_job_memory_bytes: u64,
}

impl Default for QueueConfig {
    fn default() -> QueueConfig {
        QueueConfig {
            default_timeout_secs: 4 * 3600,
            max_timeout_secs: 7 * 24 * 3600,
            max_infra_failures: 3,
            backoff_secs: 10.0,
            backoff_max_secs: 600.0,
            lease_secs: 30.0,
            report_every_secs: 2.0,
            min_free_disk_bytes: 1 << 30,
            min_job_memory_bytes: 1 << 30,
        }
    }
}

impl QueueConfig {
    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.report_every_secs <= 0.0 || self.lease_secs < 2.0 * self.report_every_secs {
            return Err(format!(
                "lease_secs ({}) must be at least twice report_every_secs ({}), which must be > 0",
                self.lease_secs, self.report_every_secs
            ));
        }
        if self.default_timeout_secs == 0 || self.default_timeout_secs > self.max_timeout_secs {
            return Err("default_timeout_secs must be between 1 and max_timeout_secs".into());
        }
        if !(self.backoff_secs >= 0.0 && self.backoff_max_secs >= self.backoff_secs) {
            return Err("backoff_secs must be >= 0 and <= backoff_max_secs".into());
        }
        Ok(())
    }

    /// The wait before the retry that follows the `failures`-th infrastructure failure.
    pub(super) fn backoff(&self, failures: u32) -> f64 {
        let doubled = self.backoff_secs * 2f64.powi(failures.saturating_sub(1).min(30) as i32);
        doubled.min(self.backoff_max_secs)
    }
}

/// What a change produced: the job's events, to publish.
pub type Events = Vec<JobEvent>;

impl Db {
    /// Accepts a job; `blob_present` says whether the coordinator holds a blob of that size.
    /// The job is on disk when this returns.
    pub fn submit(
        &mut self,
        req: &SubmitRequest,
        config: &QueueConfig,
        blob_present: &dyn Fn(&BlobRef) -> bool,
        now: f64,
    ) -> Result<(u64, Events), OpsError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (id, event) = insert_job(&tx, req, config, blob_present, now)?;
        if let Some(batch) = &req.batch {
            batch::refuse_cycles(&tx, batch)?;
        }
        tx.commit()?;
        Ok((id, vec![event]))
    }

    /// Accepts a batch of jobs in one transaction (all or none).
    pub fn submit_batch(
        &mut self,
        req: &BatchRequest,
        config: &QueueConfig,
        blob_present: &dyn Fn(&BlobRef) -> bool,
        now: f64,
    ) -> Result<(Vec<u64>, Events), OpsError> {
        check_batch(req)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut ids = Vec::new();
        let mut events = Vec::new();
        for job in &req.jobs {
            let job = batch_member(req, job)?;
            let (id, event) = insert_job(&tx, &job, config, blob_present, now)?;
            ids.push(id);
            events.push(event);
        }
        batch::refuse_cycles(&tx, &req.batch)?;
        tx.commit()?;
        Ok((ids, events))
    }

    /// A builder's report: renews the leases of what it holds, tells it what to stop, and gives
    /// it at most one new job when [`host_scheduler::green_light`] allows.
    pub fn report(
        &mut self,
        report: &BuilderReport,
        config: &QueueConfig,
        now: f64,
    ) -> Result<(BuilderAnswer, Events), OpsError> {
        check_report(report)?;
        let mut events = Vec::new();
        let mut stop = Vec::new();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Every attempt the builder holds takes a slot, current or not: one that just finished
        // (its finish is in, its thread not yet gone) or one it must stop still runs there.
        let holding = u32::try_from(report.held.len()).unwrap_or(u32::MAX);
        for held in &report.held {
            let row: Option<(String, u32, Option<String>)> = tx
                .query_row(
                    "SELECT state, attempt, builder FROM jobs WHERE id = ?1",
                    [held.job as i64],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let current = row.and_then(|(state, attempt, builder)| {
                let state = JobState::parse(&state)?;
                let live = matches!(state, JobState::Scheduled | JobState::Running);
                (live && attempt == held.attempt && builder.as_deref() == Some(&report.builder))
                    .then_some(state)
            });
            let Some(state) = current else {
                stop.push(*held);
                continue;
            };
            tx.execute(
                "UPDATE jobs SET lease_until = ?1 WHERE id = ?2",
                params![now + config.lease_secs, held.job as i64],
            )?;
            if held.started && state == JobState::Scheduled {
                events.push(transition(
                    &tx,
                    Change {
                        job: held.job,
                        from: Some(state),
                        to: JobState::Running,
                        attempt: held.attempt,
                        builder: Some(&report.builder),
                        detail: "the build started".into(),
                    },
                    now,
                )?);
            }
        }
        // Jobs this builder was given that it no longer holds (it restarted, or never received
        // the answer): an infrastructure failure, once the answer has had time to arrive.
        let lost: Vec<(u64, u32, String)> = {
            let mut stmt = tx.prepare(
                "SELECT id, attempt, state FROM jobs WHERE builder = ?1 \
                 AND state IN ('scheduled', 'running') AND updated_at < ?2",
            )?;
            let rows = stmt
                .query_map(params![report.builder, now - config.report_every_secs], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
                })?;
            rows.collect::<Result<_, _>>()?
        };
        for (job, attempt, state) in lost {
            if report.held.iter().any(|h| h.job == job && h.attempt == attempt) {
                continue;
            }
            let state = JobState::parse(&state).unwrap_or(JobState::Running);
            let why = format!("builder {} no longer holds attempt {attempt}", report.builder);
            events.extend(infra_failure(
                &tx,
                config,
                job,
                state,
                attempt,
                &report.builder,
                why,
                now,
            )?);
        }
        let mut assignment = None;
        if host_scheduler::green_light(report, holding, config) {
            assignment = claim(&tx, report, config, now, &mut events)?;
        }
        tx.commit()?;
        let answer =
            BuilderAnswer { assignment, stop, report_every_secs: config.report_every_secs };
        Ok((answer, events))
    }

    /// Whether `attempt` of `job` is the current, live one (uploads check this).
    pub fn check_attempt(&self, job: u64, attempt: u32) -> Result<(), OpsError> {
        check_current(&self.conn, job, attempt)
    }

    /// Records an artefact the current attempt uploaded (its blob is stored and verified).
    pub fn add_artifact(&mut self, job: u64, attempt: u32, blob: &BlobRef) -> Result<(), OpsError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let count: i64 = tx.query_row(
            "SELECT COUNT(*) FROM artifacts WHERE job = ?1 AND attempt = ?2",
            params![job as i64, attempt],
            |r| r.get(0),
        )?;
        if count >= 10_000 {
            return Err(OpsError::TooLarge("more than 10000 artefacts".into()));
        }
        check_current(&tx, job, attempt)?;
        tx.execute(
            "INSERT OR REPLACE INTO artifacts (job, attempt, name, blake3, size) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![job as i64, attempt, blob.name, blob.blake3, blob.size as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The end of an attempt, as its builder says. Repeating the same finish (the answer was
    /// lost) returns the job unchanged; a finish for any other attempt is refused.
    pub fn finish(
        &mut self,
        job: u64,
        req: &FinishRequest,
        config: &QueueConfig,
        now: f64,
    ) -> Result<(JobView, Events), OpsError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (state, attempt, builder): (String, u32, Option<String>) = tx
            .query_row(
                "SELECT state, attempt, builder FROM jobs WHERE id = ?1",
                [job as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
            .ok_or(OpsError::NotFound(job))?;
        let state = JobState::parse(&state).unwrap_or(JobState::Failed);
        let ours = attempt == req.attempt && builder.as_deref() == Some(&req.builder);
        let mut events = Vec::new();
        if ours && matches!(state, JobState::Scheduled | JobState::Running) {
            match &req.outcome {
                Outcome::Succeeded => {
                    events.push(transition(
                        &tx,
                        Change {
                            job,
                            from: Some(state),
                            to: JobState::Succeeded,
                            attempt,
                            builder: Some(&req.builder),
                            detail: "built".into(),
                        },
                        now,
                    )?);
                    tx.execute(
                        "UPDATE jobs SET lease_until = NULL, failure_kind = NULL, \
                         failure_message = NULL WHERE id = ?1",
                        [job as i64],
                    )?;
                }
                Outcome::Failed(f) if f.kind == FailureKind::Infrastructure => {
                    let why = format!("{}: {}", req.builder, f.message);
                    events.extend(infra_failure(
                        &tx,
                        config,
                        job,
                        state,
                        attempt,
                        &req.builder,
                        why,
                        now,
                    )?);
                }
                Outcome::Failed(f) => {
                    events.push(fail(&tx, job, state, attempt, Some(&req.builder), f, now)?);
                }
            }
        } else if !(ours && state.is_final()) {
            return Err(stale_finish(job, req, state, attempt));
        }
        tx.commit()?;
        Ok((self.job(job)?, events))
    }

    /// Cancels a job that has not ended.
    pub fn cancel(&mut self, job: u64, who: &str, now: f64) -> Result<(JobView, Events), OpsError> {
        let detail = format!("cancelled by {who}");
        self.user_move(job, JobState::Cancelled, detail, "lease_until = NULL", now)
    }

    /// Queues a failed or cancelled job again, at once, with a fresh infrastructure count.
    pub fn retry(&mut self, job: u64, who: &str, now: f64) -> Result<(JobView, Events), OpsError> {
        let reset =
            "not_before = 0, infra_failures = 0, failure_kind = NULL, failure_message = NULL";
        self.user_move(job, JobState::Waiting, format!("retried by {who}"), reset, now)
    }

    /// A user's move of `job` to `to` (cancel, retry), with the columns `set` resets.
    fn user_move(
        &mut self,
        job: u64,
        to: JobState,
        detail: String,
        set: &'static str,
        now: f64,
    ) -> Result<(JobView, Events), OpsError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (state, attempt) = state_of(&tx, job)?;
        let change = Change { job, from: Some(state), to, attempt, builder: None, detail };
        let event = transition(&tx, change, now)?;
        tx.execute(&format!("UPDATE jobs SET {set} WHERE id = ?1"), [job as i64])?;
        tx.commit()?;
        Ok((self.job(job)?, vec![event]))
    }

    /// After a restart: every lease runs from now, so builders have time to report again.
    pub fn resume(&mut self, config: &QueueConfig, now: f64) -> Result<usize, OpsError> {
        Ok(self.conn.execute(
            "UPDATE jobs SET lease_until = ?1 WHERE state IN ('scheduled', 'running')",
            [now + config.lease_secs],
        )?)
    }

    /// Expired leases (an infrastructure failure) and timed-out attempts.
    pub fn tick(&mut self, config: &QueueConfig, now: f64) -> Result<Events, OpsError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let due: Vec<(u64, String, u32, Option<String>, bool)> = {
            let mut stmt = tx.prepare(
                "SELECT id, state, attempt, builder, started_at + timeout_secs < ?1 FROM jobs \
                 WHERE state IN ('scheduled', 'running') \
                 AND (lease_until < ?1 OR started_at + timeout_secs < ?1)",
            )?;
            let rows = stmt.query_map([now], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut events = batch::fail_orphans(&tx, now)?;
        for (job, state, attempt, builder, timed_out) in due {
            let state = JobState::parse(&state).unwrap_or(JobState::Running);
            let builder = builder.unwrap_or_default();
            if timed_out {
                let f = Failure {
                    kind: FailureKind::Timeout,
                    message: format!("attempt {attempt} on {builder} ran past its timeout"),
                };
                events.push(fail(&tx, job, state, attempt, Some(&builder), &f, now)?);
            } else {
                let why = format!("builder {builder} stopped reporting");
                events.extend(infra_failure(&tx, config, job, state, attempt, &builder, why, now)?);
            }
        }
        tx.commit()?;
        Ok(events)
    }
}

/// Checks one submission and inserts it as a waiting job.
fn insert_job(
    tx: &rusqlite::Transaction<'_>,
    req: &SubmitRequest,
    config: &QueueConfig,
    blob_present: &dyn Fn(&BlobRef) -> bool,
    now: f64,
) -> Result<(u64, JobEvent), OpsError> {
    let timeout = check_submission(req, config, blob_present)?;
    tx.execute(
        "INSERT INTO jobs (name, state, priority, submitter, batch, chroot, arch, source, \
         timeout_secs, created_at, updated_at, requires, provides) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11, ?12)",
        params![
            job_name(&req.source),
            JobState::Waiting.as_str(),
            req.priority,
            req.submitter,
            req.batch,
            req.target.chroot,
            req.target.arch,
            to_json(&req.source),
            timeout as i64,
            now,
            to_json(&req.requires),
            to_json(&req.provides)
        ],
    )?;
    let id = tx.last_insert_rowid() as u64;
    let event = transition(
        tx,
        Change {
            job: id,
            from: None,
            to: JobState::Waiting,
            attempt: 0,
            builder: None,
            detail: format!("submitted by {}", req.submitter),
        },
        now,
    )?;
    Ok((id, event))
}

fn state_of(tx: &rusqlite::Transaction<'_>, job: u64) -> Result<(JobState, u32), OpsError> {
    let (state, attempt): (String, u32) = tx
        .query_row("SELECT state, attempt FROM jobs WHERE id = ?1", [job as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?
        .ok_or(OpsError::NotFound(job))?;
    let state = JobState::parse(&state)
        .ok_or_else(|| OpsError::Corrupt(format!("job {job}: state {state:?}")))?;
    Ok((state, attempt))
}

/// Refuses anything for an attempt that is not the job's current, live one.
fn check_current(conn: &rusqlite::Connection, job: u64, attempt: u32) -> Result<(), OpsError> {
    let row: Option<(String, u32, Option<String>)> = conn
        .query_row("SELECT state, attempt, builder FROM jobs WHERE id = ?1", [job as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let (state, current, owner) = row.ok_or(OpsError::NotFound(job))?;
    let live = matches!(state.as_str(), "scheduled" | "running");
    if !live || current != attempt {
        return Err(stale_attempt(job, attempt, &state, current, owner));
    }
    Ok(())
}

/// The next job for `report`'s builder, moved to `scheduled` with a new attempt.
fn claim(
    tx: &rusqlite::Transaction<'_>,
    report: &BuilderReport,
    config: &QueueConfig,
    now: f64,
    events: &mut Events,
) -> Result<Option<Assignment>, OpsError> {
    let chroots = serde_json::to_string(&report.chroots).unwrap_or_else(|_| "[]".into());
    let arches = serde_json::to_string(&report.arches).unwrap_or_else(|_| "[]".into());
    // Priority first; among equal priorities the submitter with the fewest live jobs (fair
    // share: a big batch does not starve a small one); then the oldest.
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs j LEFT JOIN (SELECT submitter AS s, COUNT(*) AS live \
         FROM jobs WHERE state IN ('scheduled', 'running') GROUP BY submitter) l \
         ON l.s = j.submitter \
         WHERE j.state = 'waiting' AND j.not_before <= ?1 \
         AND j.chroot IN (SELECT value FROM json_each(?2)) \
         AND j.arch IN (SELECT value FROM json_each(?3)) \
         AND NOT EXISTS ({}) \
         ORDER BY j.priority DESC, COALESCE(l.live, 0) ASC, j.id ASC LIMIT 1",
        batch::UNBUILT_DEPENDENCY
    );
    let Some(job) = tx.query_row(&sql, params![now, chroots, arches], job_from_row).optional()?
    else {
        return Ok(None);
    };
    let job = job?;
    let attempt = job.attempt + 1;
    tx.execute(
        "UPDATE jobs SET attempt = ?1, builder = ?2, lease_until = ?3, started_at = ?4 \
         WHERE id = ?5",
        params![attempt, report.builder, now + config.lease_secs, now, job.id as i64],
    )?;
    events.push(transition(
        tx,
        Change {
            job: job.id,
            from: Some(JobState::Waiting),
            to: JobState::Scheduled,
            attempt,
            builder: Some(&report.builder),
            detail: format!("attempt {attempt} given to {}", report.builder),
        },
        now,
    )?);
    Ok(Some(Assignment {
        job: job.id,
        attempt,
        name: job.name,
        source: job.source,
        target: job.target,
        timeout_secs: job.timeout_secs,
        deps: batch::dependency_rpms(tx, job.id)?,
    }))
}

pub(super) fn fail(
    tx: &rusqlite::Connection,
    job: u64,
    from: JobState,
    attempt: u32,
    builder: Option<&str>,
    failure: &Failure,
    now: f64,
) -> Result<JobEvent, OpsError> {
    tx.execute(
        "UPDATE jobs SET lease_until = NULL, failure_kind = ?1, failure_message = ?2 WHERE id = ?3",
        params![failure.kind.as_str(), failure.message, job as i64],
    )?;
    transition(
        tx,
        Change {
            job,
            from: Some(from),
            to: JobState::Failed,
            attempt,
            builder,
            detail: failed_detail(failure),
        },
        now,
    )
}

/// An infrastructure failure: back to `waiting` after a backoff, or failed for good after
/// [`QueueConfig::max_infra_failures`].
#[allow(clippy::too_many_arguments)]
fn infra_failure(
    tx: &rusqlite::Transaction<'_>,
    config: &QueueConfig,
    job: u64,
    from: JobState,
    attempt: u32,
    builder: &str,
    why: String,
    now: f64,
) -> Result<Events, OpsError> {
    let failures: u32 =
        tx.query_row("SELECT infra_failures FROM jobs WHERE id = ?1", [job as i64], |r| r.get(0))?;
    let failures = failures + 1;
    tx.execute("UPDATE jobs SET infra_failures = ?1 WHERE id = ?2", params![failures, job as i64])?;
    let delay = match infra_verdict(config, failures, &why) {
        Err(f) => return Ok(vec![fail(tx, job, from, attempt, Some(builder), &f, now)?]),
        Ok(delay) => delay,
    };
    tx.execute(
        "UPDATE jobs SET lease_until = NULL, not_before = ?1, failure_kind = ?2, \
         failure_message = ?3 WHERE id = ?4",
        params![now + delay, FailureKind::Infrastructure.as_str(), why, job as i64],
    )?;
    let event = transition(
        tx,
        Change {
            job,
            from: Some(from),
            to: JobState::Waiting,
            attempt,
            builder: Some(builder),
            detail: retried_detail(&why, delay),
        },
        now,
    )?;
    Ok(vec![event])
}
