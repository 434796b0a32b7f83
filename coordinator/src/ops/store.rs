//! The queue's storage, behind one trait: the embedded SQLite database ([`super::db::Db`], the
//! default) or a PostgreSQL database several coordinators share ([`super::pg::PgStore`]). Every
//! method is one transaction; the rules (leases, retries, fair share, build order) are the same
//! whichever stores them.

use discomy_protocol::ops::{
    BatchRequest, BlobRef, BuilderAnswer, BuilderReport, FinishRequest, JobEvent, JobState,
    JobView, SubmitRequest,
};

use super::OpsError;
use super::db::Db;
use super::job_queue::{Events, QueueConfig};
use super::outbox::{self, OutboxItem};
use super::tokens::TokenStore;

/// Whether the coordinator holds a blob with that size.
pub type BlobPresent<'a> = &'a dyn Fn(&BlobRef) -> bool;

/// A queue's storage. See [`super::job_queue`] for what each operation means. Reads take
/// `&mut self` too: a PostgreSQL connection is used mutably.
pub trait QueueStore: Send {
    /// The tenant tokens' table ([`super::tokens`]).
    fn tokens(&mut self) -> &mut dyn TokenStore;
    /// One job with its current attempt's artefacts.
    fn job(&mut self, id: u64) -> Result<JobView, OpsError>;
    /// Jobs, oldest first, optionally by state and batch.
    fn list(
        &mut self,
        state: Option<JobState>,
        batch: Option<&str>,
    ) -> Result<Vec<JobView>, OpsError>;
    /// How many jobs are in each state (states with none are left out).
    fn state_counts(&mut self) -> Result<Vec<(JobState, u64)>, OpsError>;
    /// Events after `after`, of one job or of all.
    fn events(
        &mut self,
        job: Option<u64>,
        after: u64,
        limit: u32,
    ) -> Result<Vec<JobEvent>, OpsError>;
    /// Accepts one job.
    fn submit(
        &mut self,
        req: &SubmitRequest,
        config: &QueueConfig,
        blob_present: BlobPresent<'_>,
        now: f64,
    ) -> Result<(u64, Events), OpsError>;
    /// Accepts a batch, all or none.
    fn submit_batch(
        &mut self,
        req: &BatchRequest,
        config: &QueueConfig,
        blob_present: BlobPresent<'_>,
        now: f64,
    ) -> Result<(Vec<u64>, Events), OpsError>;
    /// A builder's report: leases, stops, at most one new assignment.
    fn report(
        &mut self,
        report: &BuilderReport,
        config: &QueueConfig,
        now: f64,
    ) -> Result<(BuilderAnswer, Events), OpsError>;
    /// Whether `attempt` is `job`'s current, live attempt.
    fn check_attempt(&mut self, job: u64, attempt: u32) -> Result<(), OpsError>;
    /// Records an uploaded artefact of the current attempt.
    fn add_artifact(&mut self, job: u64, attempt: u32, blob: &BlobRef) -> Result<(), OpsError>;
    /// The end of an attempt.
    fn finish(
        &mut self,
        job: u64,
        req: &FinishRequest,
        config: &QueueConfig,
        now: f64,
    ) -> Result<(JobView, Events), OpsError>;
    /// Cancels a live job.
    fn cancel(&mut self, job: u64, who: &str, now: f64) -> Result<(JobView, Events), OpsError>;
    /// Queues a failed or cancelled job again.
    fn retry(&mut self, job: u64, who: &str, now: f64) -> Result<(JobView, Events), OpsError>;
    /// Gives a waiting job a new priority ([`super::priority`]).
    fn set_priority(
        &mut self,
        job: u64,
        priority: i32,
        who: &str,
        now: f64,
    ) -> Result<(JobView, Events), OpsError>;
    /// After a restart: leases run from now.
    fn resume(&mut self, config: &QueueConfig, now: f64) -> Result<usize, OpsError>;
    /// Adds an outbox item (a commit status to send, a push to watch), due at once.
    fn outbox_add(&mut self, kind: &str, payload: &str, now: f64) -> Result<u64, OpsError>;
    /// Claims up to `limit` due outbox items for `lease` seconds.
    fn outbox_claim(
        &mut self,
        now: f64,
        lease: f64,
        limit: u32,
    ) -> Result<Vec<OutboxItem>, OpsError>;
    /// An outbox item was delivered.
    fn outbox_done(&mut self, id: u64, now: f64) -> Result<(), OpsError>;
    /// An outbox item is not done: due again at `next_try`, with its new content.
    fn outbox_later(
        &mut self,
        id: u64,
        next_try: f64,
        payload: &str,
        error: &str,
    ) -> Result<(), OpsError>;
    /// Records a webhook delivery; `false` when it was seen before (a replay).
    fn record_delivery(&mut self, forge: &str, id: &str, now: f64) -> Result<bool, OpsError>;
    /// Expired leases, timeouts, jobs whose dependency failed.
    fn tick(&mut self, config: &QueueConfig, now: f64) -> Result<Events, OpsError>;
}

