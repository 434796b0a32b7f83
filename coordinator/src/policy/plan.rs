//! Placement decisions: [`Scheduler::dispatch`] explores unmeasured and stale nodes, then plans
//! the queue in service order with earliest-finish-time list scheduling and places the jobs
//! whose best node can take them now.
//!
//! A job's estimated time on a node is the overhead its bytes cost there (transfer, set-up,
//! learned) plus its cost estimate over the node's effective rate (learned rate, times the CPU
//! share its foreign load leaves, times a small slot-fill discount; on the submitter's own host
//! ×1.1 for a small build, ×0.8 when its slots are full, ×0.1 beyond), plus an install penalty
//! when the node lacks the compiler. Each node's slots free at the estimated ends of its placed
//! jobs. Walking the queue (largest cost first within a submitter, submitters in turn), each
//! job picks the node where it would *finish* first: with a free slot it is placed; when that
//! node is full it is preloaded there if the node has preload room, else it waits and the slot it
//! waits for counts as taken for the jobs after it (so a small job cannot take the room a long
//! one waits for, and a long unit is never stranded on a slow node just because it had room).

use super::{Assignment, JobId, Millis, Node, NodeId, Scheduler, Slot, cpu_share};

/// Queued jobs planned per dispatch (the rest wait for the next one).
const PLAN_LIMIT: usize = 256;

/// A node's slots during one plan: when each frees.
struct Busy {
    node: NodeId,
    free_at: Vec<f64>,
}

impl Busy {
    fn earliest(&self) -> (usize, f64) {
        earliest(&self.free_at)
    }
}

/// Slot end times of a full node, from its placed jobs' estimates (placement order: running
/// first). A job past its estimate is assumed to end a little later, not now.
fn slot_ends(n: &Node, now: f64) -> Vec<f64> {
    let slots = n.spec.slots.max(1) as usize;
    let mut free = vec![now; slots];
    for s in &n.assigned {
        let (i, t) = earliest(&free);
        let start = t.max(s.at as f64);
        free[i] = (start + s.est).max(now + s.est * 0.1);
    }
    free
}

fn earliest(v: &[f64]) -> (usize, f64) {
    let mut best = (0, f64::INFINITY);
    for (i, t) in v.iter().enumerate() {
        if *t < best.1 {
            best = (i, *t);
        }
    }
    best
}

impl Scheduler {
    /// Places what should run now, fairly: exploration first, then the plan.
    pub fn dispatch(&mut self, now: Millis) -> Vec<Assignment> {
        let mut out = Vec::new();
        if self.queue.is_empty() {
            return out;
        }
        let mut order = std::mem::take(&mut self.order_buf);
        let reference = self.reference_bps();
        loop {
            self.queue.order(PLAN_LIMIT, &mut order);
            let Some(a) = self.explore(&order, now) else { break };
            self.commit(a, now, reference);
            out.push(a);
        }
        self.queue.order(PLAN_LIMIT, &mut order);
        let mut busy: Vec<Busy> = Vec::new();
        let now_f = now as f64;
        for job in order.iter().copied() {
            let Some(a) = self.plan_one(job, now_f, reference, &mut busy) else { continue };
            self.commit(a, now, reference);
            out.push(a);
        }
        self.order_buf = order;
        out
    }

    /// Chooses the node where `job` finishes first; places it there if it can start now (or be
    /// preloaded), else marks that node's next slot as taken by it in `busy`.
    fn plan_one(
        &self,
        job: JobId,
        now: f64,
        reference: f64,
        busy: &mut Vec<Busy>,
    ) -> Option<Assignment> {
        let j = self.jobs.get(&job)?;
        let tc = &j.spec.toolchain;
        let mine = self.running_of(&j.spec.submitter);
        // (finish, node, start, install)
        let mut best: Option<(f64, NodeId, f64, bool)> = None;
        for (id, n) in &self.nodes {
            if n.spec.slots == 0 || n.load.foreign_load >= 1000 {
                continue;
            }
            // A node still learning its speed takes only exploration jobs.
            if n.speed.samples < self.cfg.min_samples {
                continue;
            }
            let install = !n.holds(tc);
            if install && n.installing.is_some() {
                continue;
            }
            let start = if let Some(b) = busy.iter().find(|b| b.node == *id) {
                b.earliest().1
            } else if n.assigned.len() < n.spec.slots as usize {
                now
            } else {
                earliest(&slot_ends(n, now)).1
            };
            let mut finish = start + self.duration_ms(n, j, reference, mine);
            if install {
                finish += self.cfg.install_ms;
            }
            if best.is_none_or(|(f, ..)| finish < f) {
                best = Some((finish, *id, start, install));
            }
        }
        let (finish, node, start, install) = best?;
        let n = self.nodes.get(&node)?;
        let planned = busy.iter().any(|b| b.node == node);
        let free_now = !planned && n.assigned.len() < n.spec.slots as usize;
        let preload = !free_now && !planned && n.has_room();
        if free_now || preload {
            return Some(Assignment { job, node, preload, install, explore: false });
        }
        // Wait for that node: its next slot is this job's in the rest of this plan.
        let b = match busy.iter().position(|b| b.node == node) {
            Some(i) => &mut busy[i],
            None => {
                busy.push(Busy { node, free_at: slot_ends(n, now) });
                let last = busy.len() - 1;
                &mut busy[last]
            }
        };
        let (i, _) = b.earliest();
        b.free_at[i] = finish.max(start);
        None
    }

