//! The worker's `/metrics` (`discomy-compilerd worker --metrics-listen ADDR`): its slots and the
//! units compiling now, how long compilers ran here (the sandbox included), jobs from real distcc
//! clients by result, and its toolchain store. Rendered at each scrape from [`super::State`].

use std::sync::atomic::Ordering;

use discomy_protocol::plumbing::metrics::{Exposition, Histogram, label, latency_histogram};

use super::State;

/// Counts kept only for `/metrics`.
pub(crate) struct WorkerMetrics {
    /// Seconds each unit's compiler ran here.
    pub(crate) compile_seconds: Histogram,
}

impl Default for WorkerMetrics {
    fn default() -> WorkerMetrics {
        WorkerMetrics { compile_seconds: latency_histogram() }
    }
}

/// One scrape's text.
pub(crate) fn render(state: &State) -> String {
    let mut e = Exposition::new();
    e.gauge("discomy_worker_slots", "Compile slots this worker offers.", state.config.slots as f64);
    e.gauge(
        "discomy_worker_running_units",
        "Units compiling now.",
        state.config.running.load(Ordering::Relaxed) as f64,
    );
    e.histogram(
        "discomy_worker_compile_seconds",
        "How long each unit's compiler ran here, the sandbox included (its _count is the units \
         compiled for agents; distcc clients' jobs are discomy_worker_distcc_jobs_total).",
        &state.metrics.compile_seconds,
    );
    let distcc = state.distcc_results.lock().map(|m| m.clone()).unwrap_or_default();
    e.counters(
        "discomy_worker_distcc_jobs",
        "Jobs from real distcc clients, by distccd's result word.",
        distcc.into_iter().map(|(result, n)| (vec![label("result", result)], n)),
    );
    let store = state.store.activity();
    e.counter("discomy_worker_toolchain_installs", "Toolchains installed here.", store.installs);
    e.counter(
        "discomy_worker_blobs_received",
        "Toolchain blobs received from agents.",
        store.blobs_received,
    );
    e.counter(
        "discomy_worker_blob_received_bytes",
        "Bytes of toolchain blobs received (uncompressed).",
        store.blob_bytes_received,
    );
    e.encode()
}
