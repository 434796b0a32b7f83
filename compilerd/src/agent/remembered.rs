//! The agent without its coordinator: units go to the workers remembered from the coordinator
//! ([`crate::coord::memory`]: its farm view and placements, with their slots and learned
//! speeds) instead of compiling locally, until a coordinator answers again. The pool over those
//! workers is rebuilt when the remembered list changes (only while a coordinator answers), so
//! backoffs and idle connections live as long as an outage; quarantined workers are left out.
//! Counts what it placed (`discomy stats`' `remembered_farm`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use discomy_protocol::stats::RememberedFarmStats;
use discomy_protocol::{Response, SourceResult};
use tracing::info;

use super::pool::Pool;
use super::{State, Unit, run_on_pool};
use crate::coord::client::CoordClient;

/// The pool over the remembered workers and the counters of what went there.
#[derive(Default)]
pub struct Remembered {
    /// The pool, and the generation of the remembered list it was built from.
    pool: Mutex<Option<(u64, Arc<Pool>)>>,
    placed: AtomicU64,
    remote: AtomicU64,
}

impl Remembered {
    /// The pool over what `coord` remembers now (built again when the list changed); `None`
    /// when it remembers no worker.
    fn pool(&self, state: &State, coord: &CoordClient) -> Option<Arc<Pool>> {
        let memory = coord.memory();
        let generation = memory.generation();
        let mut slot = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((built, pool)) = slot.as_ref()
            && *built == generation
        {
            return (!pool.is_empty()).then(|| pool.clone());
        }
        let (generation, workers) = memory.workers();
        let workers: Vec<_> = workers
            .into_iter()
            .filter(|w| !state.verifier.is_quarantined(&w.spec.address()))
            .collect();
        // Speeds relative to the mean of the measured ones; an unmeasured worker counts as
        // a typical one.
        let measured: Vec<f64> = workers.iter().map(|w| w.speed).filter(|s| *s > 0.0).collect();
        let mean = measured.iter().sum::<f64>() / measured.len().max(1) as f64;
        let hosts = workers
            .into_iter()
            .map(|w| {
                let weight = if w.speed > 0.0 && mean > 0.0 { w.speed / mean } else { 1.0 };
                (w.spec, weight)
            })
            .collect::<Vec<_>>();
        info!(
            workers = hosts.len(),
            "placing units on the workers remembered from the coordinator"
        );
        let pool = Arc::new(Pool::weighted(hosts, state.config.backoff));
        *slot = Some((generation, pool.clone()));
        (!pool.is_empty()).then_some(pool)
    }

    /// Never uses the worker at `address` again (verification caught it).
    pub(super) fn quarantine(&self, address: &str) {
        if let Some((_, pool)) = self.pool.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            pool.quarantine(address);
        }
    }

    /// The counters, with what `coord` knows now.
    pub(super) fn stats(&self, coord: Option<&CoordClient>) -> RememberedFarmStats {
        let (coordinator_lost, failovers) = coord.map_or((0, 0), CoordClient::session_counts);
        RememberedFarmStats {
            workers: coord.map_or(0, |c| c.memory().len() as u64),
            placed: self.placed.load(Ordering::Relaxed),
            remote: self.remote.load(Ordering::Relaxed),
            coordinator_lost,
            failovers,
            coordinator: coord.and_then(CoordClient::current),
        }
    }
}

/// Runs a unit on the remembered workers while no coordinator answers. `None`: none
/// remembered, or none took it (the caller goes on with the host list).
pub(super) async fn forward(state: &State, coord: &CoordClient, unit: &Unit) -> Option<Response> {
    let pool = state.remembered.pool(state, coord)?;
    // The farm tier was asked already, before the coordinator was.
    let mut farm_asked = true;
    let ran = run_on_pool(state, &pool, unit, Vec::new(), &mut farm_asked).await;
    if ran.leases > 0 {
        state.remembered.placed.fetch_add(1, Ordering::Relaxed);
    }
    let response = ran.outcome.ok()?;
    if let Response::Compiled(result) | Response::CompiledSources(SourceResult { result, .. }) =
        &response
        && result.exit_code == 0
    {
        state.remembered.remote.fetch_add(1, Ordering::Relaxed);
    }
    Some(response)
}
