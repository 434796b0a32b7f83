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

use super::index::fill_factor;
use super::{Assignment, IdMap, JobId, Millis, Node, NodeId, Scheduler, Slot, cpu_share};

/// Queued jobs planned per dispatch (the rest wait for the next one).
const PLAN_LIMIT: usize = 256;

/// The submitter's own host: its load is its own build. Small builds stay home; large ones
/// leave it room to preprocess and link (`mine`: the submitter's placed jobs).
fn home_factor(mine: usize, slots: usize) -> f64 {
    if mine <= slots / 2 {
        1.1
    } else if mine <= slots {
        0.8
    } else {
        0.1
    }
}

/// What one dispatch's plan adds to a node: a job waits for it (nothing else is placed there
/// in this dispatch), and its slots' end times with the waiting jobs in them.
#[derive(Debug, Default)]
struct Waited {
    ends: Vec<f64>,
}

/// Slot end times of a node, from its placed jobs' estimates (placement order: running
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
        self.hedge_stalled(now);
        if self.queue.is_empty() {
            return out;
        }
        let mut order = std::mem::take(&mut self.order_buf);
        loop {
            self.queue.order(PLAN_LIMIT, &mut order);
            let Some(a) = self.explore(&order, now) else { break };
            self.commit(a, now);
            out.push(a);
        }
        self.queue.order(PLAN_LIMIT, &mut order);
        let mut waited: IdMap<Waited> = IdMap::default();
        let now_f = now as f64;
        for job in order.iter().copied() {
            let Some(a) = self.plan_one(job, now_f, &mut waited) else { continue };
            self.commit(a, now);
            out.push(a);
        }
        self.order_buf = order;
        out
    }

    /// Chooses the node where `job` finishes first; places it there if it can start now (or be
    /// preloaded), else marks that node's next slot as taken by it in the plan.
    fn plan_one(&self, job: JobId, now: f64, waited: &mut IdMap<Waited>) -> Option<Assignment> {
        let j = self.jobs.get(&job)?;
        let tc = &j.spec.toolchain;
        let mine = self.running_of(&j.spec.submitter);
        let bytes = j.spec.bytes_in as f64;
        let work_ms = j.work * 1000.0;
        let min_ovh = self.index.min_overhead();
        // A twin never goes where its original runs.
        let twin_of = j.hedge_of.and_then(|o| self.jobs.get(&o)).and_then(|o| o.placed);
        // (finish, node, start, install)
        let mut best: Option<(f64, NodeId, f64, bool)> = None;
        for (bound, id) in self.index.iter() {
            if let Some((f, ..)) = best
                && now + min_ovh * bytes + work_ms / bound >= f
            {
                break; // no node from here on can finish it sooner
            }
            let Some(n) = self.nodes.get(&id) else { continue };
            if n.stalled || Some(id) == twin_of {
                continue;
            }
            let install = !n.holds(tc);
            if install && n.installing.is_some() {
                continue;
            }
            let start = match waited.get(&id) {
                Some(w) => earliest(&w.ends).1,
                None if n.assigned.len() < n.spec.slots as usize => now,
                None => earliest(&slot_ends(n, now)).1,
            };
            let factor = if n.spec.host == j.spec.submitter {
                home_factor(mine, n.spec.slots as usize)
            } else {
                cpu_share(n.load.foreign_load)
            };
            let rate = n.rate_bps() * fill_factor(n, self.cfg.fill_weight) * factor;
            let mut finish = start + n.speed.overhead_ms_per_byte * bytes + work_ms / rate.max(1.0);
            if install {
                finish += self.cfg.install_ms;
            }
            if best.is_none_or(|(f, ..)| finish < f) {
                best = Some((finish, id, start, install));
            }
        }
        let (finish, node, start, install) = best?;
        let n = self.nodes.get(&node)?;
        if !waited.contains_key(&node) {
            let free_now = n.assigned.len() < n.spec.slots as usize;
            let preload = !free_now && n.has_room();
            if free_now || preload {
                let hedge_of = j.hedge_of;
                return Some(Assignment { job, node, preload, install, explore: false, hedge_of });
            }
        }
        // Wait for that node: its next slot is this job's in the rest of this plan.
        let w = waited.entry(node).or_insert_with(|| Waited { ends: slot_ends(n, now) });
        let (k, _) = earliest(&w.ends);
        w.ends[k] = finish.max(start);
        None
    }

    /// An exploration placement: a node still learning its speed (fewer than `min_samples`
    /// samples; at most one more job in flight than samples) or idle with a stale estimate gets
    /// a typical (median-cost) queued job. Tiny units are dominated by start-up costs and would
    /// teach a misleading speed; the largest risk the build's end.
    fn explore(&self, order: &[JobId], now: Millis) -> Option<Assignment> {
        if order.is_empty() {
            return None;
        }
        let stale_before = now.saturating_sub(self.cfg.stale_ms);
        for id in self.index.exploration_candidates(stale_before) {
            let Some(n) = self.nodes.get(&id) else { continue };
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
                    node: id,
                    preload: false,
                    install: *install,
                    explore: true,
                    hedge_of: self.jobs.get(job).and_then(|j| j.hedge_of),
                });
            }
        }
        None
    }

    /// Rate of the fastest measured node (the optimistic guess for unmeasured ones).
    fn reference_bps(&self) -> f64 {
        self.index.max_rate().unwrap_or(self.cfg.default_bps)
    }

    /// The job's estimated time on the node: the overhead its bytes cost there (transfer,
    /// set-up) plus its cost at the node's effective rate.
    /// (`mine`: the submitter's placed jobs, for its own host's factor.)
    /// The plan computes the same from a [`Cand`].
    fn duration_ms(&self, n: &Node, j: &super::Job, mine: usize) -> f64 {
        n.speed.overhead_ms_per_byte * j.spec.bytes_in as f64
            + j.work * 1000.0 / self.effective_bps(n, &j.spec.submitter, mine)
    }

    fn running_of(&self, submitter: &str) -> usize {
        self.running_by_submitter.get(submitter).copied().unwrap_or(0)
    }

    /// (An unmeasured node is assumed as fast as the fastest measured one.)
    fn effective_bps(&self, n: &Node, submitter: &str, mine: usize) -> f64 {
        let mut bps = if n.speed.samples < self.cfg.min_samples {
            n.rate_bps().max(self.reference_bps())
        } else {
            n.rate_bps()
        };
        bps *= fill_factor(n, self.cfg.fill_weight);
        if n.spec.host == submitter {
            bps *= home_factor(mine, n.spec.slots as usize);
        } else {
            bps *= cpu_share(n.load.foreign_load);
        }
        bps.max(1.0)
    }

    fn commit(&mut self, a: Assignment, now: Millis) {
        let Some(job) = self.jobs.get(&a.job) else { return };
        let Some(n) = self.nodes.get(&a.node) else { return };
        let mine = self.running_of(&job.spec.submitter);
        let known = job.known;
        let mut est = self.duration_ms(n, job, mine);
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
            if n.assigned.is_empty() {
                n.progress_at = now;
            }
            n.assigned.push(Slot { job: a.job, at: now, est, known });
            n.placed_total += 1;
            if a.explore {
                n.exploring = true;
            }
            if a.install {
                n.installing = Some(toolchain);
            }
        }
        self.reindex(a.node);
    }
}
