//! The agent's `/metrics` (`discomy-compilerd agent --metrics-listen ADDR`): what every compiler
//! call became (the same counts as `discomy stats` and `discomy run`'s summary: units by outcome,
//! local and fallback by reason, cache hits), the farm tier's lookups, the time from a wrapper's
//! unit to its answer, the bytes of unit frames exchanged with workers, verification, and the
//! toolchain store. Counted here as units pass; rendered at each scrape.

use std::sync::atomic::{AtomicU64, Ordering};

use discomy_protocol::Response;
use discomy_protocol::plumbing::metrics::{
    Exposition, Histogram, HistogramFamily, label, latency_histograms,
};

use super::State;

/// How a unit can be answered: the `result` label of `discomy_agent_unit_seconds`.
const ANSWERS: [&str; 5] =
    ["compiled", "compile_error", "farm_cache_hit", "missing_sources", "refused"];

/// Counts kept only for `/metrics` (the rest is the agent's [`discomy_protocol::stats::AgentStats`]).
pub(super) struct AgentMetrics {
    /// Seconds from a wrapper's unit to the agent's answer, by how it was answered.
    unit_seconds: HistogramFamily,
    /// Its series, one per [`ANSWERS`] entry, made once: a unit observes without allocating.
    by_answer: Vec<Histogram>,
    /// Bytes of unit frames sent to workers (compressed, as on the wire).
    sent_bytes: AtomicU64,
    /// Bytes of answer frames received from workers.
    received_bytes: AtomicU64,
    /// Farm-tier lookups answered with an entry, and without.
    farm_hits: AtomicU64,
    farm_misses: AtomicU64,
}

impl Default for AgentMetrics {
    fn default() -> AgentMetrics {
        let unit_seconds = latency_histograms();
        let by_answer = ANSWERS
            .iter()
            .map(|a| unit_seconds.get_or_create(&vec![label("result", *a)]).clone())
            .collect();
        AgentMetrics {
            unit_seconds,
            by_answer,
            sent_bytes: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            farm_hits: AtomicU64::new(0),
            farm_misses: AtomicU64::new(0),
        }
    }
}

/// How a unit was answered: its index in [`ANSWERS`].
fn answer_kind(response: &Response) -> usize {
    match response {
        Response::Compiled(r) if r.exit_code == 0 => 0,
        Response::CompiledSources(r) if r.result.exit_code == 0 => 0,
        Response::Compiled(_) | Response::CompiledSources(_) => 1,
        Response::CacheHit(_) => 2,
        Response::MissingBlobs(_) => 3,
        _ => 4,
    }
}

impl AgentMetrics {
    /// One unit answered after `seconds`.
    pub(super) fn unit_answered(&self, response: &Response, seconds: f64) {
        if let Some(histogram) = self.by_answer.get(answer_kind(response)) {
            histogram.observe(seconds);
        }
    }

    /// One exchange with a worker: `sent` bytes out, `received` bytes back.
    pub(super) fn exchanged(&self, sent: usize, received: usize) {
        self.sent_bytes.fetch_add(sent as u64, Ordering::Relaxed);
        self.received_bytes.fetch_add(received as u64, Ordering::Relaxed);
    }

    /// One farm-tier lookup.
    pub(super) fn farm_lookup(&self, hit: bool) {
        let counter = if hit { &self.farm_hits } else { &self.farm_misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One scrape's text.
pub(super) fn render(state: &State) -> String {
    let stats = state.stats.lock().map(|s| s.clone()).unwrap_or_default();
    let metrics = &state.metrics;
    let c = &stats.counts;
    let mut e = Exposition::new();
    let outcome = |name: &str, n: u64| (vec![label("outcome", name)], n);
    e.counters(
        "discomy_agent_units",
        "Compile units by outcome: remote (the farm's object), local by policy, fallback (the \
         farm did not deliver), cache (an object-cache hit, local or farm tier).",
        [
            outcome("remote", c.remote),
            outcome("local", c.local),
            outcome("fallback", c.fallback),
            outcome("cache", c.cache_hits),
        ],
    );
    e.counter("discomy_agent_units_failed", "Compile units whose compile failed.", c.failed);
    let by_reason = |map: &std::collections::BTreeMap<String, u64>| {
        map.iter().map(|(k, n)| (vec![label("reason", k.clone())], *n)).collect::<Vec<_>>()
    };
    e.counters(
        "discomy_agent_local_units",
        "Units compiled locally by policy, by reason.",
        by_reason(&c.local_reasons),
    );
    e.counters(
        "discomy_agent_fallback_units",
        "Distributable units compiled locally because the farm did not deliver, by reason.",
        by_reason(&c.fallback_reasons),
    );
    e.counters(
        "discomy_agent_other_calls",
        "Compiler calls that are not compile units (links, -E, ...), by reason.",
        by_reason(&stats.other_calls),
    );
    e.counters(
        "discomy_agent_farm_cache_lookups",
        "Lookups in the object cache's farm tier, by result.",
        [
            (vec![label("result", "hit")], metrics.farm_hits.load(Ordering::Relaxed)),
            (vec![label("result", "miss")], metrics.farm_misses.load(Ordering::Relaxed)),
        ],
    );
    e.histogram_family(
        "discomy_agent_unit_seconds",
        "Time from a wrapper's unit to the agent's answer (placement, transfer and the remote \
         compile), by answer.",
        &metrics.unit_seconds,
    );
    e.counters(
        "discomy_agent_shipped_bytes",
        "Bytes of unit and answer frames exchanged with workers (compressed, as on the wire).",
        [
            (vec![label("direction", "sent")], metrics.sent_bytes.load(Ordering::Relaxed)),
            (vec![label("direction", "received")], metrics.received_bytes.load(Ordering::Relaxed)),
        ],
    );
    e.counter(
        "discomy_agent_backoffs",
        "Workers put in backoff after a failed exchange.",
        stats.backoffs,
    );
    let verification = state.verifier.counts();
    e.counters(
        "discomy_agent_verified_units",
        "Remote units also compiled locally and compared, by verdict.",
        [
            (
                vec![label("result", "matched")],
                verification.checked.saturating_sub(verification.mismatched),
            ),
            (vec![label("result", "mismatched")], verification.mismatched),
        ],
    );
    let joined = state.coord.as_ref().is_some_and(|c| c.joined());
    e.gauge(
        "discomy_agent_coordinator_joined",
        "1 when the agent is logged in to a coordinator.",
        if joined { 1.0 } else { 0.0 },
    );
    let store = state.store.activity();
    e.counter(
        "discomy_agent_toolchain_installs",
        "Toolchains installed in the agent's store.",
        store.installs,
    );
    e.counter(
        "discomy_agent_toolchains_pushed",
        "Toolchains pushed to workers that asked for them.",
        store.toolchains_pushed,
    );
    e.encode()
}
