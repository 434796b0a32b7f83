//! The queue's operations on PostgreSQL: the same rules, checks, messages and events as the
//! SQLite queue ([`super::super::job_queue`], [`super::super::batch`]), whose pure helpers they
//! share, in transactions safe to run from several coordinators at once (see [`super`]).

use std::collections::BTreeMap;

use discomy_protocol::ops::{
    Assignment, BatchRequest, BlobRef, BuilderAnswer, BuilderReport, Failure, FailureKind,
    FinishRequest, JobEvent, JobState, JobView, Outcome, SubmitRequest,
};
use postgres::GenericClient;

use super::batch::{dependency_rpms, fail_orphans, refuse_cycles};
use super::{PgStore, Tx, job_from_row, small};
use crate::ops::OpsError;
use crate::ops::db::JOB_COLUMNS;
use crate::ops::host_scheduler::green_light;
use crate::ops::job_queue::{Events, QueueConfig};
use crate::ops::outbox::OutboxItem;
use crate::ops::queue_executor::Change;
use crate::ops::queue_rules::{
    batch_member, check_batch, check_report, check_submission, failed_detail, infra_verdict,
    job_name, retried_detail, stale_attempt, stale_finish, to_json,
};
use crate::ops::store::{BlobPresent, QueueStore};

const LIVE: &str = "('scheduled', 'running')";

impl QueueStore for PgStore {
    fn tokens(&mut self) -> &mut dyn crate::ops::tokens::TokenStore {
        self
    }

    fn job(&mut self, id: u64) -> Result<JobView, OpsError> {
        PgStore::job(self, id)
    }

    fn list(
        &mut self,
        state: Option<JobState>,
        batch: Option<&str>,
    ) -> Result<Vec<JobView>, OpsError> {
        PgStore::list(self, state, batch)
    }

    fn state_counts(&mut self) -> Result<Vec<(JobState, u64)>, OpsError> {
        PgStore::state_counts(self)
    }

    fn events(
        &mut self,
        job: Option<u64>,
        after: u64,
        limit: u32,
    ) -> Result<Vec<JobEvent>, OpsError> {
        PgStore::events(self, job, after, limit)
    }

    fn submit(
        &mut self,
        req: &SubmitRequest,
        config: &QueueConfig,
        blob_present: BlobPresent<'_>,
        now: f64,
    ) -> Result<(u64, Events), OpsError> {
        let timeout = check_submission(req, config, blob_present)?;
        self.write(|tx| {
            if let Some(batch) = &req.batch {
                tx.lock_batch(batch)?;
            }
            let id = insert_job(tx, req, timeout, now)?;
            if let Some(batch) = &req.batch {
                refuse_cycles(tx, batch)?;
            }
            Ok(id)
        })
    }

    fn submit_batch(
        &mut self,
        req: &BatchRequest,
        config: &QueueConfig,
        blob_present: BlobPresent<'_>,
        now: f64,
    ) -> Result<(Vec<u64>, Events), OpsError> {
        check_batch(req)?;
        let mut jobs = Vec::with_capacity(req.jobs.len());
        for job in &req.jobs {
            let job = batch_member(req, job)?;
            let timeout = check_submission(&job, config, blob_present)?;
            jobs.push((job, timeout));
        }
        self.write(|tx| {
            tx.lock_batch(&req.batch)?;
            let mut ids = Vec::with_capacity(jobs.len());
            for (job, timeout) in &jobs {
                ids.push(insert_job(tx, job, *timeout, now)?);
            }
            refuse_cycles(tx, &req.batch)?;
            Ok(ids)
        })
    }

    fn report(
        &mut self,
        report: &BuilderReport,
        config: &QueueConfig,
        now: f64,
    ) -> Result<(BuilderAnswer, Events), OpsError> {
        check_report(report)?;
        let (answer, events) = self.write(|tx| report_in(tx, report, config, now))?;
        Ok((answer, events))
    }

    fn check_attempt(&mut self, job: u64, attempt: u32) -> Result<(), OpsError> {
        PgStore::check_attempt(self, job, attempt)
    }

