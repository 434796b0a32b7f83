//! The coordinator's operations room: package builds, queued and run on builders.
//!
//! - [`store`]: the queue's storage behind one trait; [`db`]: the embedded SQLite database
//!   (schema, rows); [`pg`]: PostgreSQL, for several coordinators sharing one queue.
//! - [`job_queue`]: submission, claims with priority and fair share, leases, retries with
//!   backoff, timeouts, finishing exactly once.
//! - [`batch`]: batches in build order (dependencies from `BuildRequires`, cycles refused).
//! - [`queue_rules`]: the checks, verdicts and messages both stores share.
//! - [`queue_executor`]: the per-job state machine; every transition is stored as an event.
//! - [`priority`]: an operator's new priority for a waiting job.
//! - [`host_scheduler`]: the green light for a builder (slots, memory, disk).
//! - [`blobs`]: content-addressed sources and artefacts, verified on arrival.
//! - [`outbox`]: messages and watches kept until delivered (commit statuses), in the database.
//! - [`logs`]: build logs streamed by builders.
//! - [`job_listener`]: forge webhooks (GitHub, Gitea/Forgejo, GitLab) → batches from the pushed
//!   commit's `.discomy.toml`.
//! - [`final_aggregator`]: a batch whose builds all succeeded, signed and published as a
//!   repository (createrepo_c, rpmsign, gpg), switched atomically; `verify` and `sync`.
//! - [`ci_notify`]: commit statuses posted to the forge when a push's jobs end.
//! - [`counters`]: webhook deliveries, commit statuses and build durations, for `/metrics`.
//! - [`https`]: the API's listener under the working fleet's TLS (HTTPS only).
//! - [`api`]: the JSON HTTP API (`discomy submit`, `discomy jobs`, `discomy tokens`, builders).
//! - [`tokens`]: tenant tokens (scopes `compile`, `submit`, `admin`; stored hashed) beside the
//!   farm token, and what each route needs.
//!
//! Wire types are `discomy_protocol::ops`. Nothing here touches the compile farm's scheduler:
//! builds reach the farm through the agents on their builders, like any other build.

pub mod api;
pub mod batch;
pub mod blobs;
pub mod ci_notify;
pub mod counters;
pub mod db;
pub mod final_aggregator;
pub mod host_scheduler;
pub mod https;
#[cfg(test)]
mod https_tests;
pub mod job_listener;
pub mod job_queue;
pub mod logs;
pub mod outbox;
pub mod pg;
pub mod priority;
pub mod queue_executor;
pub mod queue_rules;
pub mod store;
#[cfg(test)]
mod tenant_tests;
#[cfg(test)]
mod tests;
pub mod tokens;
#[cfg(test)]
pub(crate) mod tokens_tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use discomy_protocol::ops::{JobEvent, JobState, Target};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use blobs::BlobStore;
use db::Db;
use job_queue::QueueConfig;
use store::QueueStore;

/// What went wrong, by the HTTP status it becomes.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// 404.
    #[error("job {0} does not exist")]
    NotFound(u64),
    /// 404, anything else.
    #[error("{0} does not exist")]
    Missing(String),
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 409: the job is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// 413.
    #[error("too large: {0}")]
    TooLarge(String),
    /// 500: the database holds what this version cannot read.
    #[error("database: {0}")]
    Corrupt(String),
    /// 500.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// 500.
    #[error("database: {0}")]
    Postgres(#[from] postgres::Error),
    /// 500.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// `[ops]` of the coordinator's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Where the API listens; no API (no build queue) without it.
    pub api_listen: Option<SocketAddr>,
    /// The blobs and logs (and the SQLite database). With several coordinators on one
    /// PostgreSQL database, this must be storage they all share.
    pub state_dir: PathBuf,
    /// The queue's database: absent for SQLite in `state_dir/queue.sqlite3`; a PostgreSQL
    /// `postgres://user@host/db` URL or libpq `key=value` words for a queue several coordinators
    /// share. Never with a password: see `database_password_file`.
    pub database: Option<String>,
    /// A file holding the PostgreSQL password (one line); else `PGPASSWORD`, else none.
    pub database_password_file: Option<PathBuf>,
    /// The largest source or artefact accepted, in bytes.
    pub max_upload_bytes: u64,
    /// The largest build log kept per attempt, in bytes.
    pub max_log_bytes: u64,
    /// The queue's timings and limits.
    pub queue: QueueConfig,
    /// Repositories whose forge webhooks are accepted (`[[ops.repos]]`).
    pub repos: Vec<job_listener::RepoConfig>,
    /// The API's address as people and forges reach it (links in commit statuses);
    /// `http://API_LISTEN` by default.
    pub public_url: Option<String>,
    /// Where and how batches are published (`[ops.publish]`); nothing is published without it.
    pub publish: Option<final_aggregator::RepoConfig>,
    /// CA certificates (PEM) trusted for forges over https besides the system's roots: a
    /// forge under a private CA (`status_api` of a company GitLab).
    pub forge_ca_file: Option<PathBuf>,
}

