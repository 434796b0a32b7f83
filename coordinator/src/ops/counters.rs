//! What the operations room counts for `/metrics` beyond the database's own state: webhook
//! deliveries by forge and HTTP answer, commit statuses sent or failed, and how long finished
//! builds took. In memory since the coordinator started (Prometheus counters may reset).

use std::collections::BTreeMap;
use std::sync::Mutex;

use discomy_protocol::ops::{JobEvent, JobState};
use discomy_protocol::plumbing::metrics::{HistogramFamily, build_histograms, label};

/// The counts, each behind its own lock (held only to add one).
pub struct OpsCounters {
    /// Webhook deliveries by (forge, HTTP status code).
    webhooks: Mutex<BTreeMap<(String, u16), u64>>,
    /// Commit statuses by result (`sent`, `failed`).
    notifications: Mutex<BTreeMap<&'static str, u64>>,
    /// Seconds from a job's start (its attempt running) to its end, by result.
    durations: HistogramFamily,
    /// When each running job started (Unix seconds), until it ends.
    started: Mutex<BTreeMap<u64, f64>>,
}

/// A snapshot for one scrape.
pub struct OpsSnapshot {
    /// Webhook deliveries by (forge, HTTP status code).
    pub webhooks: Vec<((String, u16), u64)>,
    /// Commit statuses by result.
    pub notifications: Vec<(&'static str, u64)>,
    /// Build durations by result (shared handles).
    pub durations: HistogramFamily,
}

impl Default for OpsCounters {
    fn default() -> OpsCounters {
        OpsCounters {
            webhooks: Mutex::new(BTreeMap::new()),
            notifications: Mutex::new(BTreeMap::new()),
            durations: build_histograms(),
            started: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Most running jobs whose start is remembered (a bound on what a flood of jobs can cost).
const MAX_STARTED: usize = 100_000;

impl OpsCounters {
    /// One webhook delivery answered with `code`.
    pub fn webhook(&self, forge: &str, code: u16) {
        let mut map = self.webhooks.lock().unwrap_or_else(|e| e.into_inner());
        // Forge names are checked before they are counted (three known ones), so this is bounded.
        *map.entry((forge.to_owned(), code)).or_insert(0) += 1;
    }

    /// One commit status sent (`true`) or not delivered.
    pub fn notification(&self, sent: bool) {
        let key = if sent { "sent" } else { "failed" };
        *self.notifications.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_insert(0) += 1;
    }

    /// Follows job events: a job running starts its clock, a job ending observes its duration.
    pub fn observe(&self, event: &JobEvent) {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        match event.to {
            JobState::Running => {
                if started.len() < MAX_STARTED {
                    started.insert(event.job, event.at);
                }
            }
            JobState::Succeeded | JobState::Failed | JobState::Cancelled => {
                let Some(at) = started.remove(&event.job) else { return };
                let seconds = (event.at - at).max(0.0);
                self.durations
                    .get_or_create(&vec![label("result", event.to.as_str())])
                    .observe(seconds);
            }
            JobState::Waiting => {
                started.remove(&event.job);
            }
            JobState::Scheduled => {}
        }
    }

    /// The counts now.
    pub fn snapshot(&self) -> OpsSnapshot {
        let webhooks = self.webhooks.lock().unwrap_or_else(|e| e.into_inner());
        let notifications = self.notifications.lock().unwrap_or_else(|e| e.into_inner());
        OpsSnapshot {
            webhooks: webhooks.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            notifications: notifications.iter().map(|(k, v)| (*k, *v)).collect(),
            durations: self.durations.clone(),
        }
    }
}
