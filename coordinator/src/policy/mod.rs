//! The placement policy: pure state and decisions, no I/O, time passed in by the caller.
//!
//! The daemon and the simulator (`discomy-bench sim`) drive the same [`Scheduler`]:
//! nodes join ([`Scheduler::add_node`]), report load ([`Scheduler::report_load`]) and leave
//! ([`Scheduler::node_lost`]); jobs are submitted ([`Scheduler::submit`]), placed by
//! [`Scheduler::dispatch`], and finished with their measured times ([`Scheduler::finish`]).
//!
//! # How a job is placed
//! A job's cost estimate is what its unit cost the last times ([`CostHistory`], keyed by the
//! agent's unit key: source name, arguments, compiler), else the agent's size estimate (bytes of
//! the unit's own code). Node rates and unit costs are learned together from finished jobs'
//! compile times ([`Fit`]): a size estimate hides a tenfold spread of cost per byte between
//! units, so neither can be learned alone. Each node also learns the wall time its jobs spend
//! outside the compiler per byte shipped (transfer, set-up).
//! [`Scheduler::dispatch`] first explores: a node with fewer than `min_samples` samples gets
//! only typical (median-cost) queued jobs, one more in flight than it has samples; an idle node
//! with a stale estimate gets one such job. Then it plans the queue in service order (priority
//! bands, submitters round-robin, largest cost first within a submitter) with earliest finish
//! time: each job goes where it would finish first, counting when that node's next slot frees
//! (from its placed jobs' estimates), the transfer overhead, its effective rate (foreign load,
//! slot fill, and on the submitter's own host ×1.1 for a small build, ×0.8 when its slots are
//! full, ×0.1 beyond), and an install penalty when it lacks the compiler (affinity; one install
//! at a time per node). A job whose best node is full is preloaded there within `1 + slots/4`,
//! else it waits and that node's next slot counts as its own for the rest of the plan, so
//! smaller jobs cannot take the room the long one waits for. A full farm queues, it does not
//! refuse.

mod clock;
mod fit;
mod hedge;
mod history;
mod ids;
mod index;
mod plan;
mod queue;
mod speed;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

pub use clock::{Clock, ManualClock, Millis, MonotonicClock};
pub use fit::{Fit, Fitted, Obs};
pub use history::{CostHistory, UnitKey};
pub use ids::{IdHasher, IdMap};
pub use queue::FairQueue;
pub use speed::{Sample, Speed, cpu_share, learning_share};

/// A node's id, given by the caller.
pub type NodeId = u64;
/// A job's id, given by the scheduler.
pub type JobId = u64;
/// A compiler identity (the toolchain manifest digest).
pub type ToolchainKey = [u8; 32];

/// Tunables. The defaults are what the daemon uses and what the simulator checks.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// Speed assumed when no node has been measured yet, bytes per second.
    pub default_bps: f64,
    /// Estimate age after which an idle node is explored again.
    pub stale_ms: Millis,
    /// Estimated cost of installing a toolchain on a node that lacks it.
    pub install_ms: f64,
    /// Samples before a node's speed is trusted with large jobs.
    pub min_samples: u32,
    /// Weight of slot fill in the effective speed (SMT, clock ramping): `1 - w * fill`.
    pub fill_weight: f64,
    /// A node whose first-due running job is `hedge_factor` times its estimate plus
    /// `hedge_grace_ms` late, with nothing finished meanwhile, is stalled: it gets no new jobs
    /// and its jobs are hedged (see `hedge.rs`). 0 turns hedging off.
    pub hedge_factor: f64,
    /// See `hedge_factor`.
    pub hedge_grace_ms: f64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            default_bps: 1_000_000.0,
            stale_ms: 120_000,
            install_ms: 2_000.0,
            min_samples: 3,
            fill_weight: 0.05,
            hedge_factor: 2.0,
            hedge_grace_ms: 50.0,
        }
    }
}

/// What a node tells about itself when it joins.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// For status and logs.
    pub name: String,
    /// The host it runs on; jobs whose submitter is this host are local to it.
    pub host: String,
    /// Concurrent compiles it accepts.
    pub slots: u32,
    /// CPU cores.
    pub cores: u32,
    /// Memory, MiB.
    pub memory_mb: u64,
    /// Compilers it already holds.
    pub toolchains: Vec<ToolchainKey>,
}

