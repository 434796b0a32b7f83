//! The discrete-event engine: a virtual clock, submit/finish/failure events, node slots with
//! preload, transfers over each node's link, builds that wait on other builds (a package's
//! build-order dependencies) with serial parts before and after their compile units, and the
//! lower bound of a run.
//!
//! [`simulate`] replays the builds twice with the same policy object: a warm-up replay on the
//! fleet without its failure (yesterday's rebuild of the same packages), then, [`GAP_S`] later,
//! the measured replay. Every policy keeps what it learned in the warm-up (discomy: node speeds
//! and per-unit costs from the measured times of finished jobs; icecream: its speed statistics;
//! the others learn nothing). No policy ever sees a unit's CPU seconds from the trace.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::fleet::SimNode;
use super::workload::SimBuild;

/// How long a dead node takes to be noticed (the daemon's liveness bound is 3 s).
pub const DETECT_S: f64 = 1.0;
/// Idle time between the warm-up replay and the measured one.
pub const GAP_S: f64 = 5.0;

/// A unit as the policy sees it (no CPU time: that is what it must learn).
#[derive(Debug, Clone)]
pub struct JobInfo {
    /// Submitting host.
    pub submitter: String,
    /// Preprocessed size.
    pub bytes_in: u64,
    /// Main-file bytes (the work estimate).
    pub work: u64,
    /// The unit's key (the same unit in every build and replay has the same key).
    pub unit: u64,
}

/// What a policy sees of a node.
#[derive(Debug, Clone)]
pub struct NodeState {
    /// Still in the farm (as far as the farm knows).
    pub alive: bool,
    /// Slots.
    pub slots: u32,
    /// Jobs assigned (running and preloaded).
    pub assigned: usize,
    /// Foreign load it reports.
    pub foreign_load: u16,
    /// Its host.
    pub host: String,
    /// It sends load reports (every second, as workers do): false from the moment it dies,
    /// while `alive` stays true until the farm notices.
    pub reporting: bool,
}

/// A placement policy under simulation.
pub trait SimPolicy {
    /// A job is submitted.
    fn submit(&mut self, job: usize, info: &JobInfo, now_ms: u64);
    /// Places what it can: `(job, node)` pairs.
    fn dispatch(&mut self, nodes: &[NodeState], now_ms: u64) -> Vec<(usize, usize)>;
    /// A job finished on `node`: wall ms (transfer included), cpu ms, bytes out.
    fn finish(
        &mut self,
        job: usize,
        node: usize,
        wall_ms: u64,
        cpu_ms: u64,
        bytes_out: u64,
        now_ms: u64,
    );
    /// A node is gone; its jobs must be placed again.
    fn node_lost(&mut self, node: usize, now_ms: u64);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A build's dependencies are done and its serial part before the units has run.
    Ready(usize),
    Submit(usize),
    /// (node, job, placement id)
    Finish(usize, usize, u64),
    /// A build's last unit finished and its serial part after the units has run.
    BuildDone(usize),
    Down(usize),
    Detect(usize),
}

struct Job {
    build: usize,
    unit: usize,
    placements: Vec<(usize, u64)>,
    done: bool,
}

fn us(s: f64) -> u64 {
    (s * 1e6).round().max(0.0) as u64
}

/// Result of one run.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// When the last build finished (its serial part after the units included).
    pub makespan_s: f64,
}

/// Effective speed of a node under its foreign load.
pub fn effective_speed(n: &SimNode) -> f64 {
    n.speed * (1.0 - f64::from(n.foreign_load.min(990)) / 1000.0)
}

/// Runs every build over `nodes` with `policy`: a warm-up replay on the fleet without failures
/// (unless `cold`), then the measured one (whose makespan is returned).
pub fn simulate(
    builds: &[SimBuild],
    nodes: &[SimNode],
    policy: &mut dyn SimPolicy,
    cold: bool,
) -> Outcome {
    if cold {
        return replay(builds, nodes, policy, 0.0);
    }
    simulate_after(builds, builds, nodes, policy)
}

/// Replays `warm_up` on the fleet without failures, then, [`GAP_S`] later, `builds` (whose
/// makespan is returned): the policy keeps what it learned in the warm-up.
pub fn simulate_after(
    warm_up: &[SimBuild],
    builds: &[SimBuild],
    nodes: &[SimNode],
    policy: &mut dyn SimPolicy,
) -> Outcome {
    let healthy: Vec<SimNode> =
        nodes.iter().map(|n| SimNode { fails_at_s: None, ..n.clone() }).collect();
    let warm = replay(warm_up, &healthy, policy, 0.0);
    if !warm.makespan_s.is_finite() {
        return warm;
    }
    replay(builds, nodes, policy, warm.makespan_s + GAP_S)
}

