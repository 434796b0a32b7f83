//! The builder's `/metrics` (`metrics_listen` in its configuration, or `--metrics-listen`):
//! builds by result with their durations, builds held now against its slots, and its reports to
//! the coordinator (each one its heartbeat and its request for work) by result.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use discomy_protocol::ops::Outcome;
use discomy_protocol::plumbing::metrics::{Exposition, HistogramFamily, build_histograms, label};

/// The builder's counts.
#[derive(Debug)]
pub struct BuilderMetrics {
    /// Builds ended here by result (`succeeded`, `failed`, `stopped`).
    builds: Mutex<BTreeMap<&'static str, u64>>,
    /// Seconds each build ran, by result.
    durations: HistogramFamily,
    /// Builds held now.
    pub(super) held: AtomicU64,
    /// Reports answered, and not.
    reports_ok: AtomicU64,
    reports_failed: AtomicU64,
    slots: u32,
}

impl BuilderMetrics {
    /// Counts for a builder of `slots` builds at once.
    pub fn new(slots: u32) -> BuilderMetrics {
        BuilderMetrics {
            builds: Mutex::new(BTreeMap::new()),
            durations: build_histograms(),
            held: AtomicU64::new(0),
            reports_ok: AtomicU64::new(0),
            reports_failed: AtomicU64::new(0),
            slots,
        }
    }

    /// A build ended after `seconds`: `None` when the coordinator stopped it.
    pub(super) fn build_ended(&self, outcome: Option<&Outcome>, seconds: f64) {
        let result = match outcome {
            Some(Outcome::Succeeded) => "succeeded",
            Some(Outcome::Failed(_)) => "failed",
            None => "stopped",
        };
        *self.builds.lock().unwrap_or_else(|e| e.into_inner()).entry(result).or_insert(0) += 1;
        self.durations.get_or_create(&vec![label("result", result)]).observe(seconds);
    }

    /// A report answered (`true`) or not.
    pub(super) fn reported(&self, ok: bool) {
        let counter = if ok { &self.reports_ok } else { &self.reports_failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// One scrape's text.
    pub fn render(&self) -> String {
        let mut e = Exposition::new();
        let builds = self.builds.lock().map(|m| m.clone()).unwrap_or_default();
        e.counters(
            "discomy_builder_builds",
            "Package builds this builder ran to their end, by result.",
            ["succeeded", "failed", "stopped"]
                .map(|r| (vec![label("result", r)], builds.get(r).copied().unwrap_or(0))),
        );
        e.histogram_family(
            "discomy_builder_build_seconds",
            "How long each build ran here (download, chroot, rpmbuild, uploads), by result.",
            &self.durations,
        );
        e.gauge("discomy_builder_slots", "Builds this builder runs at once.", self.slots as f64);
        e.gauge(
            "discomy_builder_running_builds",
            "Builds held now.",
            self.held.load(Ordering::Relaxed) as f64,
        );
        e.counters(
            "discomy_builder_reports",
            "Reports to the coordinator (heartbeat and request for work), by result.",
            [
                (vec![label("result", "answered")], self.reports_ok.load(Ordering::Relaxed)),
                (vec![label("result", "failed")], self.reports_failed.load(Ordering::Relaxed)),
            ],
        );
        e.encode()
    }
}
