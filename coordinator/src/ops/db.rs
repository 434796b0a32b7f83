//! The build queue's embedded database: SQLite, one file under the state directory, in WAL mode
//! with `synchronous=FULL`, so a job the API accepted survives a `kill -9` (or a power cut) of the
//! coordinator. Owns the schema and the mapping between rows and [`JobView`]s; what the rows mean
//! is [`super::job_queue`] and [`super::queue_executor`].

use std::path::Path;

use discomy_protocol::ops::{
    BlobRef, Failure, FailureKind, JobEvent, JobSource, JobState, JobView, Target,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::OpsError;

/// The schema. Append-only: a later version adds tables or columns with defaults.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    submitter TEXT NOT NULL,
    batch TEXT,
    chroot TEXT NOT NULL,
    arch TEXT NOT NULL,
    source TEXT NOT NULL,
    timeout_secs INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    infra_failures INTEGER NOT NULL DEFAULT 0,
    builder TEXT,
    not_before REAL NOT NULL DEFAULT 0,
    lease_until REAL,
    started_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    failure_kind TEXT,
    failure_message TEXT,
    requires TEXT NOT NULL DEFAULT '[]',
    provides TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, priority, id);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job INTEGER NOT NULL REFERENCES jobs (id),
    at REAL NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    builder TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job, seq);
CREATE TABLE IF NOT EXISTS artifacts (
    job INTEGER NOT NULL REFERENCES jobs (id),
    attempt INTEGER NOT NULL,
    name TEXT NOT NULL,
    blake3 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (job, attempt, name)
);
CREATE TABLE IF NOT EXISTS deliveries (
    forge TEXT NOT NULL,
    id TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (forge, id)
);
";

/// The columns [`job_from_row`] reads, in its order.
pub(super) const JOB_COLUMNS: &str = "id, name, state, priority, submitter, batch, chroot, arch, \
     source, timeout_secs, attempt, infra_failures, builder, not_before, created_at, updated_at, \
     failure_kind, failure_message, requires, provides";

/// An open queue database.
pub struct Db {
    pub(super) conn: Connection,
}

impl Db {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Db, OpsError> {
        let conn = Connection::open(path)?;
        // WAL: readers do not block the writer; FULL: a commit is on disk before it returns.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Db::init(conn)
    }

    /// A database in memory (tests).
    pub fn in_memory() -> Result<Db, OpsError> {
        Db::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Db, OpsError> {
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(super::outbox::SCHEMA)?;
        conn.execute_batch(super::tokens::SCHEMA)?;
        Ok(Db { conn })
    }

    /// One job, with the artefacts of its current attempt.
    pub fn job(&self, id: u64) -> Result<JobView, OpsError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
        let job = self.conn.query_row(&sql, [id as i64], job_from_row).optional()?;
        let mut job = job.ok_or(OpsError::NotFound(id))??;
        job.artifacts = self.artifacts(id, job.attempt)?;
        job.waits_for = super::batch::waits_for(&self.conn, id)?;
        Ok(job)
    }