/// The builds waiting on each build.
fn dependents(builds: &[SimBuild]) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); builds.len()];
    for (b, build) in builds.iter().enumerate() {
        for &d in &build.deps {
            if let Some(list) = out.get_mut(d) {
                list.push(b);
            }
        }
    }
    out
}

/// One replay of every build starting at `t0_s`; the makespan is counted from `t0_s`. Builds
/// whose dependencies never finish (a cycle, a dependency out of range) leave the run
/// unfinished: an infinite makespan.
fn replay(
    builds: &[SimBuild],
    nodes: &[SimNode],
    policy: &mut dyn SimPolicy,
    t0_s: f64,
) -> Outcome {
    let mut jobs = Vec::new();
    let mut first_job = Vec::with_capacity(builds.len());
    let mut events: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |events: &mut BinaryHeap<_>, t: u64, e: Event| {
        seq += 1;
        events.push(Reverse((t, seq, e)));
    };
    for (b, build) in builds.iter().enumerate() {
        first_job.push(jobs.len());
        for k in 0..build.units.len() {
            jobs.push(Job { build: b, unit: k, placements: Vec::new(), done: false });
        }
        if build.deps.is_empty() {
            push(&mut events, us(t0_s + build.start_s + build.pre_s), Event::Ready(b));
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        if let Some(t) = n.fails_at_s {
            push(&mut events, us(t0_s + t), Event::Down(i));
        }
    }
    let waiting_on = dependents(builds);
    let mut deps_left: Vec<usize> = builds.iter().map(|b| b.deps.len()).collect();
    let mut dep_done_at: Vec<u64> = vec![0; builds.len()];
    let mut left: Vec<usize> = builds.iter().map(|b| b.units.len()).collect();
    let mut built = 0usize;
    // With a `-j` limit, the units not yet submitted and those in flight.
    let mut unsubmitted: Vec<usize> = vec![0; builds.len()];
    let mut in_flight: Vec<u32> = vec![0; builds.len()];
    let mut state: Vec<NodeState> = nodes
        .iter()
        .map(|n| NodeState {
            alive: true,
            slots: n.slots,
            assigned: 0,
            foreign_load: n.foreign_load,
            host: n.host.clone(),
            reporting: true,
        })
        .collect();
    let mut dead = vec![false; nodes.len()];
    let mut running = vec![0u32; nodes.len()];
    let mut waiting: Vec<VecDeque<(usize, u64)>> = vec![VecDeque::new(); nodes.len()];
    let mut next_placement = 0u64;
    let mut on_node: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut makespan = 0u64;
    let unit_of = |j: &Job| &builds[j.build].units[j.unit];
    // Duration of a job on a node: send, compile, receive.
    let duration = |n: &SimNode, j: &Job| -> (u64, u64) {
        let u = unit_of(j);
        let xfer = 2.0 * n.latency_s + (u.bytes_in + u.bytes_out) as f64 / n.bandwidth;
        let cpu = u.cpu_s / effective_speed(n);
        (us(xfer + cpu), us(cpu))
    };
    while let Some(Reverse((t, _, ev))) = events.pop() {
        let now_ms = t / 1000;
        // Events of the same instant all happen before the policy places anything (units a
        // build submits together arrive together, as the daemon reads pipelined requests).
        match ev {
            Event::Ready(b) => {
                let build = &builds[b];
                if build.units.is_empty() {
                    push(&mut events, t + us(build.post_s), Event::BuildDone(b));
                } else if build.jobs > 0 {
                    let n = build.units.len().min(build.jobs as usize);
                    for k in 0..n {
                        push(&mut events, t, Event::Submit(first_job[b] + k));
                    }
                    unsubmitted[b] = build.units.len() - n;
                    in_flight[b] = n as u32;
                } else {
                    for (k, u) in build.units.iter().enumerate() {
                        push(&mut events, t + us(u.submit_s), Event::Submit(first_job[b] + k));
                    }
                }
            }
            Event::Submit(j) => {
                let job = &jobs[j];
                let build = &builds[job.build];
                let u = unit_of(job);
                let info = JobInfo {
                    submitter: build.submitter.clone(),
                    bytes_in: u.bytes_in,
                    work: u.work,
                    unit: u.key,
                };
                policy.submit(j, &info, now_ms);
            }
            Event::Finish(node, j, placement) => {
                if dead[node] || jobs[j].done || !jobs[j].placements.contains(&(node, placement)) {
                    continue;
                }
                jobs[j].done = true;
                // This copy and every other one leave their nodes (the others are withdrawn).
                for (n, _) in std::mem::take(&mut jobs[j].placements) {
                    state[n].assigned = state[n].assigned.saturating_sub(1);
                    on_node[n].retain(|x| *x != j);
                    let queued = waiting[n].len();
                    waiting[n].retain(|&(x, _)| x != j);
                    if waiting[n].len() < queued || dead[n] {
                        continue;
                    }
                    running[n] -= 1;
                    if let Some((next, np)) = waiting[n].pop_front() {
                        running[n] += 1;
                        let (d, _) = duration(&nodes[n], &jobs[next]);
                        push(&mut events, t + d, Event::Finish(n, next, np));
                    }
                }
                let (wall, cpu) = duration(&nodes[node], &jobs[j]);
                let bytes_out = unit_of(&jobs[j]).bytes_out;
                policy.finish(j, node, wall / 1000, cpu / 1000, bytes_out, now_ms);
                let b = jobs[j].build;
                left[b] -= 1;
                if builds[b].jobs > 0 {
                    in_flight[b] -= 1;
                    if unsubmitted[b] > 0 {
                        let next = first_job[b] + builds[b].units.len() - unsubmitted[b];
                        unsubmitted[b] -= 1;
                        in_flight[b] += 1;
                        push(&mut events, t, Event::Submit(next));
                    }
                }
                if left[b] == 0 {
                    // The link (and the rest of the serial part) runs on the build's own host,
                    // outside the farm's slots.
                    push(&mut events, t + us(builds[b].post_s), Event::BuildDone(b));
                }
            }
            Event::BuildDone(b) => {
                built += 1;
                makespan = makespan.max(t);
                for &next in &waiting_on[b] {
                    deps_left[next] -= 1;
                    dep_done_at[next] = dep_done_at[next].max(t);
                    if deps_left[next] == 0 {
                        let start = us(t0_s + builds[next].start_s).max(dep_done_at[next]);
                        push(&mut events, start + us(builds[next].pre_s), Event::Ready(next));
                    }
                }
            }
            Event::Down(node) => {
                dead[node] = true;
                state[node].reporting = false;
                push(&mut events, t + us(DETECT_S), Event::Detect(node));
            }
            Event::Detect(node) => {
                state[node].alive = false;
                state[node].assigned = 0;
                running[node] = 0;
                waiting[node].clear();
                for j in on_node[node].drain(..) {
                    jobs[j].placements.retain(|&(n, _)| n != node);
                }
                policy.node_lost(node, now_ms);
            }
        }
        if events.peek().is_some_and(|Reverse((next, _, _))| *next == t) {
            continue;
        }
        for (j, node) in policy.dispatch(&state, now_ms) {
            tracing::trace!(
                at_s = t as f64 / 1e6,
                job = j,
                cpu_s = unit_of(&jobs[j]).cpu_s,
                node = %nodes[node].name,
                "sim: placed"
            );
            next_placement += 1;
            let placement = next_placement;
            jobs[j].placements.push((node, placement));
            state[node].assigned += 1;
            on_node[node].push(j);
            if dead[node] {
                continue; // lost until the failure is detected
            }
            if running[node] < nodes[node].slots {
                running[node] += 1;
                let (d, _) = duration(&nodes[node], &jobs[j]);
                push(&mut events, t + d, Event::Finish(node, j, placement));
            } else {
                waiting[node].push_back((j, placement));
            }
        }
    }
    if built < builds.len() || jobs.iter().any(|j| !j.done) {
        return Outcome { makespan_s: f64::INFINITY };
    }
    Outcome { makespan_s: makespan.saturating_sub(us(t0_s)) as f64 / 1e6 }
}

/// The parts of the lower bound.
#[derive(Debug, Clone, PartialEq)]
pub struct Bound {
    /// The longest dependency chain: each build's serial parts and its slowest unit on the node
    /// best for it, builds after their dependencies.
    pub chain_s: f64,
    /// Total unit work over the fleet's capacity, then the shortest serial part after units.
    pub work_s: f64,
    /// The builds (indices) on the longest chain, first to last.
    pub path: Vec<usize>,
}

impl Bound {
    /// max(chain, work).
    pub fn seconds(&self) -> f64 {
        self.chain_s.max(self.work_s)
    }
}

/// The builds in an order where each comes after its dependencies, or `None` on a cycle (or a
/// dependency out of range).
pub fn topological_order(builds: &[SimBuild]) -> Option<Vec<usize>> {
    let waiting_on = dependents(builds);
    let mut deps_left: Vec<usize> = builds.iter().map(|b| b.deps.len()).collect();
    if builds.iter().any(|b| b.deps.iter().any(|&d| d >= builds.len())) {
        return None;
    }
    let mut ready: Vec<usize> = (0..builds.len()).filter(|&b| deps_left[b] == 0).collect();
    let mut order = Vec::with_capacity(builds.len());
    while let Some(b) = ready.pop() {
        order.push(b);
        for &next in &waiting_on[b] {
            deps_left[next] -= 1;
            if deps_left[next] == 0 {
                ready.push(next);
            }
        }
    }
    (order.len() == builds.len()).then_some(order)
}

/// max(longest dependency chain, total work / total capacity), on the fleet at its best:
/// each unit on the node that would finish it first (alive until it ends), its transfer
/// included (the engine charges every placement its link's latency and bytes), each build's
/// serial parts around its units (a `make -j N` build no faster than N units at a time on the
/// fastest node), each build after its dependencies; the work bound integrates
/// capacity over time, nodes counted until they fail. A bound, not an achievable schedule: it
/// knows when a node will fail, and lets every unit start the moment it is submitted on the
/// node best for it. Infinite on a dependency cycle.
pub fn lower_bound(builds: &[SimBuild], nodes: &[SimNode]) -> Bound {
    let Some(order) = topological_order(builds) else {
        return Bound { chain_s: f64::INFINITY, work_s: f64::INFINITY, path: Vec::new() };
    };
    let mut end = vec![0.0f64; builds.len()];
    let mut pred: Vec<Option<usize>> = vec![None; builds.len()];
    for &b in &order {
        let build = &builds[b];
        pred[b] = build.deps.iter().copied().max_by(|x, y| end[*x].total_cmp(&end[*y]));
        let after = pred[b].map_or(0.0, |d| end[d]);
        let ready = build.start_s.max(after) + build.pre_s;
        let units = build.units.iter().map(|u| {
            let submit = ready + if build.jobs > 0 { 0.0 } else { u.submit_s };
            let xfer =
                |n: &SimNode| 2.0 * n.latency_s + (u.bytes_in + u.bytes_out) as f64 / n.bandwidth;
            nodes
                .iter()
                .map(|n| submit + xfer(n) + u.cpu_s / effective_speed(n))
                .zip(nodes)
                .filter(|(end, n)| n.fails_at_s.is_none_or(|f| *end <= f))
                .map(|(end, _)| end)
                .fold(f64::INFINITY, f64::min)
        });
        // A `make -j` build keeps at most `jobs` units busy, each on the fastest node at best.
        let narrow = if build.jobs > 0 {
            let fastest = nodes.iter().map(effective_speed).fold(0.0, f64::max);
            let cpu: f64 = build.units.iter().map(|u| u.cpu_s).sum();
            ready + cpu / (f64::from(build.jobs) * fastest)
        } else {
            ready
        };
        end[b] = units.fold(narrow, f64::max) + build.post_s;
    }
    let last = (0..builds.len()).max_by(|x, y| end[*x].total_cmp(&end[*y]));
    let chain = last.map_or(0.0, |b| end[b]);
    let mut path: Vec<usize> = std::iter::successors(last, |&b| pred[b]).collect();
    path.reverse();
    let work: f64 = builds.iter().flat_map(|b| &b.units).map(|u| u.cpu_s).sum();
    let first = builds.iter().map(|b| b.start_s).fold(f64::INFINITY, f64::min);
    let first = if first.is_finite() { first } else { 0.0 };
    let last_post = builds
        .iter()
        .filter(|b| !b.units.is_empty())
        .map(|b| b.post_s)
        .fold(f64::INFINITY, f64::min);
    let last_post = if last_post.is_finite() { last_post } else { 0.0 };
    let capacity_until = |t: f64| -> f64 {
        nodes
            .iter()
            .map(|n| {
                effective_speed(n)
                    * f64::from(n.slots)
                    * (n.fails_at_s.map_or(t, |f| t.min(f)) - first).max(0.0)
            })
            .sum()
    };
    let (mut lo, mut hi) = (first, first + 1.0);
    while capacity_until(hi) < work && hi < 1e12 {
        hi *= 2.0;
    }
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if capacity_until(mid) >= work { hi = mid } else { lo = mid }
    }
    let work_s = if work > 0.0 { hi + last_post } else { 0.0 };
    Bound { chain_s: chain, work_s, path }
}