    fn add_artifact(&mut self, job: u64, attempt: u32, blob: &BlobRef) -> Result<(), OpsError> {
        self.write(|tx| {
            let count: i64 = tx
                .tx
                .query_one(
                    "SELECT COUNT(*) FROM artifacts WHERE job = $1 AND attempt = $2",
                    &[&(job as i64), &i64::from(attempt)],
                )?
                .try_get(0)?;
            if count >= 10_000 {
                return Err(OpsError::TooLarge("more than 10000 artefacts".into()));
            }
            check_current(&mut tx.tx, job, attempt, true)?;
            tx.tx.execute(
                "INSERT INTO artifacts (job, attempt, name, blake3, size) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (job, attempt, name) \
                 DO UPDATE SET blake3 = EXCLUDED.blake3, size = EXCLUDED.size",
                &[
                    &(job as i64),
                    &i64::from(attempt),
                    &blob.name,
                    &blob.blake3,
                    &(blob.size as i64),
                ],
            )?;
            Ok(())
        })?;
        Ok(())
    }

    fn finish(
        &mut self,
        job: u64,
        req: &FinishRequest,
        config: &QueueConfig,
        now: f64,
    ) -> Result<(JobView, Events), OpsError> {
        let ((), events) = self.write(|tx| {
            let (state, attempt, builder) = lock_job(tx, job)?;
            let state = JobState::parse(&state).unwrap_or(JobState::Failed);
            let ours = attempt == req.attempt && builder.as_deref() == Some(&req.builder);
            if ours && matches!(state, JobState::Scheduled | JobState::Running) {
                let builder = Some(req.builder.as_str());
                match &req.outcome {
                    Outcome::Succeeded => {
                        let to = JobState::Succeeded;
                        let detail = "built".into();
                        let change =
                            Change { job, from: Some(state), to, attempt, builder, detail };
                        tx.transition(change, now)?;
                        tx.tx.execute(
                            "UPDATE jobs SET lease_until = NULL, failure_kind = NULL, \
                             failure_message = NULL WHERE id = $1",
                            &[&(job as i64)],
                        )?;
                    }
                    Outcome::Failed(f) if f.kind == FailureKind::Infrastructure => {
                        let why = format!("{}: {}", req.builder, f.message);
                        infra_failure(tx, config, job, state, attempt, &req.builder, why, now)?;
                    }
                    Outcome::Failed(f) => fail(tx, job, state, attempt, builder, f, now)?,
                }
            } else if !(ours && state.is_final()) {
                return Err(stale_finish(job, req, state, attempt));
            }
            Ok(())
        })?;
        Ok((self.job(job)?, events))
    }

    fn cancel(&mut self, job: u64, who: &str, now: f64) -> Result<(JobView, Events), OpsError> {
        let ((), events) = self.write(|tx| {
            let (state, attempt) = state_of(tx, job)?;
            let (to, detail) = (JobState::Cancelled, format!("cancelled by {who}"));
            let change = Change { job, from: Some(state), to, attempt, builder: None, detail };
            tx.transition(change, now)?;
            tx.tx.execute("UPDATE jobs SET lease_until = NULL WHERE id = $1", &[&(job as i64)])?;
            Ok(())
        })?;
        Ok((self.job(job)?, events))
    }

    fn retry(&mut self, job: u64, who: &str, now: f64) -> Result<(JobView, Events), OpsError> {
        let ((), events) = self.write(|tx| {
            let (state, attempt) = state_of(tx, job)?;
            let (to, detail) = (JobState::Waiting, format!("retried by {who}"));
            let change = Change { job, from: Some(state), to, attempt, builder: None, detail };
            tx.transition(change, now)?;
            tx.tx.execute(
                "UPDATE jobs SET not_before = 0, infra_failures = 0, failure_kind = NULL, \
                 failure_message = NULL WHERE id = $1",
                &[&(job as i64)],
            )?;
            Ok(())
        })?;
        Ok((self.job(job)?, events))
    }

    fn set_priority(
        &mut self,
        job: u64,
        priority: i32,
        who: &str,
        now: f64,
    ) -> Result<(JobView, Events), OpsError> {
        PgStore::set_priority(self, job, priority, who, now)
    }

