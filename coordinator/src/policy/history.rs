//! The cost history: what each unit (keyed by the agent's unit key: source name, arguments and
//! compiler) cost the last times it was compiled, in work units (the same units node speeds are
//! measured in), so a farm that rebuilds the same packages places their long units first and on
//! the fast nodes. Unseen units fall back to the agent's size estimate. Bounded: the oldest
//! entries are forgotten first.

use std::collections::{HashMap, VecDeque};

/// The agent's key for one unit; 0 means "no key" (never learned, never looked up).
pub type UnitKey = u64;

/// Weight of a new sample against the remembered cost.
const ALPHA: f64 = 0.5;

/// Learned per-unit costs.
#[derive(Debug, Clone)]
pub struct CostHistory {
    costs: HashMap<UnitKey, f64>,
    /// Keys in the order they were first learned, for eviction.
    order: VecDeque<UnitKey>,
    cap: usize,
}

impl Default for CostHistory {
    fn default() -> Self {
        CostHistory::with_capacity(200_000)
    }
}

impl CostHistory {
    /// A history that remembers at most `cap` units.
    pub fn with_capacity(cap: usize) -> CostHistory {
        CostHistory { costs: HashMap::new(), order: VecDeque::new(), cap: cap.max(1) }
    }

    /// The learned cost of `key`, if it was compiled before.
    pub fn estimate(&self, key: UnitKey) -> Option<f64> {
        if key == 0 { None } else { self.costs.get(&key).copied() }
    }

    /// Learns one measured cost (work units; non-finite or non-positive costs are ignored).
    pub fn learn(&mut self, key: UnitKey, cost: f64) {
        if key == 0 || !cost.is_finite() || cost <= 0.0 {
            return;
        }
        if let Some(c) = self.costs.get_mut(&key) {
            *c = *c * (1.0 - ALPHA) + cost * ALPHA;
            return;
        }
        while self.costs.len() >= self.cap {
            let Some(old) = self.order.pop_front() else { break };
            self.costs.remove(&old);
        }
        self.costs.insert(key, cost);
        self.order.push_back(key);
    }

    /// Replaces the cost of `key` (a fit's result).
    pub fn set(&mut self, key: UnitKey, cost: f64) {
        match self.costs.get_mut(&key) {
            Some(c) if cost.is_finite() && cost > 0.0 => *c = cost,
            Some(_) => {}
            None => self.learn(key, cost),
        }
    }

    /// Units remembered.
    pub fn len(&self) -> usize {
        self.costs.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.costs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_averages_and_forgets_the_oldest() {
        let mut h = CostHistory::with_capacity(2);
        assert_eq!(h.estimate(1), None);
        h.learn(1, 100.0);
        assert_eq!(h.estimate(1), Some(100.0));
        h.learn(1, 200.0);
        assert_eq!(h.estimate(1), Some(150.0));
        h.learn(0, 5.0); // no key: nothing learned
        h.learn(2, f64::NAN);
        assert_eq!(h.len(), 1);
        h.learn(2, 10.0);
        h.learn(3, 20.0); // full: unit 1 (the oldest) goes
        assert_eq!(h.estimate(1), None);
        assert_eq!(h.estimate(3), Some(20.0));
        assert_eq!(h.estimate(0), None);
    }
}