impl QueueStore for Db {
    fn tokens(&mut self) -> &mut dyn TokenStore {
        self
    }
    fn job(&mut self, id: u64) -> Result<JobView, OpsError> {
        Db::job(self, id)
    }
    fn list(
        &mut self,
        state: Option<JobState>,
        batch: Option<&str>,
    ) -> Result<Vec<JobView>, OpsError> {
        Db::list(self, state, batch)
    }
    fn state_counts(&mut self) -> Result<Vec<(JobState, u64)>, OpsError> {
        Db::state_counts(self)
    }
    fn events(
        &mut self,
        job: Option<u64>,
        after: u64,
        limit: u32,
    ) -> Result<Vec<JobEvent>, OpsError> {
        Db::events(self, job, after, limit)
    }
    fn submit(
        &mut self,
        req: &SubmitRequest,
        config: &QueueConfig,
        blob_present: BlobPresent<'_>,
        now: f64,
    ) -> Result<(u64, Events), OpsError> {
        Db::submit(self, req, config, blob_present, now)
    }
    fn submit_batch(
        &mut self,
        req: &BatchRequest,
        config: &QueueConfig,
        blob_present: BlobPresent<'_>,
        now: f64,
    ) -> Result<(Vec<u64>, Events), OpsError> {
        Db::submit_batch(self, req, config, blob_present, now)
    }
    fn report(
        &mut self,
        report: &BuilderReport,
        config: &QueueConfig,
        now: f64,
    ) -> Result<(BuilderAnswer, Events), OpsError> {
        Db::report(self, report, config, now)
    }
    fn check_attempt(&mut self, job: u64, attempt: u32) -> Result<(), OpsError> {
        Db::check_attempt(self, job, attempt)
    }
    fn add_artifact(&mut self, job: u64, attempt: u32, blob: &BlobRef) -> Result<(), OpsError> {
        Db::add_artifact(self, job, attempt, blob)
    }
    fn finish(
        &mut self,
        job: u64,
        req: &FinishRequest,
        config: &QueueConfig,
        now: f64,
    ) -> Result<(JobView, Events), OpsError> {
        Db::finish(self, job, req, config, now)
    }
    fn cancel(&mut self, job: u64, who: &str, now: f64) -> Result<(JobView, Events), OpsError> {
        Db::cancel(self, job, who, now)
    }
    fn retry(&mut self, job: u64, who: &str, now: f64) -> Result<(JobView, Events), OpsError> {
        Db::retry(self, job, who, now)
    }
    fn set_priority(
        &mut self,
        job: u64,
        priority: i32,
        who: &str,
        now: f64,
    ) -> Result<(JobView, Events), OpsError> {
        Db::set_priority(self, job, priority, who, now)
    }
    fn resume(&mut self, config: &QueueConfig, now: f64) -> Result<usize, OpsError> {
        Db::resume(self, config, now)
    }
    fn tick(&mut self, config: &QueueConfig, now: f64) -> Result<Events, OpsError> {
        Db::tick(self, config, now)
    }
    fn outbox_add(&mut self, kind: &str, payload: &str, now: f64) -> Result<u64, OpsError> {
        outbox::add(&self.conn, kind, payload, now)
    }
    fn outbox_claim(
        &mut self,
        now: f64,
        lease: f64,
        limit: u32,
    ) -> Result<Vec<OutboxItem>, OpsError> {
        outbox::claim(&mut self.conn, now, lease, limit)
    }
    fn outbox_done(&mut self, id: u64, now: f64) -> Result<(), OpsError> {
        outbox::done(&self.conn, id, now)
    }
    fn outbox_later(
        &mut self,
        id: u64,
        next_try: f64,
        payload: &str,
        error: &str,
    ) -> Result<(), OpsError> {
        outbox::later(&self.conn, id, next_try, payload, error)
    }
    fn record_delivery(&mut self, forge: &str, id: &str, now: f64) -> Result<bool, OpsError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO deliveries (forge, id, at) VALUES (?1, ?2, ?3)",
            rusqlite::params![forge, id, now],
        )?;
        Ok(n == 1)
    }
}
