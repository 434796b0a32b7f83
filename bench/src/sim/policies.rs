//! The peer policies the simulator compares discomy's with: random, round-robin, least-loaded,
//! and icecream 1.4's "fastest" as published in its source (discomy's own is
//! `discomy_coordinator::plan::discomy`).

use std::collections::{HashMap, VecDeque};

use discomy_coordinator::plan::engine::{JobInfo, NodeState, SimPolicy};

/// How a baseline picks a node for the job at the head of a FIFO queue.
pub trait Pick {
    /// A node with room for `info`, or `None` to wait.
    fn pick(&mut self, info: &JobInfo, nodes: &[NodeState], mine: usize) -> Option<usize>;
    /// Learns from a finished job.
    fn learn(&mut self, _node: usize, _cpu_ms: u64, _bytes_out: u64) {}
}

/// A FIFO queue in front of a [`Pick`] rule; jobs of a lost node go back to the front.
pub struct Fifo<P> {
    pick: P,
    queue: VecDeque<(usize, JobInfo)>,
    placed: HashMap<usize, (usize, JobInfo)>,
    per_submitter: HashMap<String, usize>,
}

impl<P: Pick> Fifo<P> {
    /// Wraps a rule.
    pub fn new(pick: P) -> Fifo<P> {
        Fifo { pick, queue: VecDeque::new(), placed: HashMap::new(), per_submitter: HashMap::new() }
    }
}

impl<P: Pick> SimPolicy for Fifo<P> {
    fn submit(&mut self, job: usize, info: &JobInfo, _now_ms: u64) {
        self.queue.push_back((job, info.clone()));
    }

    fn dispatch(&mut self, nodes: &[NodeState], _now_ms: u64) -> Vec<(usize, usize)> {
        let mut view = nodes.to_vec();
        let mut out = Vec::new();
        while let Some((job, info)) = self.queue.front().cloned() {
            let mine = self.per_submitter.get(&info.submitter).copied().unwrap_or(0);
            let Some(node) = self.pick.pick(&info, &view, mine) else { break };
            self.queue.pop_front();
            view[node].assigned += 1;
            *self.per_submitter.entry(info.submitter.clone()).or_default() += 1;
            self.placed.insert(job, (node, info));
            out.push((job, node));
        }
        out
    }

    fn finish(
        &mut self,
        job: usize,
        node: usize,
        _wall_ms: u64,
        cpu_ms: u64,
        bytes_out: u64,
        _now_ms: u64,
    ) {
        if let Some((_, info)) = self.placed.remove(&job) {
            if let Some(n) = self.per_submitter.get_mut(&info.submitter) {
                *n = n.saturating_sub(1);
            }
        }
        self.pick.learn(node, cpu_ms, bytes_out);
    }

    fn node_lost(&mut self, node: usize, _now_ms: u64) {
        let mut lost: Vec<usize> =
            self.placed.iter().filter(|(_, (n, _))| *n == node).map(|(j, _)| *j).collect();
        // Deterministic: the lowest job ids end up first in the queue.
        lost.sort_unstable_by(|a, b| b.cmp(a));
        for j in lost {
            if let Some((_, info)) = self.placed.remove(&j) {
                if let Some(n) = self.per_submitter.get_mut(&info.submitter) {
                    *n = n.saturating_sub(1);
                }
                self.queue.push_front((j, info));
            }
        }
    }
}

fn free(n: &NodeState) -> bool {
    n.alive && n.assigned < n.slots as usize
}

/// Uniform among nodes with a free slot (seeded, reproducible).
pub struct Random(pub u64);

impl Pick for Random {
    fn pick(&mut self, _info: &JobInfo, nodes: &[NodeState], _mine: usize) -> Option<usize> {
        let candidates: Vec<usize> = (0..nodes.len()).filter(|i| free(&nodes[*i])).collect();
        if candidates.is_empty() {
            return None;
        }
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        Some(candidates[(r % candidates.len() as u64) as usize])
    }
}

/// The next node with a free slot after the last one picked.
#[derive(Default)]
pub struct RoundRobin(usize);

impl Pick for RoundRobin {
    fn pick(&mut self, _info: &JobInfo, nodes: &[NodeState], _mine: usize) -> Option<usize> {
        for k in 1..=nodes.len() {
            let i = (self.0 + k) % nodes.len();
            if free(&nodes[i]) {
                self.0 = i;
                return Some(i);
            }
        }
        None
    }
}

