//! discomy's placement policy (the coordinator's [`crate::policy`] module, unchanged) driven
//! under simulation exactly as the daemon drives it.

use std::collections::HashMap;

use crate::policy::{JobId, JobSpec, JobStats, LoadReport, NodeSpec, PolicyConfig, Scheduler};

use super::engine::{JobInfo, NodeState, SimPolicy};
use super::fleet::SimNode;

const TOOLCHAIN: [u8; 32] = [7; 32];

/// discomy's policy, driven exactly as the daemon drives it.
pub struct Discomy {
    sched: Scheduler,
    ids: HashMap<JobId, usize>,
    /// A unit's scheduler jobs: the original and, once hedged, its twin.
    back: HashMap<usize, Vec<JobId>>,
    /// When each node last reported its load (nodes report every second).
    reported: Vec<u64>,
}

/// How often a node reports its load.
const REPORT_EVERY_MS: u64 = 1000;

impl Discomy {
    /// Nodes join at time 0 with the toolchain, as after a first build.
    pub fn new(nodes: &[SimNode]) -> Discomy {
        let mut sched = Scheduler::new(PolicyConfig::default());
        for (i, n) in nodes.iter().enumerate() {
            let spec = NodeSpec {
                name: n.name.clone(),
                host: n.host.clone(),
                slots: n.slots,
                cores: n.slots,
                memory_mb: if n.memory_bytes > 0 { n.memory_bytes >> 20 } else { 8192 },
                toolchains: vec![TOOLCHAIN],
            };
            sched.add_node(i as u64, spec, 0);
            let load = LoadReport { foreign_load: n.foreign_load, ..LoadReport::default() };
            sched.report_load(i as u64, load, 0);
        }
        Discomy { sched, ids: HashMap::new(), back: HashMap::new(), reported: vec![0; nodes.len()] }
    }
}

impl SimPolicy for Discomy {
    fn submit(&mut self, job: usize, info: &JobInfo, _now_ms: u64) {
        let spec = JobSpec {
            submitter: info.submitter.clone(),
            priority: 0,
            toolchain: TOOLCHAIN,
            bytes_in: info.bytes_in,
            work: info.work,
            unit: info.unit,
        };
        let id = self.sched.submit(spec);
        self.ids.insert(id, job);
        self.back.insert(job, vec![id]);
    }

    fn dispatch(&mut self, nodes: &[NodeState], now_ms: u64) -> Vec<(usize, usize)> {
        for (i, n) in nodes.iter().enumerate() {
            if n.reporting && now_ms >= self.reported[i] + REPORT_EVERY_MS {
                self.reported[i] = now_ms;
                let load = LoadReport { foreign_load: n.foreign_load, ..LoadReport::default() };
                self.sched.report_load(i as u64, load, now_ms);
            }
        }
        let placed = self.sched.dispatch(now_ms);
        let mut out = Vec::with_capacity(placed.len());
        for a in placed {
            // A twin runs the same unit: the submitter's side of hedging.
            let unit = match a.hedge_of {
                Some(original) => self.ids.get(&original).copied(),
                None => self.ids.get(&a.job).copied(),
            };
            let (Some(unit), Ok(node)) = (unit, usize::try_from(a.node)) else { continue };
            if a.hedge_of.is_some() {
                self.ids.insert(a.job, unit);
                self.back.entry(unit).or_default().push(a.job);
            }
            out.push((unit, node));
        }
        out
    }

    fn finish(
        &mut self,
        job: usize,
        node: usize,
        wall_ms: u64,
        cpu_ms: u64,
        bytes_out: u64,
        now_ms: u64,
    ) {
        let Some(copies) = self.back.remove(&job) else { return };
        for id in &copies {
            self.ids.remove(id);
        }
        // The copy that ran on `node` finished; the scheduler withdraws its twin.
        let node = node as u64;
        if let Some(id) = copies.into_iter().find(|id| self.sched.placement(*id) == Some(node)) {
            let stats = JobStats { ok: true, wall_ms, cpu_ms, bytes_out };
            self.sched.finish(id, stats, now_ms);
        }
    }

    fn node_lost(&mut self, node: usize, now_ms: u64) {
        self.sched.node_lost(node as u64, now_ms);
    }
}
