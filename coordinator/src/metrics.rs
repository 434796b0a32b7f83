//! The coordinator's `/metrics` (moniscomy): the farm (nodes with slots, load and learned speed;
//! units asked, placed, queued and finished; time from an agent's ask to its placement), and,
//! with the build queue, jobs by state (builds by result are the terminal states), build
//! durations, webhook deliveries and commit statuses. Built at each scrape from
//! [`FarmHandle`] and [`Ops`]; served by `discomy_protocol::plumbing::metrics`.

use std::sync::Arc;

use discomy_protocol::ops::JobState;
use discomy_protocol::plumbing::metrics::{Exposition, Labels, Render, label};

use crate::ops::Ops;
use crate::server::FarmHandle;

/// The render function of `--metrics-listen` and of the API's `/metrics` (both served by
/// `discomy_protocol::plumbing::metrics::router`).
pub fn renderer(farm: FarmHandle, ops: Option<Arc<Ops>>) -> Render {
    Arc::new(move || render(&farm, ops.as_deref()))
}

/// One scrape's text.
pub fn render(farm: &FarmHandle, ops: Option<&Ops>) -> String {
    let mut e = Exposition::new();
    add_farm(&mut e, farm);
    if let Some(ops) = ops {
        add_ops(&mut e, ops);
    }
    e.encode()
}

fn node_labels(n: &discomy_protocol::coordinator::NodeStatus) -> Labels {
    vec![label("node", n.address.clone()), label("host", n.host.clone())]
}

fn add_farm(e: &mut Exposition, farm: &FarmHandle) {
    let status = farm.status();
    let counters = farm.counters();
    e.gauge("discomy_coordinator_nodes", "Nodes in the farm now.", status.nodes.len() as f64);
    let per_node = |f: &dyn Fn(&discomy_protocol::coordinator::NodeStatus) -> f64| {
        status.nodes.iter().map(|n| (node_labels(n), f(n))).collect::<Vec<_>>()
    };
    e.gauges("discomy_node_slots", "Compile slots a node offers.", per_node(&|n| n.slots as f64));
    e.gauges("discomy_node_cores", "Cores a node reported.", per_node(&|n| n.cores as f64));
    e.gauges(
        "discomy_node_assigned_units",
        "Units placed on a node now (running and preloaded).",
        per_node(&|n| n.assigned as f64),
    );
    e.gauges(
        "discomy_node_running_units",
        "Units a node reported running in its last load report.",
        per_node(&|n| n.load.running as f64),
    );
    e.gauges(
        "discomy_node_foreign_load",
        "Load on a node from work other than the farm's (its last report).",
        per_node(&|n| n.load.foreign_load as f64),
    );
    e.gauges(
        "discomy_node_speed_bytes_per_second",
        "A node's learned speed: work bytes per wall second (0 until measured).",
        per_node(&|n| n.speed_wall_bps),
    );
    e.counters(
        "discomy_node_units_done",
        "Units finished on a node since it joined.",
        status.nodes.iter().map(|n| (node_labels(n), n.done_total)),
    );
    e.gauge("discomy_coordinator_queued_units", "Units waiting for a slot.", status.queued as f64);
    e.counter("discomy_coordinator_units_asked", "Units agents asked to place.", counters.asked);
    e.counters(
        "discomy_coordinator_placements",
        "Answers to agents' asks: a worker, or none (no node, or the agent's bound reached).",
        [
            (vec![label("result", "worker")], counters.placed),
            (vec![label("result", "no_worker")], counters.no_worker),
        ],
    );
    e.counters(
        "discomy_coordinator_units_done",
        "Placed units that ended, by whether the worker delivered.",
        [
            (vec![label("result", "ok")], counters.done_ok),
            (vec![label("result", "failed")], counters.done_failed),
        ],
    );
    e.histogram(
        "discomy_coordinator_queue_wait_seconds",
        "Time from an agent's ask to its placement.",
        &counters.queue_wait,
    );
    e.counter(
        "discomy_coordinator_hedged_units",
        "Second placements of stalled units.",
        status.hedged,
    );
    e.counter("discomy_coordinator_nodes_lost", "Nodes that left the farm.", status.nodes_lost);
    e.gauge(
        "discomy_coordinator_quarantined_workers",
        "Worker addresses quarantined after a verification mismatch.",
        status.quarantined.len() as f64,
    );
}

fn add_ops(e: &mut Exposition, ops: &Ops) {
    match ops.state_counts() {
        Ok(counts) => {
            let of =
                |state: JobState| counts.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
            e.gauges(
                "discomy_jobs",
                "Package build jobs by state (succeeded, failed and cancelled are builds by \
                 result).",
                JobState::ALL.iter().map(|s| (vec![label("state", s.as_str())], of(*s) as f64)),
            );
            e.gauge(
                "discomy_queue_depth",
                "Jobs waiting for a builder.",
                of(JobState::Waiting) as f64,
            );
        }
        Err(err) => tracing::warn!(%err, "metrics: the build queue could not be read"),
    }
    let snap = ops.counters.snapshot();
    e.counters(
        "discomy_webhook_deliveries",
        "Forge webhook deliveries by forge and HTTP status answered.",
        snap.webhooks.into_iter().map(|((forge, code), n)| {
            (vec![label("forge", forge), label("code", code.to_string())], n)
        }),
    );
    e.counters(
        "discomy_ci_notifications",
        "Commit statuses posted to forges, by result.",
        snap.notifications.into_iter().map(|(result, n)| (vec![label("result", result)], n)),
    );
    e.histogram_family(
        "discomy_build_duration_seconds",
        "Package builds from running to their end, by result.",
        &snap.durations,
    );
}