    /// Jobs, oldest first, optionally only those in `state` or of `batch`.
    pub fn list(
        &self,
        state: Option<JobState>,
        batch: Option<&str>,
    ) -> Result<Vec<JobView>, OpsError> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) \
             AND (?2 IS NULL OR batch = ?2) ORDER BY id"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![state.map(JobState::as_str), batch], job_from_row)?;
        let mut jobs = Vec::new();
        for row in rows {
            let mut job = row??;
            job.artifacts = self.artifacts(job.id, job.attempt)?;
            job.waits_for = super::batch::waits_for(&self.conn, job.id)?;
            jobs.push(job);
        }
        Ok(jobs)
    }

    /// How many jobs are in each state.
    pub fn state_counts(&self) -> Result<Vec<(JobState, u64)>, OpsError> {
        let mut stmt = self.conn.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut counts = Vec::new();
        for row in rows {
            let (state, n) = row?;
            counts.push(super::queue_rules::state_count(&state, n)?);
        }
        Ok(counts)
    }

    /// What attempt `attempt` of job `job` uploaded.
    pub fn artifacts(&self, job: u64, attempt: u32) -> Result<Vec<BlobRef>, OpsError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, blake3, size FROM artifacts WHERE job = ?1 AND attempt = ?2 ORDER BY name",
        )?;
        let rows = stmt.query_map(params![job as i64, attempt], |r| {
            Ok(BlobRef { name: r.get(0)?, blake3: r.get(1)?, size: r.get::<_, i64>(2)? as u64 })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Events after `after`, at most `limit`, of one job or of all.
    pub fn events(
        &self,
        job: Option<u64>,
        after: u64,
        limit: u32,
    ) -> Result<Vec<JobEvent>, OpsError> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, job, at, from_state, to_state, attempt, builder, detail FROM events \
             WHERE seq > ?1 AND (?2 IS NULL OR job = ?2) ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![after as i64, job.map(|j| j as i64), limit], |r| {
            let from: Option<String> = r.get(3)?;
            let to: String = r.get(4)?;
            Ok((
                JobEvent {
                    seq: r.get::<_, i64>(0)? as u64,
                    job: r.get::<_, i64>(1)? as u64,
                    at: r.get(2)?,
                    from: None,
                    to: JobState::Waiting,
                    attempt: r.get(5)?,
                    builder: r.get(6)?,
                    detail: r.get(7)?,
                },
                from,
                to,
            ))
        })?;
        let mut events = Vec::new();
        for row in rows {
            let (mut event, from, to) = row?;
            event.from = match from {
                Some(f) => Some(state(&f)?),
                None => None,
            };
            event.to = state(&to)?;
            events.push(event);
        }
        Ok(events)
    }
}

/// The state named `name` in the database.
pub(super) fn state(name: &str) -> Result<JobState, OpsError> {
    JobState::parse(name).ok_or_else(|| OpsError::Corrupt(format!("unknown job state {name:?}")))
}

/// A job row (without artefacts). The outer `Result` is SQLite's; the inner one a row the
/// database holds but this version cannot read.
pub(super) fn job_from_row(r: &Row<'_>) -> rusqlite::Result<Result<JobView, OpsError>> {
    let state_name: String = r.get(2)?;
    let source_json: String = r.get(8)?;
    let failure_kind: Option<String> = r.get(16)?;
    let failure_message: Option<String> = r.get(17)?;
    let requires: String = r.get(18)?;
    let provides: String = r.get(19)?;
    let id = r.get::<_, i64>(0)? as u64;
    let mut job = JobView {
        id,
        name: r.get(1)?,
        state: JobState::Waiting,
        priority: r.get(3)?,
        submitter: r.get(4)?,
        batch: r.get(5)?,
        target: Target { chroot: r.get(6)?, arch: r.get(7)? },
        source: JobSource::Srpm {
            srpm: BlobRef { name: String::new(), blake3: String::new(), size: 0 },
        },
        timeout_secs: r.get::<_, i64>(9)? as u64,
        attempt: r.get(10)?,
        infra_failures: r.get(11)?,
        builder: r.get(12)?,
        not_before: r.get(13)?,
        created_at: r.get(14)?,
        updated_at: r.get(15)?,
        failure: None,
        artifacts: Vec::new(),
        requires: Vec::new(),
        provides: Vec::new(),
        waits_for: Vec::new(),
    };
    Ok((|| {
        job.state = state(&state_name)?;
        job.source = source(id, &source_json)?;
        job.requires = serde_json::from_str(&requires)
            .map_err(|e| OpsError::Corrupt(format!("job {id}: requires: {e}")))?;
        job.provides = serde_json::from_str(&provides)
            .map_err(|e| OpsError::Corrupt(format!("job {id}: provides: {e}")))?;
        job.failure = failure(id, failure_kind, failure_message)?;
        Ok(job)
    })())
}

/// A job's source as stored (JSON).
pub(super) fn source(id: u64, json: &str) -> Result<JobSource, OpsError> {
    serde_json::from_str(json).map_err(|e| OpsError::Corrupt(format!("job {id}: source: {e}")))
}

/// A job's failure as stored (kind and message columns).
pub(super) fn failure(
    id: u64,
    kind: Option<String>,
    message: Option<String>,
) -> Result<Option<Failure>, OpsError> {
    let Some(kind) = kind else { return Ok(None) };
    Ok(Some(Failure {
        kind: FailureKind::parse(&kind)
            .ok_or_else(|| OpsError::Corrupt(format!("job {id}: failure kind {kind:?}")))?,
        message: message.unwrap_or_default(),
    }))
}