/// The node with the lowest slot fill (then the lowest foreign load).
pub struct LeastLoaded;

impl Pick for LeastLoaded {
    fn pick(&mut self, _info: &JobInfo, nodes: &[NodeState], _mine: usize) -> Option<usize> {
        (0..nodes.len()).filter(|i| free(&nodes[*i])).min_by(|a, b| {
            let fill = |n: &NodeState| n.assigned as f64 / f64::from(n.slots.max(1));
            let (na, nb) = (&nodes[*a], &nodes[*b]);
            fill(na).total_cmp(&fill(nb)).then(na.foreign_load.cmp(&nb.foreign_load))
        })
    }
}

/// icecream 1.4's `pick_server` ("fastest"): speed = Σ output bytes / Σ user ms over the last
/// 200 jobs; ×(1000−load)/1000 for other hosts; the submitter's own host ×1.1 / ×0.8 / ×0.1 by
/// its client count against its slots; ×(1 − 0.5·jobs/max_jobs); ×(4.5 − 0.5·n) under 7
/// samples; a never-used node first; a node not picked in the last 20×|nodes| jobs next;
/// then the fastest with a free slot, else the fastest with preload room (1 + max_jobs/4).
#[derive(Default)]
pub struct IcecreamFastest {
    stats: HashMap<usize, VecDeque<(u64, u64)>>,
    last_picked: HashMap<usize, u64>,
    job_ids: u64,
}

impl Pick for IcecreamFastest {
    fn pick(&mut self, info: &JobInfo, nodes: &[NodeState], mine: usize) -> Option<usize> {
        self.job_ids += 1;
        let eligible = |n: &NodeState| {
            n.alive
                && n.foreign_load < 1000
                && n.assigned < n.slots as usize + 1 + n.slots as usize / 4
        };
        let mut best: Option<(f64, usize)> = None;
        let mut bestpre: Option<(f64, usize)> = None;
        let global_stats = self.stats.values().any(|s| !s.is_empty());
        for (i, n) in nodes.iter().enumerate() {
            if !eligible(n) {
                continue;
            }
            let samples = self.stats.get(&i).map_or(0, VecDeque::len);
            let never_used = samples == 0 && n.assigned == 0 && !self.last_picked.contains_key(&i);
            if never_used && global_stats {
                return self.picked(i);
            }
            if let Some(last) = self.last_picked.get(&i)
                && self.job_ids.saturating_sub(*last) > 20 * nodes.len() as u64
                && n.assigned < n.slots as usize
            {
                return self.picked(i);
            }
            let (out, ms) = self
                .stats
                .get(&i)
                .map_or((0, 0), |s| s.iter().fold((0, 0), |(a, b), (o, m)| (a + o, b + m)));
            let mut speed = if ms == 0 { 1.0 } else { out as f64 / ms as f64 };
            if n.host == info.submitter {
                let max = n.slots as usize;
                speed *= if mine <= max / 2 {
                    1.1
                } else if mine == max {
                    0.8
                } else if mine > max {
                    0.1
                } else {
                    1.0
                };
            } else {
                speed *= f64::from(1000 - n.foreign_load) / 1000.0;
            }
            speed *= 1.0 - 0.5 * n.assigned as f64 / f64::from(n.slots.max(1));
            if samples < 7 {
                speed *= 4.5 - 0.5 * samples as f64;
            }
            let slot = if n.assigned < n.slots as usize { &mut best } else { &mut bestpre };
            if slot.is_none_or(|(s, _)| speed > s) {
                *slot = Some((speed, i));
            }
        }
        if !global_stats {
            // No statistics at all yet: the first eligible node with a free slot (icecream
            // picks at random; the first keeps the run reproducible).
            let i = (0..nodes.len())
                .find(|i| eligible(&nodes[*i]) && nodes[*i].assigned < nodes[*i].slots as usize)?;
            return self.picked(i);
        }
        let i = best.or(bestpre)?.1;
        self.picked(i)
    }

    fn learn(&mut self, node: usize, cpu_ms: u64, bytes_out: u64) {
        // Only jobs with at least 4 KiB of output count.
        if bytes_out < 4096 {
            return;
        }
        let s = self.stats.entry(node).or_default();
        s.push_back((bytes_out, cpu_ms.max(1)));
        if s.len() > 200 {
            s.pop_front();
        }
    }
}

impl IcecreamFastest {
    fn picked(&mut self, i: usize) -> Option<usize> {
        self.last_picked.insert(i, self.job_ids);
        Some(i)
    }
}
