//! An operator's new priority for a waiting job (`discomy jobs priority`, the web UI), on both
//! stores. Only a waiting job's priority changes: a scheduled or running one already has its
//! builder. The change is stored as an event that leaves the state where it is (no `from`), with
//! the old and new priority and who made it.

use discomy_protocol::ops::{JobState, JobView};

use super::OpsError;
use super::db::Db;
use super::job_queue::Events;
use super::pg::PgStore;
use super::queue_executor::{Change, transition};

/// The priorities an operator may give a waiting job.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;

/// Checks a new priority and the job's state; the event's detail.
fn check(job: u64, state: &str, old: i32, priority: i32, who: &str) -> Result<String, OpsError> {
    if !PRIORITY_RANGE.contains(&priority) {
        return Err(OpsError::BadRequest(format!(
            "priority {priority} is outside {}..={}",
            PRIORITY_RANGE.start(),
            PRIORITY_RANGE.end()
        )));
    }
    if state != JobState::Waiting.as_str() {
        return Err(OpsError::Conflict(format!(
            "job {job} is {state}: only a waiting job's priority can change"
        )));
    }
    Ok(format!("priority {old} → {priority} by {who}"))
}

impl Db {
    /// Gives waiting job `job` priority `priority`.
    pub fn set_priority(
        &mut self,
        job: u64,
        priority: i32,
        who: &str,
        now: f64,
    ) -> Result<(JobView, Events), OpsError> {
        use rusqlite::OptionalExtension;
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let (state, attempt, old): (String, u32, i32) = tx
            .query_row(
                "SELECT state, attempt, priority FROM jobs WHERE id = ?1",
                [job as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
            .ok_or(OpsError::NotFound(job))?;
        let detail = check(job, &state, old, priority, who)?;
        tx.execute(
            "UPDATE jobs SET priority = ?1 WHERE id = ?2",
            rusqlite::params![priority, job as i64],
        )?;
        let to = JobState::Waiting;
        let event =
            transition(&tx, Change { job, from: None, to, attempt, builder: None, detail }, now)?;
        tx.commit()?;
        Ok((self.job(job)?, vec![event]))
    }
}

impl PgStore {
    /// Gives waiting job `job` priority `priority`.
    pub fn set_priority(
        &mut self,
        job: u64,
        priority: i32,
        who: &str,
        now: f64,
    ) -> Result<(JobView, Events), OpsError> {
        let ((), events) = self.write(|tx| {
            let row = tx
                .tx
                .query_opt(
                    "SELECT state, attempt, priority FROM jobs WHERE id = $1 FOR UPDATE",
                    &[&(job as i64)],
                )?
                .ok_or(OpsError::NotFound(job))?;
            let (state, attempt, old): (String, i64, i32) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let detail = check(job, &state, old, priority, who)?;
            let attempt = u32::try_from(attempt)
                .map_err(|_| OpsError::Corrupt(format!("job {job}: attempt {attempt}")))?;
            tx.tx.execute(
                "UPDATE jobs SET priority = $1 WHERE id = $2",
                &[&priority, &(job as i64)],
            )?;
            let to = JobState::Waiting;
            tx.transition(Change { job, from: None, to, attempt, builder: None, detail }, now)
        })?;
        Ok((self.job(job)?, events))
    }
}
