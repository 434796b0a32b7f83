//! The build queue on PostgreSQL, for a site where several coordinators (separate processes,
//! usually on separate hosts) share one queue. Owns the connection, the schema (created at
//! connect), the mapping between rows and [`JobView`]s, and the transaction discipline; the
//! operations are in [`queue`] (and the batch rules in `batch`), the rules they apply are
//! [`super::job_queue`]'s.
//!
//! How several coordinators stay safe, all in PostgreSQL's default READ COMMITTED isolation:
//! - Every operation is one transaction. A job row is locked (`SELECT … FOR UPDATE`) before its
//!   state is read for a change, and every change is also guarded by the state it was read in
//!   (`UPDATE … WHERE state = $from`), so two coordinators can never both move one job.
//! - A claim picks its job with `FOR UPDATE OF j SKIP LOCKED`: a job another coordinator is
//!   giving out at that moment is skipped, not waited for, and the one picked is rechecked on
//!   its latest version (still `waiting`) before it is locked. One job, one builder.
//! - Lease and timeout expiry (`tick`, run every second by every coordinator) and orphaned
//!   dependents also use `SKIP LOCKED`: the first coordinator handles a job, the others pass.
//! - Events are inserted last, under one transaction-level advisory lock held to the commit, so
//!   sequence numbers (a BIGSERIAL) become visible in their order and `GET /events?after=SEQ`
//!   never skips one that commits late. Only that short tail is serialised.
//! - A deadlock or serialisation failure (possible when one report locks several rows) rolls
//!   the whole transaction back and it is run again, a few times, after a short pause.
//! - A coordinator that dies mid-transaction loses its connection; PostgreSQL rolls the
//!   transaction back and frees its row locks. One that hangs is cut off by
//!   `idle_in_transaction_session_timeout`.

mod batch;
mod outbox;
mod queue;
pub mod scratch;
#[cfg(test)]
mod tests;
mod tokens;

use std::time::Duration;

use discomy_protocol::ops::{BlobRef, JobEvent, JobState, JobView, Target};
use postgres::error::SqlState;
use postgres::{Client, Config, GenericClient, NoTls, Row, Transaction};

use super::OpsError;
use super::db::{JOB_COLUMNS, failure, source, state};
use super::queue_executor::{Change, check_allowed, moved_away};

/// The schema. Append-only, like the SQLite one; lists are `TEXT[]` (overlap is `&&`).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    submitter TEXT NOT NULL,
    batch TEXT,
    chroot TEXT NOT NULL,
    arch TEXT NOT NULL,
    source TEXT NOT NULL,
    timeout_secs BIGINT NOT NULL,
    attempt BIGINT NOT NULL DEFAULT 0,
    infra_failures BIGINT NOT NULL DEFAULT 0,
    builder TEXT,
    not_before DOUBLE PRECISION NOT NULL DEFAULT 0,
    lease_until DOUBLE PRECISION,
    started_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    failure_kind TEXT,
    failure_message TEXT,
    requires TEXT[] NOT NULL DEFAULT '{}',
    provides TEXT[] NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, priority, id);
CREATE INDEX IF NOT EXISTS jobs_by_batch ON jobs (batch) WHERE batch IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_submitter ON jobs (submitter, state);
CREATE INDEX IF NOT EXISTS jobs_by_builder ON jobs (builder, state);
CREATE TABLE IF NOT EXISTS events (
    seq BIGSERIAL PRIMARY KEY,
    job BIGINT NOT NULL REFERENCES jobs (id),
    at DOUBLE PRECISION NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    builder TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job, seq);
