//! The placement policy: pure state and decisions, no I/O, time passed in by the caller.
//!
//! The daemon and the simulator (`discomy-bench sim`) drive the same [`Scheduler`]:
//! nodes join ([`Scheduler::add_node`]), report load ([`Scheduler::report_load`]) and leave
//! ([`Scheduler::node_lost`]); jobs are submitted ([`Scheduler::submit`]), placed by
//! [`Scheduler::dispatch`], and finished with their measured times ([`Scheduler::finish`]).
//!
//! # How a job is placed
//! Every job gets an *estimated completion time* (ECT) on every eligible node:
//! the time its earliest slot frees (running and preloaded jobs' own estimates), plus its size
//! (bytes of the unit's own code) over the node's *effective speed*, plus a toolchain install
//! penalty when the node lacks the job's compiler (affinity). Effective speed is the learned
//! wall-time speed, discounted by foreign CPU load and slot fill; on the submitter's own host
//! it is raised for small builds and cut for large ones (the host must preprocess and link).
//! The job goes to the smallest ECT among nodes with room (a free slot, or preload room up to
//! `1 + slots/4`), unless a node without room would finish it much sooner, in which case it
//! waits in the queue (no long unit on a slow node at the end of a build).
//! Unmeasured and stale nodes are explored explicitly: a node with fewer than `min_samples`
//! samples gets only typical (median-sized) queued jobs, one more in flight than it has
//! samples; an idle stale node gets one such job.
//! A job that waits reserves the node it waits for: that node's next room is its own, so a
//! stream of smaller jobs cannot keep a long one (the critical path) off the fast nodes.
//! When nothing has room the job waits in a [`FairQueue`]: priority bands, round-robin between
//! submitters, largest job first within a submitter (longest-processing-time order).

mod clock;
mod queue;
mod speed;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};

pub use clock::{Clock, ManualClock, Millis, MonotonicClock};
pub use queue::FairQueue;
pub use speed::Speed;

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
    /// A job waits for a full node when the best node with room would finish it more than this
    /// factor later (measured from now).
    pub hold_factor: f64,
    /// Samples before a node's speed is trusted with large jobs.
    pub min_samples: u32,
    /// Weight of slot fill in the effective speed (SMT, clock ramping): `1 - w * fill`.
    pub fill_weight: f64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            default_bps: 1_000_000.0,
            stale_ms: 120_000,
            install_ms: 2_000.0,
            hold_factor: 1.3,
            min_samples: 3,
            fill_weight: 0.05,
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
}

/// `(node, placed at, estimated ms)`.
type Placed = (NodeId, Millis, f64);

#[derive(Debug, Clone)]
struct Job {
    spec: JobSpec,
    /// Set once placed.
    placed: Option<Placed>,
}

#[derive(Debug, Clone)]
struct Node {
    spec: NodeSpec,
    toolchains: HashSet<ToolchainKey>,
    load: LoadReport,
    last_seen: Millis,
    speed: Speed,
    /// Placed jobs, in placement order (running first, then preloaded).
    assigned: Vec<JobId>,
    /// A toolchain being installed: no other job needing an install goes here meanwhile.
    installing: Option<ToolchainKey>,
    exploring: bool,
    placed_total: u64,
    done_total: u64,
}

impl Node {
    fn preload_cap(&self) -> usize {
        1 + self.spec.slots as usize / 4
    }
    fn has_room(&self) -> bool {
        self.spec.slots > 0
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
    jobs: HashMap<JobId, Job>,
    queue: FairQueue,
    next_job: JobId,
    running_by_submitter: HashMap<String, usize>,
    /// Node → the held job that waits for it; no other job takes that node's room meanwhile.
    reserved: HashMap<NodeId, JobId>,
}

impl Scheduler {
    /// An empty farm.
    pub fn new(cfg: PolicyConfig) -> Scheduler {
        Scheduler { cfg, ..Scheduler::default() }
    }

