//! queue_executor: one state machine per job. Every change of a job's state goes through
//! [`transition`], which checks it is a legal move from the state the job is in *now* (in the same
//! transaction, so two racing requests cannot both move a job), stores it as an event, and returns
//! the event for publication (`GET /api/v1/events`, the monitor and the web UI to come).
//!
//! ```text
//! waiting ──claim──▶ scheduled ──builder started──▶ running ──▶ succeeded | failed
//!    ▲                   │                             │
//!    └── infrastructure failure (backoff) / retry ─────┘          any live state ──▶ cancelled
//! waiting ──a dependency of its batch failed──▶ failed
//! ```

use discomy_protocol::ops::{JobEvent, JobState};
use rusqlite::{Connection, params};

use super::OpsError;

/// Whether a job may move from `from` to `to`.
pub fn allowed(from: JobState, to: JobState) -> bool {
    use JobState::*;
    matches!(
        (from, to),
        (Waiting, Scheduled)
            | (Waiting, Cancelled)
            | (Waiting, Failed)
            | (Scheduled, Running)
            | (Scheduled, Succeeded)
            | (Scheduled, Failed)
            | (Scheduled, Waiting)
            | (Scheduled, Cancelled)
            | (Running, Succeeded)
            | (Running, Failed)
            | (Running, Waiting)
            | (Running, Cancelled)
            | (Failed, Waiting)
            | (Cancelled, Waiting)
    )
}

/// Refuses a move [`allowed`] does not allow.
pub(super) fn check_allowed(job: u64, from: JobState, to: JobState) -> Result<(), OpsError> {
    if allowed(from, to) {
        return Ok(());
    }
    Err(OpsError::Conflict(format!(
        "job {job} cannot go from {} to {}",
        from.as_str(),
        to.as_str()
    )))
}

/// The job was not in the state the change was made from (another request moved it first).
pub(super) fn moved_away(job: u64, from: JobState) -> OpsError {
    OpsError::Conflict(format!("job {job} is no longer {}", from.as_str()))
}

/// One state change to make.
pub struct Change<'a> {
    /// The job.
    pub job: u64,
    /// The state the caller read (the change fails if the job has moved since).
    pub from: Option<JobState>,
    /// The new state.
    pub to: JobState,
    /// The attempt concerned.
    pub attempt: u32,
    /// The builder concerned.
    pub builder: Option<&'a str>,
    /// Why.
    pub detail: String,
}

impl Change<'_> {
    /// The event this change is, numbered `seq`, at `now`.
    pub fn into_event(self, seq: u64, now: f64) -> JobEvent {
        JobEvent {
            seq,
            job: self.job,
            at: now,
            from: self.from,
            to: self.to,
            attempt: self.attempt,
            builder: self.builder.map(str::to_owned),
            detail: self.detail,
        }
    }
}

/// Moves the job and stores the event, inside `tx`. `from == None` records a submission (the job
/// row was just inserted in `to`).
pub fn transition(tx: &Connection, change: Change<'_>, now: f64) -> Result<JobEvent, OpsError> {
    if let Some(from) = change.from {
        check_allowed(change.job, from, change.to)?;
        let moved = tx.execute(
            "UPDATE jobs SET state = ?1, updated_at = ?2 WHERE id = ?3 AND state = ?4",
            params![change.to.as_str(), now, change.job as i64, from.as_str()],
        )?;
        if moved != 1 {
            return Err(moved_away(change.job, from));
        }
    }
    tx.execute(
        "INSERT INTO events (job, at, from_state, to_state, attempt, builder, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            change.job as i64,
            now,
            change.from.map(JobState::as_str),
            change.to.as_str(),
            change.attempt,
            change.builder,
            change.detail
        ],
    )?;
    Ok(change.into_event(tx.last_insert_rowid() as u64, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_states_only_leave_by_retry() {
        for to in JobState::ALL {
            assert!(!allowed(JobState::Succeeded, to), "succeeded → {to:?}");
            assert_eq!(allowed(JobState::Failed, to), to == JobState::Waiting);
            assert_eq!(allowed(JobState::Cancelled, to), to == JobState::Waiting);
        }
        assert!(!allowed(JobState::Waiting, JobState::Running), "a claim comes first");
        assert!(allowed(JobState::Waiting, JobState::Failed), "its dependency failed");
        assert!(!allowed(JobState::Waiting, JobState::Succeeded));
    }
}