CREATE TABLE IF NOT EXISTS artifacts (
    job BIGINT NOT NULL REFERENCES jobs (id),
    attempt BIGINT NOT NULL,
    name TEXT NOT NULL,
    blake3 TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (job, attempt, name)
);
CREATE TABLE IF NOT EXISTS outbox (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_try DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    done_at DOUBLE PRECISION,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (done_at, next_try);
CREATE TABLE IF NOT EXISTS deliveries (
    forge TEXT NOT NULL,
    id TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (forge, id)
);
";

/// Advisory locks, two-int keys (they never meet one-bigint keys): this class…
pub(super) const LOCK_CLASS: i32 = 0x6469_736b;
/// …the event tail…
const EVENTS_LOCK: i32 = 1;
/// …and schema creation (two coordinators starting at once).
const SCHEMA_LOCK: i32 = 2;
/// One batch's submissions (its cycle check), keyed by the batch name's hash.
const BATCH_LOCK_CLASS: i32 = 0x6469_736c;
/// Runs of a transaction that met a deadlock or a serialisation failure.
const TRIES: u32 = 10;

/// A queue in a PostgreSQL database, shared with any number of other coordinators.
/// The `postgres` client runs its own small runtime: it must not be used, opened or dropped on
/// an async runtime's thread (the coordinator calls it through `spawn_blocking`; see
/// [`Drop`](#impl-Drop-for-PgStore) and `Ops::open`).
pub struct PgStore {
    client: Option<Client>,
    config: Config,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Closing blocks on the client's runtime: do it on a thread of its own, wherever the
        // store is dropped (the last `Arc<Ops>` may go on an async thread).
        if let Some(client) = self.client.take() {
            let _ = std::thread::spawn(move || drop(client)).join();
        }
    }
}

/// Parses the `database` setting (a `postgres://` URL or libpq `key=value` words), refusing one
/// that holds a password: that belongs in `database_password_file` or `PGPASSWORD`.
pub fn parse_database(database: &str) -> Result<Config, OpsError> {
    // The setting itself is never repeated in an error: it may hold a password.
    let config: Config = database
        .parse()
        .map_err(|e| OpsError::BadRequest(format!("database: not a PostgreSQL address: {e}")))?;
    if config.get_password().is_some() {
        return Err(OpsError::BadRequest(
            "database: holds a password; put it in database_password_file or PGPASSWORD".into(),
        ));
    }
    if config.get_hosts().is_empty() {
        return Err(OpsError::BadRequest(
            "database: names no host (a host name, an address, or a Unix socket directory)".into(),
        ));
    }
    Ok(config)
}

fn open(config: &Config) -> Result<Client, OpsError> {
    let mut client = config.connect(NoTls)?;
    // A coordinator that hangs mid-transaction must not hold its row locks for ever; a request
    // that waits for a lock longer than this fails rather than piling up.
    client.batch_execute(
        "SET idle_in_transaction_session_timeout = '60s'; SET lock_timeout = '20s'",
    )?;
    Ok(client)
}