/// A node's periodic load report.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadReport {
    /// CPU load not caused by the farm's own units, 0–1000 (1000: take nothing).
    pub foreign_load: u16,
    /// Units running on the node, as it counts them.
    pub running: u32,
    /// Free memory, MiB.
    pub free_mem_mb: u64,
    /// Free disk in its work directory, MiB.
    pub free_disk_mb: u64,
}

/// One unit to place.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The submitting host (also its agent's identity).
    pub submitter: String,
    /// Build priority, 0 first.
    pub priority: u8,
    /// The compiler it needs.
    pub toolchain: ToolchainKey,
    /// Size of the preprocessed unit (what travels).
    pub bytes_in: u64,
    /// Estimated work: bytes of the unit that come from its main file (headers dominate the
    /// preprocessed size but not the compile time). 0: unknown, `bytes_in` is used.
    pub work: u64,
    /// The agent's key for the unit (source name, arguments, compiler), under which the cost
    /// history remembers what it cost before; 0: none.
    pub unit: UnitKey,
}

impl JobSpec {
    /// The work estimate the speeds are measured in.
    pub fn work(&self) -> u64 {
        if self.work > 0 { self.work } else { self.bytes_in }
    }
}

/// How a job ended, as measured by the one who ran it.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobStats {
    /// It compiled (the compiler ran; its own verdict does not matter for speed).
    pub ok: bool,
    /// Submit-to-result wall time, transfer included.
    pub wall_ms: u64,
    /// Compiler CPU time on the node.
    pub cpu_ms: u64,
    /// Bytes of object returned.
    pub bytes_out: u64,
}

/// A placement decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    /// The job.
    pub job: JobId,
    /// Where it runs.
    pub node: NodeId,
    /// The node's slots were full: the job waits there for a slot.
    pub preload: bool,
    /// The node must install the toolchain first.
    pub install: bool,
    /// Chosen to measure an unmeasured or stale node.
    pub explore: bool,
    /// A twin of this placed job, whose node has stalled: the submitter runs both and keeps
    /// the first to finish.
    pub hedge_of: Option<JobId>,
}

#[derive(Debug, Clone)]
struct Job {
    spec: JobSpec,
    /// The cost estimate: the history's, else the agent's size estimate (work units).
    work: f64,
    /// The cost came from the history (the unit ran before), not from its size.
    known: bool,
    /// The node, once placed.
    placed: Option<NodeId>,
    /// Its hedge twin (either way), while both exist.
    twin: Option<JobId>,
    /// This job is the twin, made for the job it names.
    hedge_of: Option<JobId>,
    /// Hedged once already (a job gets at most one twin).
    hedged: bool,
}

/// A job placed on a node.
#[derive(Debug, Clone, Copy)]
struct Slot {
    job: JobId,
    /// When it was placed.
    at: Millis,
    /// Its estimated time there, ms.
    est: f64,
    /// The estimate rests on the unit's measured cost (hedging judges only such jobs).
    known: bool,
}

/// Most toolchains remembered per node: a node (or anyone with the farm token) may claim any
/// number, and each placement asks every candidate node whether it holds the unit's compiler.
pub const MAX_TOOLCHAINS_PER_NODE: usize = 4096;

#[derive(Debug, Clone)]
struct Node {
    spec: NodeSpec,
    /// Compilers it holds, sorted (at most [`MAX_TOOLCHAINS_PER_NODE`]).
    toolchains: Vec<ToolchainKey>,
    load: LoadReport,
    last_seen: Millis,
    speed: Speed,
    /// Placed jobs, in placement order (running first, then preloaded).
    assigned: Vec<Slot>,
    /// A toolchain being installed: no other job needing an install goes here meanwhile.
    installing: Option<ToolchainKey>,
    exploring: bool,
    /// Its rate from the last joint fit of rates and unit costs.
    fitted_bps: Option<f64>,
    /// Its host is a submitter's (its rate bound includes the submitter factor's best).
    submitters_host: bool,
    /// Where the index filed it.
    keys: index::Keys,
    placed_total: u64,
    done_total: u64,
    /// When it last finished a job, or went from idle to busy.
    progress_at: Millis,
    /// No progress for far longer than its jobs should take: no new jobs until it finishes one,
    /// or until it has no jobs left and reports after `stalled_at`.
    stalled: bool,
    /// When it was found stalled.
    stalled_at: Millis,
}

