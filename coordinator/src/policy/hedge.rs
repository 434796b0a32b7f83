//! Hedging stalled nodes. A node whose running job that should end first has not ended within
//! `hedge_factor` times its estimate plus `hedge_grace_ms` (counted from the later of its
//! placement and the node's last finished job), and which has finished nothing since, is
//! *stalled*: dead before the farm has noticed, or stopped, or swapping. It gets no new jobs
//! until it finishes one (or, its jobs all gone to their twins, reports again: a stopped node
//! does not), and each of its jobs is queued again as a *twin* (at most one per job); the submitter
//! runs both copies and keeps the first to finish, and [`Scheduler::finish`] withdraws the
//! other. Only estimates that rest on measurements count: a node still learning its speed, or
//! a unit never seen before, is never judged.
//!
//! Estimates are stretched by how late finished jobs have been lately ([`Lateness`]), so a farm
//! slowed as a whole does not look stalled. The check runs at most every [`CHECK_EVERY_MS`], so
//! a dispatch costs the same whatever the farm's size.

use super::{Job, Millis, NodeId, Scheduler};

/// How often dispatch looks for stalled nodes.
pub const CHECK_EVERY_MS: Millis = 20;

/// A moving average of how late finished jobs were against their estimates, so that a farm
/// slowed as a whole (oversubscribed hosts, a loaded network) does not look stalled.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lateness(f64);

impl Default for Lateness {
    fn default() -> Self {
        Lateness(1.0)
    }
}

impl Lateness {
    /// Weight of each new observation.
    const ALPHA: f64 = 0.1;

    /// Estimates are stretched by this much (never shrunk: an early job proves nothing).
    pub(super) fn factor(self) -> f64 {
        self.0.max(1.0)
    }

    fn add(&mut self, ratio: f64) {
        self.0 += Self::ALPHA * (ratio.clamp(0.25, 20.0) - self.0);
    }
}

impl Scheduler {
    /// Marks nodes that stopped making progress and queues twins for their jobs.
    pub(super) fn hedge_stalled(&mut self, now: Millis) {
        if self.cfg.hedge_factor <= 0.0 || now < self.next_hedge_check {
            return;
        }
        self.next_hedge_check = now + CHECK_EVERY_MS;
        let stalled: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.stalled && !n.assigned.is_empty())
            .filter(|(_, n)| n.speed.samples >= self.cfg.min_samples)
            .filter(|(_, n)| {
                // The running job that should end first, counted from the later of its
                // placement and the node's last progress, is long overdue.
                let running = n.assigned.len().min(n.spec.slots.max(1) as usize);
                let due = n.assigned[..running]
                    .iter()
                    .filter(|s| s.known)
                    .map(|s| {
                        let start = s.at.max(n.progress_at) as f64;
                        let expected = s.est * self.lateness.factor();
                        start + self.cfg.hedge_factor * expected + self.cfg.hedge_grace_ms
                    })
                    .fold(f64::INFINITY, f64::min);
                now as f64 > due
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stalled {
            let Some(n) = self.nodes.get_mut(&id) else { continue };
            n.stalled = true;
            n.stalled_at = now;
            let jobs: Vec<_> = n.assigned.iter().map(|s| s.job).collect();
            self.reindex(id);
            for job in jobs {
                self.add_twin(job);
            }
        }
    }

    /// Queues a twin of a placed job that has none yet.
    fn add_twin(&mut self, job: super::JobId) {
        let Some(j) = self.jobs.get_mut(&job) else { return };
        if j.hedged || j.hedge_of.is_some() {
            return;
        }
        j.hedged = true;
        self.next_job += 1;
        let twin = self.next_job;
        j.twin = Some(twin);
        let spec = j.spec.clone();
        let work = j.work;
        let j_known = j.known;
        self.queue.push(spec.priority, &spec.submitter, twin, work);
        let copy = Job {
            spec,
            work,
            known: j_known,
            placed: None,
            twin: Some(job),
            hedge_of: Some(job),
            hedged: true,
        };
        self.jobs.insert(twin, copy);
    }

    /// Learns how late a finished job with a measured estimate was (its wall time includes any
    /// wait in its node's preload queue, so this errs towards patience).
    pub(super) fn learn_lateness(&mut self, job: super::JobId, wall_ms: u64) {
        let Some(node) = self.jobs.get(&job).and_then(|j| j.placed) else { return };
        let Some(n) = self.nodes.get(&node) else { return };
        if let Some(s) = n.assigned.iter().find(|s| s.job == job && s.known && s.est > 0.0) {
            self.lateness.add(wall_ms as f64 / s.est);
        }
    }

    /// A job ended (finished or withdrawn): its twin, if any, is withdrawn too.
    pub(super) fn drop_twin(&mut self, twin: Option<super::JobId>) {
        if let Some(t) = twin {
            self.remove_job(t);
        }
    }
}