impl Default for OpsConfig {
    fn default() -> OpsConfig {
        OpsConfig {
            api_listen: None,
            state_dir: PathBuf::from("/var/lib/discomy/coordinator"),
            database: None,
            database_password_file: None,
            max_upload_bytes: 4 << 30,
            max_log_bytes: 64 << 20,
            queue: QueueConfig::default(),
            repos: Vec::new(),
            public_url: None,
            publish: None,
            forge_ca_file: None,
        }
    }
}

impl OpsConfig {
    /// Checks the `database` setting (parsed, no password in it) and reads the password, if
    /// any; `Ok(None)` for SQLite.
    pub fn database_password(&self) -> Result<Option<String>, OpsError> {
        let Some(database) = &self.database else {
            if self.database_password_file.is_some() {
                return Err(OpsError::BadRequest(
                    "database_password_file without a PostgreSQL database".into(),
                ));
            }
            return Ok(None);
        };
        pg::parse_database(database)?;
        if let Some(file) = &self.database_password_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                OpsError::BadRequest(format!("database_password_file {}: {e}", file.display()))
            })?;
            let password = text.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                return Err(OpsError::BadRequest(format!(
                    "database_password_file {} is empty",
                    file.display()
                )));
            }
            return Ok(Some(password.to_owned()));
        }
        Ok(std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()))
    }

    /// Opens the queue's store this configuration names.
    pub fn open_store(&self) -> Result<Box<dyn QueueStore>, OpsError> {
        let password = self.database_password()?;
        Ok(match &self.database {
            None => Box::new(Db::open(&self.state_dir.join("queue.sqlite3"))?),
            Some(database) => Box::new(pg::PgStore::connect(database, password.as_deref())?),
        })
    }
}

/// The operations state shared by the API's handlers.
pub struct Ops {
    db: Mutex<Box<dyn QueueStore>>,
    pub(crate) blobs: BlobStore,
    pub(crate) logs: logs::Logs,
    pub(crate) config: OpsConfig,
    pub(crate) token: Option<blake3::Hash>,
    events: broadcast::Sender<JobEvent>,
    /// The repositories whose webhooks are accepted, with their secrets.
    repos: Vec<job_listener::Repo>,
    /// Woken by every change: builders waiting for work (a long-polled report) ask again.
    work: tokio::sync::Notify,
    /// Counts for `/metrics`.
    pub counters: counters::OpsCounters,
    /// The working fleet, whose agents tenant tokens of scope `compile` enrol
    /// ([`Ops::attach_fleet`]).
    fleet: std::sync::OnceLock<Arc<crate::fleet::Fleet>>,
}

