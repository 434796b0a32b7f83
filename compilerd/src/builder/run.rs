//! The builder's loop: every `report_every` seconds (and as soon as a build ends) a
//! [`BuilderReport`] (capacity, free disk, chroots, held attempts), which is also the heartbeat
//! and the request for work; the answer's `stop` list stops builds, its [`Assignment`] starts one
//! in a thread of its own ([`super::attempt`]).
//!
//! The coordinator's answer is checked: unknown stops are ignored, an assignment beyond the free
//! slots or for an attempt already held is not started. An unreachable coordinator does not stop
//! the builds held: reports are retried with a short backoff, and each build delivers its end
//! when the coordinator is back.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use discomy_protocol::ops::{Assignment, BuilderReport, Failure, FailureKind, Held};
use tokio_util::sync::CancellationToken;

use super::attempt::{AttemptEnv, disk_free, refuse, run_attempt};
use super::config::Config;
use super::job::Control;
use crate::coord::api::{ApiClient, ApiClientError};

/// Why the builder could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    /// The work directory could not be made.
    #[error("work directory {}: {source}", path.display())]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The API client could not be made.
    #[error(transparent)]
    Api(#[from] ApiClientError),
    /// The metrics listener could not be started.
    #[error("metrics: {0}")]
    Metrics(std::io::Error),
}

/// Serves `/metrics` on `addr` on the runtime this (blocking) thread was started from.
fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: Arc<super::metrics::BuilderMetrics>,
    shutdown: CancellationToken,
) -> Result<(), BuilderError> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| BuilderError::Metrics(std::io::Error::other(e.to_string())))?;
    let listener = runtime
        .block_on(discomy_protocol::plumbing::metrics::bind(addr))
        .map_err(BuilderError::Metrics)?;
    let render = Arc::new(move || metrics.render());
    runtime.spawn(discomy_protocol::plumbing::metrics::serve(listener, render, shutdown));
    Ok(())
}

type HeldMap = BTreeMap<(u64, u32), Arc<Control>>;

/// Runs the builder until `shutdown`; then stops its builds and reports that it wants no work.
pub fn run(config: Config, shutdown: CancellationToken) -> Result<(), BuilderError> {
    let (ca, dir) = (config.ca_file.as_deref(), config.fleet_dir.as_deref());
    let client = ApiClient::from_args(&config.api, config.token.clone(), ca, dir)?;
    let work_err = |source| BuilderError::WorkDir { path: config.work_dir.clone(), source };
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&config.work_dir).map_err(work_err)?;
    fs::set_permissions(&config.work_dir, fs::Permissions::from_mode(0o700)).map_err(work_err)?;
    let config = Arc::new(config);
    let metrics = Arc::new(super::metrics::BuilderMetrics::new(config.slots));
    if let Some(addr) = config.metrics_listen {
        serve_metrics(addr, Arc::clone(&metrics), shutdown.clone())?;
    }
    let env = AttemptEnv {
        client: client.clone(),
        config: Arc::clone(&config),
        shutdown: shutdown.clone(),
        metrics: Arc::clone(&metrics),
    };
    let held: Arc<Mutex<HeldMap>> = Arc::default();
    let (wake_tx, wake) = mpsc::channel::<()>();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut failures = 0u32;
    let mut every = config.report_every;
    tracing::info!(
        name = config.name,
        api = client.base_url(),
        slots = config.slots,
        "builder started"
    );
    loop {
        let stopping = shutdown.is_cancelled();
        let snapshot: HeldMap = held.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if stopping {
            for control in snapshot.values() {
                control.stop.store(true, Ordering::SeqCst);
            }
        }
        metrics.held.store(snapshot.len() as u64, Ordering::Relaxed);
        let report = make_report(&config, &snapshot, !stopping);
        if stopping && snapshot.is_empty() {
            // Best effort: the coordinator learns at once that this builder holds nothing.
            let _ = client.report(&report);
            break;
        }
        let answered = client.report(&report);
        metrics.reported(answered.is_ok());
        match answered {
            Ok(answer) => {
                if failures > 0 {
                    tracing::info!("coordinator reachable again after {failures} failed reports");
                }
                failures = 0;
                for stop in &answer.stop {
                    if let Some(control) = snapshot.get(&(stop.job, stop.attempt)) {
                        tracing::info!(
                            job = stop.job,
                            attempt = stop.attempt,
                            "the coordinator stops it"
                        );
                        control.stop.store(true, Ordering::SeqCst);
                    }
                }
                if let Some(a) = answer.assignment.filter(|_| !stopping) {
                    threads.push(start(&env, &held, &wake_tx, a, config.slots));
                }
                let secs = answer.report_every_secs;
                every = if secs.is_finite() && secs > 0.0 {
                    config.report_every.min(Duration::from_secs_f64((secs / 2.0).clamp(0.1, 300.0)))
                } else {
                    config.report_every
                };
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures % 50 == 0 {
                    tracing::warn!("report failed ({failures} in a row): {e}");
                }
            }
        }
        threads.retain(|t| !t.is_finished());
        let wait = if stopping {
            Duration::from_millis(200)
        } else if failures > 0 {
            Duration::from_millis(250u64 << failures.min(4)).min(every.max(Duration::from_secs(1)))
        } else {
            every
        };
        // A build's end or shutdown cuts the wait short.
        let until = std::time::Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || shutdown.is_cancelled() != stopping {
                break;
            }
            if wake.recv_timeout(left.min(Duration::from_millis(250))).is_ok() {
                break;
            }
        }
        while wake.try_recv().is_ok() {}
    }
    for t in threads {
        let _ = t.join();
    }
    tracing::info!("builder stopped");
    Ok(())
}