    /// An exploration placement: a node still learning its speed (fewer than `min_samples`
    /// samples; at most one more job in flight than samples) or idle with a stale estimate gets
    /// a typical (median-cost) queued job. Tiny units are dominated by start-up costs and would
    /// teach a misleading speed; the largest risk the build's end.
    fn explore(&self, order: &[JobId], now: Millis) -> Option<Assignment> {
        for (id, n) in &self.nodes {
            if !n.has_room() || n.assigned.len() >= n.spec.slots as usize {
                continue;
            }
            let learning = n.speed.samples < self.cfg.min_samples
                && n.assigned.len() <= n.speed.samples as usize;
            let stale = n.assigned.is_empty()
                && !n.exploring
                && n.speed.needs_exploring(now, self.cfg.stale_ms);
            if !learning && !stale {
                continue;
            }
            let mut fits: Vec<(f64, JobId, bool)> = order
                .iter()
                .filter_map(|id| self.jobs.get(id).map(|j| (*id, j)))
                .filter(|(_, j)| n.holds(&j.spec.toolchain) || n.installing.is_none())
                .map(|(id, j)| (j.work, id, !n.holds(&j.spec.toolchain)))
                .collect();
            fits.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            if let Some((_, job, install)) = fits.get(fits.len() / 2) {
                return Some(Assignment {
                    job: *job,
                    node: *id,
                    preload: false,
                    install: *install,
                    explore: true,
                });
            }
        }
        None
    }

    /// Rate of the fastest measured node (the optimistic guess for unmeasured ones).
    fn reference_bps(&self) -> f64 {
        self.nodes
            .values()
            .filter(|n| n.speed.samples > 0)
            .map(Node::rate_bps)
            .fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.max(s))))
            .unwrap_or(self.cfg.default_bps)
    }

    /// The job's estimated time on the node: the overhead its bytes cost there (transfer,
    /// set-up) plus its cost at the node's effective rate.
    /// (`mine`: the submitter's placed jobs, for its own host's factor.)
    fn duration_ms(&self, n: &Node, j: &super::Job, reference: f64, mine: usize) -> f64 {
        n.speed.overhead_ms_per_byte * j.spec.bytes_in as f64
            + j.work * 1000.0 / self.effective_bps(n, &j.spec.submitter, reference, mine)
    }

    fn running_of(&self, submitter: &str) -> usize {
        self.running_by_submitter.get(submitter).copied().unwrap_or(0)
    }

    fn effective_bps(&self, n: &Node, submitter: &str, reference: f64, mine: usize) -> f64 {
        let mut bps = if n.speed.samples < self.cfg.min_samples {
            n.rate_bps().max(reference)
        } else {
            n.rate_bps()
        };
        let fill = n.assigned.len().min(n.spec.slots as usize) as f64 / n.spec.slots.max(1) as f64;
        bps *= 1.0 - self.cfg.fill_weight * fill;
        if n.spec.host == submitter {
            // The submitter's own host: its load is its own build. Small builds stay home;
            // large ones leave it room to preprocess and link.
            let slots = n.spec.slots as usize;
            bps *= if mine <= slots / 2 {
                1.1
            } else if mine <= slots {
                0.8
            } else {
                0.1
            };
        } else {
            bps *= cpu_share(n.load.foreign_load);
        }
        bps.max(1.0)
    }

    fn commit(&mut self, a: Assignment, now: Millis, reference: f64) {
        let Some(job) = self.jobs.get(&a.job) else { return };
        let Some(n) = self.nodes.get(&a.node) else { return };
        let mine = self.running_of(&job.spec.submitter);
        let mut est = self.duration_ms(n, job, reference, mine);
        if a.install {
            est += self.cfg.install_ms;
        }
        let (prio, toolchain) = (job.spec.priority, job.spec.toolchain);
        let submitter = job.spec.submitter.clone();
        self.queue.take(prio, &submitter, a.job);
        if let Some(job) = self.jobs.get_mut(&a.job) {
            job.placed = Some(a.node);
        }
        match self.running_by_submitter.get_mut(&submitter) {
            Some(r) => *r += 1,
            None => {
                self.running_by_submitter.insert(submitter, 1);
            }
        }
        if let Some(n) = self.nodes.get_mut(&a.node) {
            n.assigned.push(Slot { job: a.job, at: now, est });
            n.placed_total += 1;
            if a.explore {
                n.exploring = true;
            }
            if a.install {
                n.installing = Some(toolchain);
            }
        }
    }
}