impl PgStore {
    /// Connects to `database` (see [`parse_database`]) and creates the schema if needed.
    pub fn connect(database: &str, password: Option<&str>) -> Result<PgStore, OpsError> {
        let mut config = parse_database(database)?;
        if let Some(password) = password {
            config.password(password);
        }
        if config.get_application_name().is_none() {
            config.application_name("discomy-coordinator");
        }
        config.connect_timeout(Duration::from_secs(10));
        let client = Some(open(&config)?);
        let mut store = PgStore { client, config };
        store.write(|tx| {
            tx.tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_CLASS, &SCHEMA_LOCK])?;
            tx.tx.batch_execute(SCHEMA)?;
            tx.tx.batch_execute(tokens::SCHEMA)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// The connection, opened again if the server closed it (a restart, a network cut).
    fn client(&mut self) -> Result<&mut Client, OpsError> {
        match &mut self.client {
            Some(client) if !client.is_closed() => {}
            _ => {
                tracing::warn!("build queue: the PostgreSQL connection was closed; reconnecting");
                self.client = None;
                self.client = Some(open(&self.config)?);
            }
        }
        self.client.as_mut().ok_or_else(|| OpsError::Corrupt("no database connection".into()))
    }

    /// Runs `f` in one transaction and commits it with its events, running it again after a
    /// deadlock or a serialisation failure. Any error rolls everything back.
    pub(super) fn write<T>(
        &mut self,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<T, OpsError>,
    ) -> Result<(T, Vec<JobEvent>), OpsError> {
        let mut tries = 0;
        loop {
            let result = match self.client()?.transaction() {
                Err(e) => Err(e.into()),
                Ok(tx) => {
                    let mut tx = Tx { tx, events: Vec::new() };
                    match f(&mut tx) {
                        Ok(value) => tx.commit().map(|events| (value, events)),
                        Err(e) => Err(e),
                    }
                }
            };
            match result {
                Err(OpsError::Postgres(e)) if tries + 1 < TRIES && retryable(&e) => {
                    tries += 1;
                    let pause = u64::from(tries) * 3 + u64::from(std::process::id() % 7);
                    std::thread::sleep(Duration::from_millis(pause));
                }
                other => return other,
            }
        }
    }

    /// One job, with the artefacts of its current attempt.
    pub fn job(&mut self, id: u64) -> Result<JobView, OpsError> {
        let client = self.client()?;
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1");
        let row = client.query_opt(&sql, &[&(id as i64)])?.ok_or(OpsError::NotFound(id))?;
        let mut job = job_from_row(&row)?;
        job.artifacts = artifacts(client, id, job.attempt)?;
        job.waits_for = waits_for(client, id)?;
        Ok(job)
    }

    /// How many jobs are in each state.
    pub fn state_counts(&mut self) -> Result<Vec<(JobState, u64)>, OpsError> {
        let client = self.client()?;
        let rows = client.query("SELECT state, COUNT(*) FROM jobs GROUP BY state", &[])?;
        rows.iter()
            .map(|row| {
                super::queue_rules::state_count(&row.try_get::<_, String>(0)?, row.try_get(1)?)
            })
            .collect()
    }

    /// Jobs, oldest first, optionally only those in `state` or of `batch`.
    pub fn list(
        &mut self,
        state: Option<JobState>,
        batch: Option<&str>,
    ) -> Result<Vec<JobView>, OpsError> {
        let client = self.client()?;
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ($1::TEXT IS NULL OR state = $1) \
             AND ($2::TEXT IS NULL OR batch = $2) ORDER BY id"
        );
        let rows = client.query(&sql, &[&state.map(JobState::as_str), &batch])?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            let mut job = job_from_row(&row)?;
            job.artifacts = artifacts(client, job.id, job.attempt)?;
            job.waits_for = waits_for(client, job.id)?;
            jobs.push(job);
        }
        Ok(jobs)
    }

    /// Events after `after`, at most `limit`, of one job or of all.
    pub fn events(
        &mut self,
        job: Option<u64>,
        after: u64,
        limit: u32,
    ) -> Result<Vec<JobEvent>, OpsError> {
        let rows = self.client()?.query(
            "SELECT seq, job, at, from_state, to_state, attempt, builder, detail FROM events \
             WHERE seq > $1 AND ($2::BIGINT IS NULL OR job = $2) ORDER BY seq LIMIT $3",
            &[&(after as i64), &job.map(|j| j as i64), &i64::from(limit)],
        )?;
        rows.iter()
            .map(|r| {
                let from: Option<String> = r.try_get(3)?;
                Ok(JobEvent {
                    seq: r.try_get::<_, i64>(0)? as u64,
                    job: r.try_get::<_, i64>(1)? as u64,
                    at: r.try_get(2)?,
                    from: from.as_deref().map(state).transpose()?,
                    to: state(r.try_get(4)?)?,
                    attempt: small(r.try_get(5)?)?,
                    builder: r.try_get(6)?,
                    detail: r.try_get(7)?,
                })
            })
            .collect()
    }

    /// Whether `attempt` of `job` is the current, live one (uploads check this).
    pub fn check_attempt(&mut self, job: u64, attempt: u32) -> Result<(), OpsError> {
        queue::check_current(self.client()?, job, attempt, false)
    }
}

fn retryable(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// An open transaction and the events of the changes made in it (numbered at the commit).
pub(super) struct Tx<'a> {
    pub(super) tx: Transaction<'a>,
    events: Vec<JobEvent>,
}