impl Node {
    fn holds(&self, toolchain: &ToolchainKey) -> bool {
        self.toolchains.binary_search(toolchain).is_ok()
    }
    fn add_toolchain(&mut self, toolchain: ToolchainKey) {
        if let Err(at) = self.toolchains.binary_search(&toolchain) {
            if self.toolchains.len() < MAX_TOOLCHAINS_PER_NODE {
                self.toolchains.insert(at, toolchain);
            }
        }
    }
    /// Work per second of compile time with the CPU to itself: the last fit's, else the
    /// running estimate's.
    fn rate_bps(&self) -> f64 {
        self.fitted_bps.unwrap_or(self.speed.rate_bps)
    }
    fn preload_cap(&self) -> usize {
        1 + self.spec.slots as usize / 4
    }
    fn has_room(&self) -> bool {
        !self.stalled
            && self.spec.slots > 0
            && self.load.foreign_load < 1000
            && self.assigned.len() < self.spec.slots as usize + self.preload_cap()
    }
}

/// A node as the status view shows it.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// Its id.
    pub id: NodeId,
    /// What it said at login.
    pub spec: NodeSpec,
    /// Its last load report.
    pub load: LoadReport,
    /// Learned speed.
    pub speed: Speed,
    /// Jobs placed there now (running and preloaded).
    pub assigned: usize,
    /// Jobs placed there since it joined.
    pub placed_total: u64,
    /// Jobs finished there since it joined.
    pub done_total: u64,
}

/// A submitter as the status view shows it.
#[derive(Debug, Clone, Default)]
pub struct SubmitterView {
    /// Its host.
    pub name: String,
    /// Placed jobs.
    pub running: usize,
    /// Queued jobs.
    pub queued: usize,
}

/// The farm's state and its placement decisions.
#[derive(Debug, Default)]
pub struct Scheduler {
    cfg: PolicyConfig,
    nodes: BTreeMap<NodeId, Node>,
    jobs: ids::IdMap<Job>,
    queue: FairQueue,
    next_job: JobId,
    running_by_submitter: HashMap<String, usize>,
    /// What units cost before.
    history: CostHistory,
    /// Recent finished jobs, for the joint fit of node rates and unit costs.
    fit: Fit,
    /// Reused by each dispatch for the queue's service order.
    order_buf: Vec<JobId>,
    /// When dispatch next looks for stalled nodes.
    next_hedge_check: Millis,
    /// How late finished jobs have been lately: a moving average of wall time over estimate
    /// (1 when estimates hold; hedging waits this much longer).
    lateness: hedge::Lateness,
    /// Plannable nodes by rate bound.
    index: index::NodeIndex,
}

impl Scheduler {
    /// An empty farm.
    pub fn new(cfg: PolicyConfig) -> Scheduler {
        Scheduler { cfg, ..Scheduler::default() }
    }

    /// A node joins (or re-joins: its old state, and its jobs, are dropped first).
    pub fn add_node(&mut self, id: NodeId, spec: NodeSpec, now: Millis) -> Vec<JobId> {
        let requeued = self.node_lost(id, now);
        let mut toolchains = spec.toolchains.clone();
        toolchains.sort_unstable();
        toolchains.dedup();
        toolchains.truncate(MAX_TOOLCHAINS_PER_NODE);
        let submitters_host = self.running_by_submitter.contains_key(&spec.host);
        let node = Node {
            spec,
            toolchains,
            load: LoadReport::default(),
            last_seen: now,
            speed: Speed::default(),
            assigned: Vec::new(),
            installing: None,
            exploring: false,
            fitted_bps: None,
            submitters_host,
            keys: index::Keys::default(),
            placed_total: 0,
            done_total: 0,
            progress_at: now,
            stalled: false,
            stalled_at: 0,
        };
        self.nodes.insert(id, node);
        self.reindex(id);
        requeued
    }