/// Starts assignment `a` in a thread (or refuses it in one, when no slot is free or the attempt is
/// already held).
fn start(
    env: &AttemptEnv,
    held: &Arc<Mutex<HeldMap>>,
    wake: &mpsc::Sender<()>,
    a: Assignment,
    slots: u32,
) -> JoinHandle<()> {
    let control = Arc::new(Control::default());
    let admitted = {
        let mut map = held.lock().unwrap_or_else(PoisonError::into_inner);
        if map.keys().any(|(job, _)| *job == a.job) {
            Err(format!("builder {} already runs job {}", env.config.name, a.job))
        } else if map.len() >= slots as usize {
            Err(format!("builder {} has no free slot", env.config.name))
        } else {
            map.insert((a.job, a.attempt), Arc::clone(&control));
            Ok(())
        }
    };
    let (env, held, wake) = (env.clone(), Arc::clone(held), wake.clone());
    std::thread::spawn(move || {
        match admitted {
            Ok(()) => {
                tracing::info!(job = a.job, attempt = a.attempt, name = a.name, "assigned");
                run_attempt(&env, &a, &control);
                held.lock().unwrap_or_else(PoisonError::into_inner).remove(&(a.job, a.attempt));
            }
            Err(why) => {
                tracing::warn!(job = a.job, attempt = a.attempt, "assignment not run: {why}");
                refuse(&env, &a, Failure { kind: FailureKind::Infrastructure, message: why });
            }
        }
        let _ = wake.send(());
    })
}

fn make_report(config: &Config, held: &HeldMap, wants_work: bool) -> BuilderReport {
    let total = mem_total();
    let memory_bytes = match config.memory_limit {
        Some(limit) => limit.saturating_mul(u64::from(config.slots)).min(total),
        None => total,
    };
    BuilderReport {
        builder: config.name.clone(),
        slots: config.slots,
        memory_bytes,
        disk_free_bytes: disk_free(&config.work_dir),
        arches: config.arches.clone(),
        chroots: config.chroots.iter().map(|c| c.name.clone()).collect(),
        held: held
            .iter()
            .map(|(&(job, attempt), c)| Held {
                job,
                attempt,
                started: c.started.load(Ordering::SeqCst),
            })
            .collect(),
        wants_work,
    }
}

/// The host's memory (`MemTotal` of `/proc/meminfo`), in bytes.
fn mem_total() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let kib = l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim();
                kib.parse::<u64>().ok()
            })
        })
        .map_or(0, |kib| kib.saturating_mul(1024))
}
