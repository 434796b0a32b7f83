//! The wait queue when the farm is full: bands by priority (0 first), and within a band one
//! queue per submitter, served round-robin so one huge build cannot starve the others; each
//! submitter's jobs are kept largest estimated cost first (longest-processing-time order).

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::JobId;

/// One priority band.
#[derive(Debug, Default)]
struct Band {
    /// Submitters with queued jobs, in service order.
    turn: VecDeque<String>,
    /// Submitter → its queued jobs as `(cost, id)`, largest cost first (then oldest).
    jobs: HashMap<String, Vec<(f64, JobId)>>,
}

/// Queued jobs.
#[derive(Debug, Default)]
pub struct FairQueue {
    bands: BTreeMap<u8, Band>,
    len: usize,
}

impl FairQueue {
    /// Queued jobs in total.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a job with its estimated cost, in largest-first order within its submitter.
    pub fn push(&mut self, priority: u8, submitter: &str, job: JobId, cost: f64) {
        let band = self.bands.entry(priority).or_default();
        let list = match band.jobs.get_mut(submitter) {
            Some(list) => list,
            None => band.jobs.entry(submitter.to_string()).or_default(),
        };
        if list.is_empty() {
            band.turn.push_back(submitter.to_string());
        }
        let at = list.partition_point(|(c, j)| *c > cost || (*c == cost && *j < job));
        list.insert(at, (cost, job));
        self.len += 1;
    }

    /// Jobs queued for one submitter.
    pub fn queued_for(&self, submitter: &str) -> usize {
        self.bands.values().filter_map(|b| b.jobs.get(submitter)).map(Vec::len).sum()
    }

    /// Up to `limit` queued jobs in service order: bands by priority; within a band, the
    /// submitters in turn, each giving its next-largest job.
    pub fn order(&self, limit: usize, out: &mut Vec<JobId>) {
        out.clear();
        for band in self.bands.values() {
            let lists: Vec<&[(f64, JobId)]> = band
                .turn
                .iter()
                .filter_map(|s| band.jobs.get(s.as_str()).map(Vec::as_slice))
                .collect();
            let deepest = lists.iter().map(|l| l.len()).max().unwrap_or(0);
            for depth in 0..deepest {
                for list in &lists {
                    if let Some((_, job)) = list.get(depth) {
                        if out.len() >= limit {
                            return;
                        }
                        out.push(*job);
                    }
                }
            }
        }
    }

    /// Removes a served job; its submitter goes to the back of its band.
    pub fn take(&mut self, priority: u8, submitter: &str, job: JobId) {
        let Some(band) = self.bands.get_mut(&priority) else { return };
        let Some(list) = band.jobs.get_mut(submitter) else { return };
        let Some(pos) = list.iter().position(|(_, j)| *j == job) else { return };
        list.remove(pos);
        self.len -= 1;
        let now_empty = list.is_empty();
        if now_empty {
            band.jobs.remove(submitter);
        }
        if let Some(pos) = band.turn.iter().position(|s| s == submitter) {
            if let Some(name) = band.turn.remove(pos)
                && !now_empty
            {
                band.turn.push_back(name);
            }
        }
        if band.turn.is_empty() {
            self.bands.remove(&priority);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_first_and_submitters_in_turn() {
        let mut q = FairQueue::default();
        q.push(0, "a", 1, 10.0);
        q.push(0, "a", 2, 30.0);
        q.push(0, "a", 3, 20.0);
        q.push(0, "b", 4, 5.0);
        q.push(5, "c", 5, 99.0);
        let mut out = Vec::new();
        q.order(10, &mut out);
        assert_eq!(out, vec![2, 4, 3, 1, 5]);
        q.take(0, "a", 2);
        q.order(10, &mut out);
        assert_eq!(out, vec![4, 3, 1, 5], "a served: b's turn first");
        q.order(2, &mut out);
        assert_eq!(out, vec![4, 3]);
        assert_eq!(q.len(), 4);
        assert_eq!(q.queued_for("a"), 2);
    }
}
