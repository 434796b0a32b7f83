//! The discrete-event engine: a virtual clock, submit/finish/failure events, node slots with
//! preload, transfers over each node's link, and the lower bound of a run.
//!
//! [`simulate`] replays the builds twice with the same policy object: a warm-up replay on the
//! fleet without its failure (yesterday's rebuild of the same packages), then, [`GAP_S`] later,
//! the measured replay. Every policy keeps what it learned in the warm-up (discomy: node speeds
//! and per-unit costs from the measured times of finished jobs; icecream: its speed statistics;
//! the others learn nothing). No policy ever sees a unit's CPU seconds from the trace.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::fleet::SimNode;
use super::workload::{Build, Trace};

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
    Submit(usize),
    /// (node, job, placement id)
    Finish(usize, usize, u64),
    Down(usize),
    Detect(usize),
}

struct Job {
    build: usize,
    unit: usize,
    cpu_s: f64,
    bytes_in: u64,
    work: u64,
    bytes_out: u64,
    /// Live placements: (node, placement id). A policy may run a job twice at once (hedging);
    /// the first to finish wins and the others are withdrawn. A finish whose placement is no
    /// longer live (its node was lost) is ignored.
    placements: Vec<(usize, u64)>,
    done: bool,
}

fn us(s: f64) -> u64 {
    (s * 1e6).round().max(0.0) as u64
}

/// Result of one run.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// When the last link finished.
    pub makespan_s: f64,
}

/// Runs every build of `trace` over `nodes` with `policy`: a warm-up replay on the fleet
/// without failures (unless `cold`), then the measured one (whose makespan is returned).
pub fn simulate(
    trace: &Trace,
    builds: &[Build],
    nodes: &[SimNode],
    policy: &mut dyn SimPolicy,
    cold: bool,
) -> Outcome {
    if cold {
        return replay(trace, builds, nodes, policy, 0.0);
    }
    let healthy: Vec<SimNode> =
        nodes.iter().map(|n| SimNode { fails_at_s: None, ..n.clone() }).collect();
    let warm = replay(trace, builds, &healthy, policy, 0.0);
    if !warm.makespan_s.is_finite() {
        return warm;
    }
    replay(trace, builds, nodes, policy, warm.makespan_s + GAP_S)
}

/// One replay of every build starting at `t0_s`; the makespan is counted from `t0_s`.
fn replay(
    trace: &Trace,
    builds: &[Build],
    nodes: &[SimNode],
    policy: &mut dyn SimPolicy,
    t0_s: f64,
) -> Outcome {
    let mut jobs = Vec::new();
    let mut events: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |events: &mut BinaryHeap<_>, t: u64, e: Event| {
        seq += 1;
        events.push(Reverse((t, seq, e)));
    };
    for (b, build) in builds.iter().enumerate() {
        for (k, u) in trace.units.iter().enumerate() {
            let id = jobs.len();
            jobs.push(Job {
                build: b,
                unit: k,
                cpu_s: u.cpu_s,
                bytes_in: u.bytes_in,
                work: u.source_bytes,
                bytes_out: u.bytes_out,
                placements: Vec::new(),
                done: false,
            });
            push(&mut events, us(t0_s + build.start_s + u.submit_s), Event::Submit(id));
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        if let Some(t) = n.fails_at_s {
            push(&mut events, us(t0_s + t), Event::Down(i));
        }
    }
    let mut left: Vec<usize> = vec![trace.units.len(); builds.len()];
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
    let verbose = std::env::var_os("DISCOMY_SIM_VERBOSE").is_some();
    // Duration of a job on a node: send, compile, receive.
    let duration = |n: &SimNode, j: &Job| -> (u64, u64) {
        let eff = n.speed * (1.0 - f64::from(n.foreign_load.min(990)) / 1000.0);
        let xfer = 2.0 * n.latency_s + (j.bytes_in + j.bytes_out) as f64 / n.bandwidth;
        let cpu = j.cpu_s / eff;
        (us(xfer + cpu), us(cpu))
    };
    while let Some(Reverse((t, _, ev))) = events.pop() {
        let now_ms = t / 1000;
        // Events of the same instant all happen before the policy places anything (units a
        // build submits together arrive together, as the daemon reads pipelined requests).
        match ev {
            Event::Submit(j) => {
                let job = &jobs[j];
                let info = JobInfo {
                    submitter: builds[job.build].submitter.clone(),
                    bytes_in: job.bytes_in,
                    work: job.work,
                    unit: job.unit as u64 + 1,
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
                policy.finish(j, node, wall / 1000, cpu / 1000, jobs[j].bytes_out, now_ms);
                let b = jobs[j].build;
                left[b] -= 1;
                if left[b] == 0 {
                    // The link runs on the submitter, outside the farm's slots.
                    makespan = makespan.max(t + us(trace.link.cpu_s));
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
            if verbose {
                eprintln!(
                    "{:>8.3} job {j:>3} ({:.3} s) -> {}",
                    t as f64 / 1e6,
                    jobs[j].cpu_s,
                    nodes[node].name
                );
            }
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
    if jobs.iter().any(|j| !j.done) {
        return Outcome { makespan_s: f64::INFINITY };
    }
    Outcome { makespan_s: makespan.saturating_sub(us(t0_s)) as f64 / 1e6 }
}

/// max(longest dependency chain, total work / total capacity), on the fleet at its best:
/// each unit on the node that would finish it first (alive until it ends), its transfer
/// included (the engine charges every placement its link's latency and bytes), each build's link
/// after its last unit; the work bound integrates capacity over time, nodes counted until they
/// fail. A bound, not an achievable schedule: it knows when a node will fail, and lets every
/// unit start the moment it is submitted on the node best for it.
pub fn lower_bound(trace: &Trace, builds: &[Build], nodes: &[SimNode]) -> f64 {
    let eff = |n: &SimNode| n.speed * (1.0 - f64::from(n.foreign_load.min(990)) / 1000.0);
    let chain = builds
        .iter()
        .map(|b| {
            let units = trace.units.iter().map(|u| {
                let submit = b.start_s + u.submit_s;
                let xfer = |n: &SimNode| {
                    2.0 * n.latency_s + (u.bytes_in + u.bytes_out) as f64 / n.bandwidth
                };
                nodes
                    .iter()
                    .map(|n| submit + xfer(n) + u.cpu_s / eff(n))
                    .zip(nodes)
                    .filter(|(end, n)| n.fails_at_s.is_none_or(|f| *end <= f))
                    .map(|(end, _)| end)
                    .fold(f64::INFINITY, f64::min)
            });
            units.fold(0.0, f64::max) + trace.link.cpu_s
        })
        .fold(0.0, f64::max);
    let work: f64 = trace.units.iter().map(|u| u.cpu_s).sum::<f64>() * builds.len() as f64;
    let first = builds.iter().map(|b| b.start_s).fold(f64::INFINITY, f64::min);
    let capacity_until = |t: f64| -> f64 {
        nodes
            .iter()
            .map(|n| {
                eff(n)
                    * f64::from(n.slots)
                    * (n.fails_at_s.map_or(t, |f| t.min(f)) - first).max(0.0)
            })
            .sum()
    };
    let (mut lo, mut hi) = (first, first + 1.0);
    while capacity_until(hi) < work && hi < 1e9 {
        hi *= 2.0;
    }
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if capacity_until(mid) >= work { hi = mid } else { lo = mid }
    }
    chain.max(hi + trace.link.cpu_s)
}