impl Tx<'_> {
    /// Moves the job (a legal move from the state it is in now, see
    /// [`super::queue_executor::transition`]) and records the event, stored at the commit.
    pub(super) fn transition(&mut self, change: Change<'_>, now: f64) -> Result<(), OpsError> {
        if let Some(from) = change.from {
            check_allowed(change.job, from, change.to)?;
            let moved = self.tx.execute(
                "UPDATE jobs SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4",
                &[&change.to.as_str(), &now, &(change.job as i64), &from.as_str()],
            )?;
            if moved != 1 {
                return Err(moved_away(change.job, from));
            }
        }
        // Numbered at commit, under the event lock.
        self.events.push(change.into_event(0, now));
        Ok(())
    }

    /// Stores the events under the event lock (their numbers become visible in order) and
    /// commits.
    fn commit(self) -> Result<Vec<JobEvent>, OpsError> {
        let Tx { mut tx, mut events } = self;
        if !events.is_empty() {
            tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_CLASS, &EVENTS_LOCK])?;
            let insert = tx.prepare(
                "INSERT INTO events (job, at, from_state, to_state, attempt, builder, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
            )?;
            for event in &mut events {
                let row = tx.query_one(
                    &insert,
                    &[
                        &(event.job as i64),
                        &event.at,
                        &event.from.map(JobState::as_str),
                        &event.to.as_str(),
                        &i64::from(event.attempt),
                        &event.builder,
                        &event.detail,
                    ],
                )?;
                event.seq = row.try_get::<_, i64>(0)? as u64;
            }
        }
        tx.commit()?;
        Ok(events)
    }

    /// Serialises submissions to `batch` (its cycle check sees every job of it).
    pub(super) fn lock_batch(&mut self, batch: &str) -> Result<(), OpsError> {
        self.tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&BATCH_LOCK_CLASS, &batch],
        )?;
        Ok(())
    }
}

/// A stored count (attempts, failures) as the API's `u32`.
pub(super) fn small(value: i64) -> Result<u32, OpsError> {
    u32::try_from(value).map_err(|_| OpsError::Corrupt(format!("{value} out of range")))
}

/// A job row of [`JOB_COLUMNS`] (without artefacts).
pub(super) fn job_from_row(r: &Row) -> Result<JobView, OpsError> {
    let id = r.try_get::<_, i64>(0)? as u64;
    Ok(JobView {
        id,
        name: r.try_get(1)?,
        state: state(r.try_get(2)?)?,
        priority: r.try_get(3)?,
        submitter: r.try_get(4)?,
        batch: r.try_get(5)?,
        target: Target { chroot: r.try_get(6)?, arch: r.try_get(7)? },
        source: source(id, r.try_get(8)?)?,
        timeout_secs: r.try_get::<_, i64>(9)? as u64,
        attempt: small(r.try_get(10)?)?,
        infra_failures: small(r.try_get(11)?)?,
        builder: r.try_get(12)?,
        not_before: r.try_get(13)?,
        created_at: r.try_get(14)?,
        updated_at: r.try_get(15)?,
        failure: failure(id, r.try_get(16)?, r.try_get(17)?)?,
        artifacts: Vec::new(),
        requires: r.try_get(18)?,
        provides: r.try_get(19)?,
        waits_for: Vec::new(),
    })
}

/// What attempt `attempt` of job `job` uploaded.
pub(super) fn artifacts(
    c: &mut impl GenericClient,
    job: u64,
    attempt: u32,
) -> Result<Vec<BlobRef>, OpsError> {
    let rows = c.query(
        "SELECT name, blake3, size FROM artifacts WHERE job = $1 AND attempt = $2 ORDER BY name",
        &[&(job as i64), &i64::from(attempt)],
    )?;
    rows.iter()
        .map(|r| {
            Ok(BlobRef {
                name: r.try_get(0)?,
                blake3: r.try_get(1)?,
                size: r.try_get::<_, i64>(2)? as u64,
            })
        })
        .collect()
}

/// The jobs of `job`'s batch that provide something it requires.
pub(super) fn waits_for(c: &mut impl GenericClient, job: u64) -> Result<Vec<u64>, OpsError> {
    let rows = c.query(
        "SELECT DISTINCT k.id FROM jobs j JOIN jobs k ON k.batch = j.batch AND k.id <> j.id \
         AND k.provides && j.requires WHERE j.id = $1 ORDER BY k.id",
        &[&(job as i64)],
    )?;
    rows.iter().map(|r| Ok(r.try_get::<_, i64>(0)? as u64)).collect()
}