    fn resume(&mut self, config: &QueueConfig, now: f64) -> Result<usize, OpsError> {
        let (n, _) = self.write(|tx| {
            let sql = format!("UPDATE jobs SET lease_until = $1 WHERE state IN {LIVE}");
            Ok(tx.tx.execute(&sql, &[&(now + config.lease_secs)])?)
        })?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn outbox_add(&mut self, kind: &str, payload: &str, now: f64) -> Result<u64, OpsError> {
        self.add_to_outbox(kind, payload, now)
    }

    fn outbox_claim(
        &mut self,
        now: f64,
        lease: f64,
        limit: u32,
    ) -> Result<Vec<OutboxItem>, OpsError> {
        self.claim_outbox(now, lease, limit)
    }

    fn outbox_done(&mut self, id: u64, now: f64) -> Result<(), OpsError> {
        self.outbox_item_done(id, now)
    }

    fn outbox_later(
        &mut self,
        id: u64,
        next_try: f64,
        payload: &str,
        error: &str,
    ) -> Result<(), OpsError> {
        self.outbox_item_later(id, next_try, payload, error)
    }

    fn record_delivery(&mut self, forge: &str, id: &str, now: f64) -> Result<bool, OpsError> {
        self.delivery_seen_first(forge, id, now)
    }

    fn tick(&mut self, config: &QueueConfig, now: f64) -> Result<Events, OpsError> {
        let ((), events) = self.write(|tx| {
            // Every coordinator ticks: SKIP LOCKED leaves a job another is handling to it.
            let due = tx.tx.query(
                &format!(
                    "SELECT id, state, attempt, builder, started_at + timeout_secs < $1 \
                     FROM jobs WHERE state IN {LIVE} \
                     AND (lease_until < $1 OR started_at + timeout_secs < $1) \
                     ORDER BY id FOR UPDATE SKIP LOCKED"
                ),
                &[&now],
            )?;
            fail_orphans(tx, now)?;
            for row in due {
                let job = row.try_get::<_, i64>(0)? as u64;
                let state = JobState::parse(row.try_get(1)?).unwrap_or(JobState::Running);
                let attempt = small(row.try_get(2)?)?;
                let builder: String = row.try_get::<_, Option<String>>(3)?.unwrap_or_default();
                if row.try_get::<_, Option<bool>>(4)?.unwrap_or(false) {
                    let f = Failure {
                        kind: FailureKind::Timeout,
                        message: format!("attempt {attempt} on {builder} ran past its timeout"),
                    };
                    fail(tx, job, state, attempt, Some(&builder), &f, now)?;
                } else {
                    let why = format!("builder {builder} stopped reporting");
                    infra_failure(tx, config, job, state, attempt, &builder, why, now)?;
                }
            }
            Ok(())
        })?;
        Ok(events)
    }
}

/// A report in its transaction: the rows of every attempt the builder holds or was given are
/// locked at once, in id order (so two reports cannot lock them crosswise), then the claim.
fn report_in(
    tx: &mut Tx<'_>,
    report: &BuilderReport,
    config: &QueueConfig,
    now: f64,
) -> Result<BuilderAnswer, OpsError> {
    let held_ids: Vec<i64> = report.held.iter().map(|h| h.job as i64).collect();
    let rows = tx.tx.query(
        &format!(
            "SELECT id, state, attempt, builder, updated_at FROM jobs WHERE id = ANY($1) \
             OR (builder = $2 AND state IN {LIVE}) ORDER BY id FOR UPDATE"
        ),
        &[&held_ids, &report.builder],
    )?;
    let mut jobs: BTreeMap<u64, (Option<JobState>, u32, Option<String>, f64)> = BTreeMap::new();
    for r in &rows {
        let state = JobState::parse(r.try_get(1)?);
        let row = (state, small(r.try_get(2)?)?, r.try_get(3)?, r.try_get(4)?);
        jobs.insert(r.try_get::<_, i64>(0)? as u64, row);
    }
    // Every attempt the builder holds takes a slot, current or not (see job_queue).
    let holding = u32::try_from(report.held.len()).unwrap_or(u32::MAX);
    let mut stop = Vec::new();
    for held in &report.held {
        let current = jobs.get(&held.job).and_then(|(state, attempt, builder, _)| {
            let state = (*state)?;
            let live = matches!(state, JobState::Scheduled | JobState::Running);
            (live && *attempt == held.attempt && builder.as_deref() == Some(&report.builder))
                .then_some(state)
        });
        let Some(state) = current else {
            stop.push(*held);
            continue;
        };
        tx.tx.execute(
            "UPDATE jobs SET lease_until = $1 WHERE id = $2",
            &[&(now + config.lease_secs), &(held.job as i64)],
        )?;
        if held.started && state == JobState::Scheduled {
            let change = Change {
                job: held.job,
                from: Some(state),
                to: JobState::Running,
                attempt: held.attempt,
                builder: Some(&report.builder),
                detail: "the build started".into(),
            };
            tx.transition(change, now)?;
            if let Some(row) = jobs.get_mut(&held.job) {
                (row.0, row.3) = (Some(JobState::Running), now);
            }
        }
    }
    // Jobs this builder was given that it no longer holds: an infrastructure failure, once the
    // answer has had time to arrive.
    for (&job, (state, attempt, builder, updated_at)) in &jobs {
        let Some(state) = *state else { continue };
        let given = builder.as_deref() == Some(&report.builder)
            && matches!(state, JobState::Scheduled | JobState::Running)
            && *updated_at < now - config.report_every_secs;
        if !given || report.held.iter().any(|h| h.job == job && h.attempt == *attempt) {
            continue;
        }
        let why = format!("builder {} no longer holds attempt {attempt}", report.builder);
        infra_failure(tx, config, job, state, *attempt, &report.builder, why, now)?;
    }
    let mut assignment = None;
    if green_light(report, holding, config) {
        assignment = claim(tx, report, config, now)?;
    }
    Ok(BuilderAnswer { assignment, stop, report_every_secs: config.report_every_secs })
}

/// The next job for `report`'s builder (priority, fair share, age, as in job_queue), moved to
/// `scheduled` with a new attempt. `SKIP LOCKED`: a job another coordinator is giving out is
/// passed over, and the one chosen is rechecked on its latest version before it is locked.
fn claim(
    tx: &mut Tx<'_>,
    report: &BuilderReport,
    config: &QueueConfig,
    now: f64,
) -> Result<Option<Assignment>, OpsError> {
    let sql = format!(
        "WITH live AS (SELECT submitter, COUNT(*) AS n FROM jobs WHERE state IN {LIVE} \
         GROUP BY submitter) \
         SELECT j.id FROM jobs j LEFT JOIN live l ON l.submitter = j.submitter \
         WHERE j.state = 'waiting' AND j.not_before <= $1 \
         AND j.chroot = ANY($2) AND j.arch = ANY($3) \
         AND NOT EXISTS (SELECT 1 FROM jobs k WHERE k.batch = j.batch AND k.id <> j.id \
         AND k.state <> 'succeeded' AND k.provides && j.requires) \
         ORDER BY j.priority DESC, COALESCE(l.n, 0) ASC, j.id ASC \
         LIMIT 1 FOR UPDATE OF j SKIP LOCKED"
    );
    let Some(row) = tx.tx.query_opt(&sql, &[&now, &report.chroots, &report.arches])? else {
        return Ok(None);
    };
    let id: i64 = row.try_get(0)?;
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
    let job = job_from_row(&tx.tx.query_one(&sql, &[&id])?)?;
    let attempt = job.attempt + 1;
    tx.tx.execute(
        "UPDATE jobs SET attempt = $1, builder = $2, lease_until = $3, started_at = $4 \
         WHERE id = $5",
        &[&i64::from(attempt), &report.builder, &(now + config.lease_secs), &now, &id],
    )?;
    let change = Change {
        job: job.id,
        from: Some(JobState::Waiting),
        to: JobState::Scheduled,
        attempt,
        builder: Some(&report.builder),
        detail: format!("attempt {attempt} given to {}", report.builder),
    };
    tx.transition(change, now)?;
    Ok(Some(Assignment {
        job: job.id,
        attempt,
        name: job.name,
        source: job.source,
        target: job.target,
        timeout_secs: job.timeout_secs,
        deps: dependency_rpms(&mut tx.tx, job.id)?,
    }))
}

/// Inserts a checked submission as a waiting job.
fn insert_job(
    tx: &mut Tx<'_>,
    req: &SubmitRequest,
    timeout: u64,
    now: f64,
) -> Result<u64, OpsError> {
    let row = tx.tx.query_one(
        "INSERT INTO jobs (name, state, priority, submitter, batch, chroot, arch, source, \
         timeout_secs, created_at, updated_at, requires, provides) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11, $12) RETURNING id",
        &[
            &job_name(&req.source),
            &JobState::Waiting.as_str(),
            &req.priority,
            &req.submitter,
            &req.batch,
            &req.target.chroot,
            &req.target.arch,
            &to_json(&req.source),
            &(timeout as i64),
            &now,
            &req.requires,
            &req.provides,
        ],
    )?;
    let id = row.try_get::<_, i64>(0)? as u64;
    let change = Change {
        job: id,
        from: None,
        to: JobState::Waiting,
        attempt: 0,
        builder: None,
        detail: format!("submitted by {}", req.submitter),
    };
    tx.transition(change, now)?;
    Ok(id)
}

/// Locks a job's row; its state, attempt and builder.
fn lock_job(tx: &mut Tx<'_>, job: u64) -> Result<(String, u32, Option<String>), OpsError> {
    let row = tx
        .tx
        .query_opt(
            "SELECT state, attempt, builder FROM jobs WHERE id = $1 FOR UPDATE",
            &[&(job as i64)],
        )?
        .ok_or(OpsError::NotFound(job))?;
    Ok((row.try_get(0)?, small(row.try_get(1)?)?, row.try_get(2)?))
}

fn state_of(tx: &mut Tx<'_>, job: u64) -> Result<(JobState, u32), OpsError> {
    let (state, attempt, _) = lock_job(tx, job)?;
    let parsed = JobState::parse(&state)
        .ok_or_else(|| OpsError::Corrupt(format!("job {job}: state {state:?}")))?;
    Ok((parsed, attempt))
}

/// Refuses anything for an attempt that is not the job's current, live one (`lock`: and keeps
/// it so until the transaction ends).
pub(super) fn check_current(
    c: &mut impl GenericClient,
    job: u64,
    attempt: u32,
    lock: bool,
) -> Result<(), OpsError> {
    let sql = format!(
        "SELECT state, attempt, builder FROM jobs WHERE id = $1{}",
        if lock { " FOR SHARE" } else { "" }
    );
    let row = c.query_opt(&sql, &[&(job as i64)])?.ok_or(OpsError::NotFound(job))?;
    let (state, current): (String, u32) = (row.try_get(0)?, small(row.try_get(1)?)?);
    if !matches!(state.as_str(), "scheduled" | "running") || current != attempt {
        return Err(stale_attempt(job, attempt, &state, current, row.try_get(2)?));
    }
    Ok(())
}

pub(super) fn fail(
    tx: &mut Tx<'_>,
    job: u64,
    from: JobState,
    attempt: u32,
    builder: Option<&str>,
    failure: &Failure,
    now: f64,
) -> Result<(), OpsError> {
    tx.tx.execute(
        "UPDATE jobs SET lease_until = NULL, failure_kind = $1, failure_message = $2 WHERE id = $3",
        &[&failure.kind.as_str(), &failure.message, &(job as i64)],
    )?;
    let detail = failed_detail(failure);
    let change = Change { job, from: Some(from), to: JobState::Failed, attempt, builder, detail };
    tx.transition(change, now)
}

/// An infrastructure failure: back to `waiting` after a backoff, or failed for good.
#[allow(clippy::too_many_arguments)]
fn infra_failure(
    tx: &mut Tx<'_>,
    config: &QueueConfig,
    job: u64,
    from: JobState,
    attempt: u32,
    builder: &str,
    why: String,
    now: f64,
) -> Result<(), OpsError> {
    let failures = tx.tx.query_one(
        "UPDATE jobs SET infra_failures = infra_failures + 1 WHERE id = $1 RETURNING infra_failures",
        &[&(job as i64)],
    )?;
    let failures = small(failures.try_get(0)?)?;
    let delay = match infra_verdict(config, failures, &why) {
        Err(f) => return fail(tx, job, from, attempt, Some(builder), &f, now),
        Ok(delay) => delay,
    };
    tx.tx.execute(
        "UPDATE jobs SET lease_until = NULL, not_before = $1, failure_kind = $2, \
         failure_message = $3 WHERE id = $4",
        &[&(now + delay), &FailureKind::Infrastructure.as_str(), &why, &(job as i64)],
    )?;
    let detail = retried_detail(&why, delay);
    let builder = Some(builder);
    let change = Change { job, from: Some(from), to: JobState::Waiting, attempt, builder, detail };
    tx.transition(change, now)
}