    /// A node's load report; also proves it alive. Whether it changed what placements use
    /// (the foreign load), so the caller knows a dispatch could place more.
    pub fn report_load(&mut self, id: NodeId, load: LoadReport, now: Millis) -> bool {
        let Some(n) = self.nodes.get_mut(&id) else { return false };
        let refile = n.load.foreign_load != load.foreign_load;
        n.load = load;
        n.last_seen = now;
        // A stalled node whose jobs all went elsewhere, and which is alive after all: work again.
        let revived = n.stalled && n.assigned.is_empty() && now > n.stalled_at;
        if revived {
            n.stalled = false;
        }
        // Only the foreign load bears on the index (most reports only prove the node alive).
        if refile || revived {
            self.reindex(id);
        }
        refile
    }

    /// Files a node anew in the plan's index after it changed.
    fn reindex(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.get_mut(&id) {
            self.index.update(id, n, &self.cfg);
        }
    }

    /// A node now holds `toolchain` (it installed one).
    pub fn add_toolchain(&mut self, id: NodeId, toolchain: ToolchainKey) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.add_toolchain(toolchain);
            if n.installing == Some(toolchain) {
                n.installing = None;
            }
        }
    }

    /// When the node last reported.
    pub fn last_seen(&self, id: NodeId) -> Option<Millis> {
        self.nodes.get(&id).map(|n| n.last_seen)
    }

    /// Nodes not heard from since `deadline`.
    pub fn silent_since(&self, deadline: Millis) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, n)| n.last_seen < deadline).map(|(id, _)| *id).collect()
    }

    /// A node is gone: it is forgotten, and its jobs go back to the front of their queues
    /// (returned, so a caller that cannot re-place them can cancel them).
    pub fn node_lost(&mut self, id: NodeId, _now: Millis) -> Vec<JobId> {
        if let Some(n) = self.nodes.get_mut(&id) {
            self.index.remove(id, n);
        }
        let Some(node) = self.nodes.remove(&id) else { return Vec::new() };
        let mut requeued = Vec::new();
        for slot in &node.assigned {
            if self.jobs.get(&slot.job).is_some_and(|j| j.twin.is_some()) {
                // Its twin carries on elsewhere.
                self.remove_job(slot.job);
                requeued.push(slot.job);
                continue;
            }
            if let Some(job) = self.jobs.get_mut(&slot.job) {
                job.placed = None;
                let s = &job.spec;
                if let Some(r) = self.running_by_submitter.get_mut(&s.submitter) {
                    *r = r.saturating_sub(1);
                }
                self.queue.push(s.priority, &s.submitter, slot.job, job.work);
                requeued.push(slot.job);
            }
        }
        requeued
    }

    /// Queues a job; [`Scheduler::dispatch`] places it.
    pub fn submit(&mut self, spec: JobSpec) -> JobId {
        self.next_job += 1;
        let id = self.next_job;
        let known_cost = self.history.estimate(spec.unit);
        let work = known_cost.unwrap_or(spec.work() as f64);
        self.queue.push(spec.priority, &spec.submitter, id, work);
        // Known submitters (their hosts get the submitter factor in the plan).
        if !self.running_by_submitter.contains_key(&spec.submitter) {
            self.running_by_submitter.insert(spec.submitter.clone(), 0);
            let homes: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|(_, n)| n.spec.host == spec.submitter)
                .map(|(id, _)| *id)
                .collect();
            for id in homes {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.submitters_host = true;
                }
                self.reindex(id);
            }
        }
        let job = Job {
            spec,
            work,
            known: known_cost.is_some(),
            placed: None,
            twin: None,
            hedge_of: None,
            hedged: false,
        };
        self.jobs.insert(id, job);
        id
    }

    /// Withdraws a job, queued or placed, without learning from it. (Its twin, if any, stays:
    /// cancelling a twin the submitter could not be told of leaves the original running.)
    pub fn cancel(&mut self, job: JobId) {
        self.remove_job(job);
    }

    /// A placed job ended; a successful one teaches its node's speed and the unit's cost.
    pub fn finish(&mut self, job: JobId, stats: JobStats, now: Millis) {
        // A failed copy leaves its twin running; a successful one withdraws it.
        let twin = self.jobs.get(&job).and_then(|j| j.twin).filter(|_| stats.ok);
        if stats.ok {
            self.learn_lateness(job, stats.wall_ms);
        }
        let Some((spec, work, placed)) = self.remove_job(job) else { return };
        self.drop_twin(twin);
        let Some(node_id) = placed else { return };
        if let Some(n) = self.nodes.get_mut(&node_id) {
            n.done_total += 1;
            n.progress_at = now;
            n.stalled = false;
            n.exploring = false;
            if stats.ok {
                let full_ms = stats.cpu_ms as f64 * learning_share(n.load.foreign_load);
                // A unit seen for the first time: its cost at this node's rate as the other jobs
                // taught it (this one would make any cost look typical), until the next fit.
                if n.speed.samples > 0 && self.history.estimate(spec.unit).is_none() {
                    self.history.learn(spec.unit, full_ms / 1000.0 * n.rate_bps());
                }
                let size = spec.work() as f64;
                self.fit.add(Obs { unit: spec.unit, node: node_id, size, full_ms });
                let sample = Sample {
                    work,
                    bytes_in: spec.bytes_in,
                    wall_ms: stats.wall_ms,
                    cpu_ms: stats.cpu_ms,
                    foreign_load: n.load.foreign_load,
                };
                n.speed.add(&sample, now);
                n.add_toolchain(spec.toolchain);
            }
            if n.installing == Some(spec.toolchain) {
                n.installing = None;
            }
        }
        if self.fit.due() {
            let fitted = self.fit.solve();
            for (unit, cost) in fitted.costs {
                self.history.set(unit, cost);
            }
            for (id, rate) in fitted.rates {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.fitted_bps = Some(rate);
                }
                self.reindex(id);
            }
        }
        self.reindex(node_id);
    }

    fn remove_job(&mut self, job: JobId) -> Option<(JobSpec, f64, Option<NodeId>)> {
        let j = self.jobs.remove(&job)?;
        if let Some(t) = j.twin.and_then(|t| self.jobs.get_mut(&t)) {
            t.twin = None;
        }
        match j.placed {
            Some(node) => {
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.assigned.retain(|s| s.job != job);
                    // Its jobs were withdrawn (their twins won): if it has reported since it
                    // stalled, it is alive and may have work again (judged afresh); a stopped or
                    // dead one stays out until it reports, or the liveness deadline.
                    if n.assigned.is_empty() && n.last_seen > n.stalled_at {
                        n.stalled = false;
                    }
                }
                self.reindex(node);
                if let Some(r) = self.running_by_submitter.get_mut(&j.spec.submitter) {
                    *r = r.saturating_sub(1);
                }
            }
            None => self.queue.take(j.spec.priority, &j.spec.submitter, job),
        }
        Some((j.spec, j.work, j.placed))
    }

    /// The job is waiting in the queue (not placed, not finished).
    pub fn is_queued(&self, job: JobId) -> bool {
        self.jobs.get(&job).is_some_and(|j| j.placed.is_none())
    }

    /// The build host that submitted a job.
    pub fn submitter_of(&self, job: JobId) -> Option<String> {
        self.jobs.get(&job).map(|j| j.spec.submitter.clone())
    }

    /// Where a placed job runs.
    pub fn placement(&self, job: JobId) -> Option<NodeId> {
        self.jobs.get(&job).and_then(|j| j.placed)
    }

    /// Jobs waiting for room.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Nodes in the farm.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The nodes, for status.
    pub fn nodes(&self) -> Vec<NodeView> {
        self.nodes
            .iter()
            .map(|(id, n)| NodeView {
                id: *id,
                spec: n.spec.clone(),
                load: n.load,
                speed: n.speed.clone(),
                assigned: n.assigned.len(),
                placed_total: n.placed_total,
                done_total: n.done_total,
            })
            .collect()
    }

    /// Per submitter: placed and queued jobs, for status.
    pub fn submitters(&self) -> Vec<SubmitterView> {
        let mut map: BTreeMap<String, SubmitterView> = BTreeMap::new();
        for j in self.jobs.values() {
            let e = map.entry(j.spec.submitter.clone()).or_default();
            e.name = j.spec.submitter.clone();
            if j.placed.is_some() {
                e.running += 1;
            } else {
                e.queued += 1;
            }
        }
        map.into_values().collect()
    }
}