/// Unix seconds now.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Ops {
    /// Opens the state directory (database, blobs, logs). `token`: the farm token API clients
    /// must present; without one, only loopback clients are served.
    pub fn open(config: OpsConfig, token: Option<&str>) -> Result<Arc<Ops>, OpsError> {
        config.queue.validate().map_err(OpsError::BadRequest)?;
        let repos = job_listener::load(&config.repos).map_err(OpsError::BadRequest)?;
        std::fs::create_dir_all(&config.state_dir)?;
        // On a thread of its own: the PostgreSQL client must not block an async thread.
        let (db, resumed) = std::thread::scope(|s| {
            s.spawn(|| -> Result<_, OpsError> {
                let mut db = config.open_store()?;
                let resumed = db.resume(&config.queue, now())?;
                Ok((db, resumed))
            })
            .join()
            .map_err(|_| OpsError::Corrupt("opening the queue's database panicked".into()))?
        })?;
        if resumed > 0 {
            tracing::info!(
                resumed,
                "jobs were running when the coordinator stopped; waiting for their builders"
            );
        }
        let blobs = BlobStore::open(&config.state_dir.join("blobs"))?;
        let logs = logs::Logs::new(config.state_dir.join("logs"), config.max_log_bytes);
        let (events, _) = broadcast::channel(1024);
        Ok(Arc::new(Ops {
            db: Mutex::new(db),
            blobs,
            logs,
            token: token.map(|t| blake3::hash(t.as_bytes())),
            config,
            events,
            repos,
            work: tokio::sync::Notify::new(),
            counters: counters::OpsCounters::default(),
            fleet: std::sync::OnceLock::new(),
        }))
    }

    /// How many jobs are in each state, read on this (blocking) thread.
    pub fn state_counts(&self) -> Result<Vec<(JobState, u64)>, OpsError> {
        let mut counts = Vec::new();
        self.blocking_db(&mut |db| {
            counts = db.state_counts()?;
            Ok(())
        })?;
        Ok(counts)
    }

    /// Runs `f` on the database on this (blocking) thread.
    fn blocking_db(
        &self,
        f: &mut dyn FnMut(&mut dyn QueueStore) -> Result<(), OpsError>,
    ) -> Result<(), OpsError> {
        let mut db = self.db.lock().map_err(|_| OpsError::Corrupt("lock poisoned".into()))?;
        f(db.as_mut())
    }

    /// After a batch was queued: its publication is watched (when publishing is configured).
    async fn batch_queued(
        self: &Arc<Self>,
        batch: &str,
        target: &Target,
        jobs: &[u64],
    ) -> Result<(), OpsError> {
        if self.config.publish.is_none() {
            return Ok(());
        }
        let watch = final_aggregator::watch::Publish {
            batch: batch.to_owned(),
            repository: format!("{}-{}", target.chroot, target.arch),
            jobs: jobs.to_vec(),
        };
        let payload = serde_json::to_string(&watch).unwrap_or_default();
        self.db(move |db, _| db.outbox_add(final_aggregator::watch::PUBLISH, &payload, now()))
            .await?;
        Ok(())
    }

    /// The API's address as people and forges reach it.
    pub fn public_url(&self) -> String {
        match (&self.config.public_url, self.config.api_listen) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(addr)) => format!("http://{addr}"),
            (None, None) => "http://localhost:3635".to_owned(),
        }
    }

    /// Events as they happen (the monitor and the web UI subscribe).
    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    pub(crate) fn publish(&self, events: Vec<JobEvent>) {
        // Only a change that can make work wakes the held reports: a job waiting (submitted,
        // retried, backed off), or one ending (its slot is free, its dependents may run). A
        // report's own `scheduled`/`running` would only make every held report ask again.
        if events.iter().any(|e| !matches!(e.to, JobState::Scheduled | JobState::Running)) {
            self.work.notify_waiters();
        }
        for event in events {
            self.counters.observe(&event);
            tracing::info!(
                job = event.job,
                to = event.to.as_str(),
                attempt = event.attempt,
                detail = %event.detail,
                "job state"
            );
            let _ = self.events.send(event);
        }
    }

    /// Runs `f` on the database off the async threads.
    pub(crate) async fn db<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut dyn QueueStore, &Ops) -> Result<T, OpsError> + Send + 'static,
    ) -> Result<T, OpsError> {
        let ops = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut db = ops.db.lock().map_err(|_| OpsError::Corrupt("lock poisoned".into()))?;
            f(db.as_mut(), &ops)
        })
        .await
        .map_err(|e| OpsError::Corrupt(format!("database task: {e}")))?
    }
}

/// Serves the API on `listener` over plain HTTP (a plain-token lab farm), with `extra` routes
/// beside it (the web UI, `/metrics`), and expires leases and timeouts every second, until
/// `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ops: Arc<Ops>,
    extra: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, None, ops, extra, shutdown).await
}

/// As [`serve`]; with `tls` (a working fleet, [`crate::fleet::Fleet::https`]) over HTTPS only.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<discomy_protocol::tls::FarmTls>>,
    ops: Arc<Ops>,
    extra: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let ticker = {
        let ops = Arc::clone(&ops);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = every.tick() => {}
                }
                match ops.db(|db, ops| db.tick(&ops.config.queue, now())).await {
                    Ok(events) => ops.publish(events),
                    Err(err) => tracing::warn!(%err, "build queue: expiring leases failed"),
                }
            }
        })
    };
    let notifier = tokio::spawn(outbox::run(Arc::clone(&ops), shutdown.clone()));
    let app = api::router(ops).merge(extra).into_make_service_with_connect_info::<SocketAddr>();
    let result = match tls {
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await,
        Some(tls) => {
            use axum::serve::ListenerExt;
            // `tap_io` gives the TLS listener axum's `ConnectInfo<SocketAddr>`.
            match https::TlsListener::new(listener, tls, shutdown.clone()) {
                Ok(listener) => {
                    axum::serve(listener.tap_io(|_| {}), app)
                        .with_graceful_shutdown(shutdown.cancelled_owned())
                        .await
                }
                Err(err) => Err(err),
            }
        }
    };
    ticker.abort();
    notifier.abort();
    result
}
