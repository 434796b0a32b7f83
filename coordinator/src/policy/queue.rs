//! The wait queue when the farm is full: bands by priority (0 first), and within a band one
//! queue per submitter, served round-robin so one huge build cannot starve the others.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::JobId;

/// Queued jobs.
#[derive(Debug, Default)]
pub struct FairQueue {
    /// Priority band → submitters with queued jobs, in service order.
    bands: BTreeMap<u8, VecDeque<String>>,
    /// (priority, submitter) → its queued jobs, oldest first.
    jobs: HashMap<(u8, String), Vec<JobId>>,
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

    /// Adds a job at the back of its submitter's queue (or the front, for a re-placed job).
    pub fn push(&mut self, priority: u8, submitter: &str, job: JobId, front: bool) {
        let key = (priority, submitter.to_string());
        let list = self.jobs.entry(key).or_default();
        if list.is_empty() {
            self.bands.entry(priority).or_default().push_back(submitter.to_string());
        }
        if front {
            list.insert(0, job);
        } else {
            list.push(job);
        }
        self.len += 1;
    }

    /// Jobs queued for one submitter.
    pub fn queued_for(&self, submitter: &str) -> usize {
        self.jobs.iter().filter(|((_, s), _)| s == submitter).map(|(_, l)| l.len()).sum()
    }

    /// The service order: for each band (highest priority first), its submitters in turn.
    pub fn order(&self) -> Vec<(u8, String)> {
        self.bands.iter().flat_map(|(p, subs)| subs.iter().map(move |s| (*p, s.clone()))).collect()
    }

    /// The jobs of one submitter in one band.
    pub fn jobs_of(&self, priority: u8, submitter: &str) -> &[JobId] {
        self.jobs.get(&(priority, submitter.to_string())).map_or(&[], |v| v.as_slice())
    }

    /// Removes a served job; its submitter goes to the back of its band.
    pub fn take(&mut self, priority: u8, submitter: &str, job: JobId) {
        let key = (priority, submitter.to_string());
        let Some(list) = self.jobs.get_mut(&key) else { return };
        let Some(pos) = list.iter().position(|j| *j == job) else { return };
        list.remove(pos);
        self.len -= 1;
        let now_empty = list.is_empty();
        if now_empty {
            self.jobs.remove(&key);
        }
        if let Some(band) = self.bands.get_mut(&priority) {
            band.retain(|s| s != submitter);
            if !now_empty {
                band.push_back(submitter.to_string());
            }
            if band.is_empty() {
                self.bands.remove(&priority);
            }
        }
    }
}