    /// A node joins (or re-joins: its old state, and its jobs, are dropped first).
    pub fn add_node(&mut self, id: NodeId, spec: NodeSpec, now: Millis) -> Vec<JobId> {
        let requeued = self.node_lost(id, now);
        let toolchains = spec.toolchains.iter().copied().collect();
        let node = Node {
            spec,
            toolchains,
            load: LoadReport::default(),
            last_seen: now,
            speed: Speed::default(),
            assigned: Vec::new(),
            installing: None,
            exploring: false,
            placed_total: 0,
            done_total: 0,
        };
        self.nodes.insert(id, node);
        requeued
    }

    /// A node's load report; also proves it alive.
    pub fn report_load(&mut self, id: NodeId, load: LoadReport, now: Millis) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.load = load;
            n.last_seen = now;
        }
    }

    /// A node now holds `toolchain` (it installed one).
    pub fn add_toolchain(&mut self, id: NodeId, toolchain: ToolchainKey) {
        if let Some(n) = self.nodes.get_mut(&id) {
            n.toolchains.insert(toolchain);
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
        self.reserved.remove(&id);
        let Some(node) = self.nodes.remove(&id) else { return Vec::new() };
        let mut requeued = Vec::new();
        for job_id in node.assigned.iter().rev() {
            if let Some(job) = self.jobs.get_mut(job_id) {
                job.placed = None;
                let s = &job.spec;
                if let Some(r) = self.running_by_submitter.get_mut(&s.submitter) {
                    *r = r.saturating_sub(1);
                }
                self.queue.push(s.priority, &s.submitter, *job_id, true);
                requeued.push(*job_id);
            }
        }
        requeued
    }

    /// Queues a job; [`Scheduler::dispatch`] places it.
    pub fn submit(&mut self, spec: JobSpec) -> JobId {
        self.next_job += 1;
        let id = self.next_job;
        self.queue.push(spec.priority, &spec.submitter, id, false);
        self.jobs.insert(id, Job { spec, placed: None });
        id
    }

    /// Withdraws a job, queued or placed, without learning from it.
    pub fn cancel(&mut self, job: JobId) {
        self.remove_job(job);
    }

    /// A placed job ended; a successful one teaches its node's speed.
    pub fn finish(&mut self, job: JobId, stats: JobStats, now: Millis) {
        let Some((spec, placed)) = self.remove_job(job) else { return };
        let Some((node_id, _, _)) = placed else { return };
        if let Some(n) = self.nodes.get_mut(&node_id) {
            n.done_total += 1;
            n.exploring = false;
            if stats.ok {
                n.speed.add(spec.work(), stats.wall_ms, stats.cpu_ms, now);
                n.toolchains.insert(spec.toolchain);
            }
            if n.installing == Some(spec.toolchain) {
                n.installing = None;
            }
        }
    }

    fn remove_job(&mut self, job: JobId) -> Option<(JobSpec, Option<Placed>)> {
        let j = self.jobs.remove(&job)?;
        self.reserved.retain(|_, r| *r != job);
        match j.placed {
            Some((node, _, _)) => {
                if let Some(n) = self.nodes.get_mut(&node) {
                    n.assigned.retain(|x| *x != job);
                }
                if let Some(r) = self.running_by_submitter.get_mut(&j.spec.submitter) {
                    *r = r.saturating_sub(1);
                }
            }
            None => self.queue.take(j.spec.priority, &j.spec.submitter, job),
        }
        Some((j.spec, j.placed))
    }

    /// Places as many queued jobs as the farm has room for, fairly.
    pub fn dispatch(&mut self, now: Millis) -> Vec<Assignment> {
        let mut out = Vec::new();
        if self.queue.is_empty() {
            return out;
        }
        // Speeds only change in `finish`: one scan serves the whole dispatch.
        let reference = self.reference_bps();
        loop {
            let mut placed_any = false;
            for (prio, submitter) in self.queue.order() {
                let Some(a) = self.place_one(prio, &submitter, now, reference) else { continue };
                out.push(a);
                placed_any = true;
                // One job per turn: go back to the (rotated) service order.
                break;
            }
            if !placed_any {
                return out;
            }
        }
    }

    /// Picks one job of this submitter and a node for it, or nothing.
    fn place_one(
        &mut self,
        prio: u8,
        submitter: &str,
        now: Millis,
        reference: f64,
    ) -> Option<Assignment> {
        let queued: Vec<(JobId, u64, ToolchainKey)> = self
            .queue
            .jobs_of(prio, submitter)
            .iter()
            .filter_map(|id| self.jobs.get(id).map(|j| (*id, j.spec.work(), j.spec.toolchain)))
            .collect();
        if queued.is_empty() {
            return None;
        }
        // Exploration first: a learning or stale node gets a typical job.
        if let Some(a) = self.explore(&queued, now) {
            self.commit(a, now, reference);
            return Some(a);
        }
        // Largest job first (LPT), then the next ones if the largest must wait.
        let mut by_size = queued.clone();
        by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (job, _, _) in by_size {
            if let Some(a) = self.best_node(job, now, reference) {
                self.commit(a, now, reference);
                return Some(a);
            }
        }
        None
    }

    fn explore(&self, queued: &[(JobId, u64, ToolchainKey)], now: Millis) -> Option<Assignment> {
        for (id, n) in &self.nodes {
            if !n.has_room()
                || n.assigned.len() >= n.spec.slots as usize
                || self.reserved.contains_key(id)
            {
                continue;
            }
            // Still learning: up to one more small job in flight than samples taken.
            let learning = n.speed.samples < self.cfg.min_samples
                && n.assigned.len() <= n.speed.samples as usize;
            // Stale: one job when idle.
            let stale = n.assigned.is_empty()
                && !n.exploring
                && n.speed.needs_exploring(now, self.cfg.stale_ms);
            if !learning && !stale {
                continue;
            }
            // A typical job (the median of the queue): tiny units are dominated by start-up
            // costs and would teach a misleading speed; the largest risk the build's end.
            let mut fits: Vec<_> = queued
                .iter()
                .filter(|(_, _, tc)| n.toolchains.contains(tc) || n.installing.is_none())
                .collect();
            fits.sort_by_key(|(job, work, _)| (*work, *job));
            let fits = fits.get(fits.len() / 2);
            if let Some((job, _, tc)) = fits {
                let install = !n.toolchains.contains(tc);
                return Some(Assignment {
                    job: *job,
                    node: *id,
                    preload: false,
                    install,
                    explore: true,
                });
            }
        }
        None
    }

    /// The node with the earliest estimated completion for `job`, or `None` when it should
    /// wait (nothing has room, or a full node would do much better).
    fn best_node(&mut self, job: JobId, now: Millis, reference: f64) -> Option<Assignment> {
        let spec = &self.jobs.get(&job)?.spec;
        let mut best_room: Option<(f64, NodeId, bool, bool)> = None;
        let mut best_any: (f64, Option<NodeId>) = (f64::INFINITY, None);
        for (id, n) in &self.nodes {
            if self.reserved.get(id).is_some_and(|j| *j != job) {
                continue;
            }
            if n.spec.slots == 0 || n.load.foreign_load >= 1000 {
                continue;
            }
            let install = !n.toolchains.contains(&spec.toolchain);
            if install && n.installing.is_some() {
                continue;
            }
            let (start, preload) = self.slot_free_at(n, now, reference);
            let bps = self.effective_bps(n, spec, reference);
            let mut ect = start + spec.work() as f64 * 1000.0 / bps;
            if install {
                ect += self.cfg.install_ms;
            }
            // A node still learning its speed takes only small exploration jobs (above).
            if n.speed.samples < self.cfg.min_samples {
                continue;
            }
            // Waiting only makes sense for a node with work that will end.
            if ect < best_any.0 && !n.assigned.is_empty() {
                best_any = (ect, Some(*id));
            }
            if n.has_room() && best_room.is_none_or(|(e, ..)| ect < e) {
                best_room = Some((ect, *id, preload, install));
            }
        }
        let now_f = now as f64;
        let hold = match best_room {
            None => true,
            Some((ect, ..)) => {
                best_any.1.is_some()
                    && ect - now_f > self.cfg.hold_factor * (best_any.0 - now_f).max(1.0)
            }
        };
        if hold {
            // Wait for the node that would finish it soonest, and keep its next room for it.
            if let Some(target) = best_any.1
                && !self.reserved.contains_key(&target)
            {
                self.reserved.retain(|_, j| *j != job);
                self.reserved.insert(target, job);
            }
            return None;
        }
        let (_, node, preload, install) = best_room?;
        Some(Assignment { job, node, preload, install, explore: false })
    }

    /// Speed of the fastest measured node (the optimistic guess for unmeasured ones).
    fn reference_bps(&self) -> f64 {
        self.nodes
            .values()
            .filter(|n| n.speed.samples > 0)
            .map(|n| n.speed.wall_bps)
            .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s))))
            .unwrap_or(self.cfg.default_bps)
    }

    fn effective_bps(&self, n: &Node, spec: &JobSpec, reference: f64) -> f64 {
        let mut bps = if n.speed.samples < self.cfg.min_samples {
            n.speed.wall_bps.max(reference)
        } else {
            n.speed.wall_bps
        };
        let fill = n.assigned.len().min(n.spec.slots as usize) as f64 / n.spec.slots.max(1) as f64;
        bps *= 1.0 - self.cfg.fill_weight * fill;
        if n.spec.host == spec.submitter {
            // The submitter's own host: its load is its own build. Small builds stay home;
            // large ones leave it room to preprocess and link.
            let mine = self.running_by_submitter.get(&spec.submitter).copied().unwrap_or(0);
            let slots = n.spec.slots as usize;
            bps *= if mine <= slots / 2 {
                1.1
            } else if mine <= slots {
                0.8
            } else {
                0.1
            };
        } else {
            bps *= (1000.0 - f64::from(n.load.foreign_load.min(999))) / 1000.0;
        }
        bps.max(1.0)
    }

    /// When the node's next slot frees for a new job (estimates of placed jobs), and whether
    /// the job would be preloaded (all slots taken now).
    fn slot_free_at(&self, n: &Node, now: Millis, reference: f64) -> (f64, bool) {
        let slots = n.spec.slots.max(1) as usize;
        let now_f = now as f64;
        if n.assigned.len() < slots {
            return (now_f, false); // a slot is free now
        }
        let mut free = vec![now_f; slots];
        for job_id in &n.assigned {
            let Some(job) = self.jobs.get(job_id) else { continue };
            let Some((_, at, est)) = job.placed else { continue };
            let i = argmin(&free);
            let start = free[i].max(at as f64);
            // A job past its estimate is assumed to end a little later, not now.
            let end = (start + est).max(now_f + est * 0.1);
            free[i] = end;
        }
        let _ = reference;
        (free[argmin(&free)], n.assigned.len() >= slots)
    }

    fn commit(&mut self, a: Assignment, now: Millis, reference: f64) {
        self.reserved.retain(|_, j| *j != a.job);
        let Some(job) = self.jobs.get(&a.job) else { return };
        let spec = job.spec.clone();
        let Some(n) = self.nodes.get(&a.node) else { return };
        let mut est = spec.work() as f64 * 1000.0 / self.effective_bps(n, &spec, reference);
        if a.install {
            est += self.cfg.install_ms;
        }
        self.queue.take(spec.priority, &spec.submitter, a.job);
        if let Some(job) = self.jobs.get_mut(&a.job) {
            job.placed = Some((a.node, now, est));
        }
        *self.running_by_submitter.entry(spec.submitter.clone()).or_default() += 1;
        if let Some(n) = self.nodes.get_mut(&a.node) {
            n.assigned.push(a.job);
            n.placed_total += 1;
            if a.explore {
                n.exploring = true;
            }
            if a.install {
                n.installing = Some(spec.toolchain);
            }
        }
    }

    /// Where a placed job runs.
    pub fn placement(&self, job: JobId) -> Option<NodeId> {
        self.jobs.get(&job).and_then(|j| j.placed.map(|p| p.0))
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

fn argmin(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x < v[best] {
            best = i;
        }
    }
    best
}
