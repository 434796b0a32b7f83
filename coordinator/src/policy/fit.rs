//! The joint fit of unit costs and node rates from recent finished jobs.
//!
//! A job's compile time (scaled to the CPU share its node's foreign load left) is modelled as
//! `cost(unit) / rate(node)`. Neither is known: a node's rate measured on the agent's size
//! estimates depends on which units it happened to run (cost per byte varies tenfold between
//! units), and a unit's cost measured on one node inherits that node's error. So the fit keeps
//! the last observations and alternates the two ratio-of-sums estimates until they agree, with
//! the costs anchored to the size estimates' scale (so unseen units, estimated by size, compare
//! with seen ones). Keyless jobs count with their size estimate as a fixed cost. It refits after
//! a quarter of its window is new, so its cost is a small constant per finished job.

use std::collections::{HashMap, VecDeque};

use super::{NodeId, UnitKey};

/// Alternations per fit.
const ROUNDS: usize = 8;

/// One finished job.
#[derive(Debug, Clone, Copy)]
pub struct Obs {
    /// Its unit key (0: none).
    pub unit: UnitKey,
    /// Where it ran.
    pub node: NodeId,
    /// The agent's size estimate.
    pub size: f64,
    /// Its compile time with the CPU to itself, ms.
    pub full_ms: f64,
}

/// What a fit found: work per second of each node, cost of each unit (work units).
#[derive(Debug, Default)]
pub struct Fitted {
    /// Node rates.
    pub rates: HashMap<NodeId, f64>,
    /// Unit costs.
    pub costs: HashMap<UnitKey, f64>,
}

/// The observation window.
#[derive(Debug, Clone)]
pub struct Fit {
    obs: VecDeque<Obs>,
    cap: usize,
    pending: usize,
}

impl Default for Fit {
    fn default() -> Self {
        Fit::with_capacity(1024)
    }
}

impl Fit {
    /// A window of `cap` observations.
    pub fn with_capacity(cap: usize) -> Fit {
        Fit { obs: VecDeque::new(), cap: cap.max(1), pending: 0 }
    }

    /// Adds one observation (ignored unless its size and time are positive and finite).
    pub fn add(&mut self, o: Obs) {
        let good = |x: f64| x.is_finite() && x > 0.0;
        if !good(o.size) || !good(o.full_ms) {
            return;
        }
        if self.obs.len() == self.cap {
            self.obs.pop_front();
        }
        self.obs.push_back(o);
        self.pending += 1;
    }

    /// Whether enough is new to fit again.
    pub fn due(&self) -> bool {
        self.pending > 0 && self.pending >= self.obs.len() / 4
    }

    /// Fits rates and costs to the window.
    pub fn solve(&mut self) -> Fitted {
        self.pending = 0;
        let mut node_ix: HashMap<NodeId, usize> = HashMap::new();
        let mut unit_ix: HashMap<UnitKey, usize> = HashMap::new();
        let mut rows: Vec<Row> = Vec::with_capacity(self.obs.len());
        let mut unit_size: Vec<(f64, f64)> = Vec::new(); // (Σ size, count)
        for o in &self.obs {
            let next = node_ix.len();
            let n = *node_ix.entry(o.node).or_insert(next);
            let u = (o.unit != 0).then(|| {
                let next = unit_ix.len();
                let u = *unit_ix.entry(o.unit).or_insert(next);
                if u == unit_size.len() {
                    unit_size.push((0.0, 0.0));
                }
                unit_size[u].0 += o.size;
                unit_size[u].1 += 1.0;
                u
            });
            rows.push((u, n, o.size, o.full_ms));
        }
        let mut cost: Vec<f64> = unit_size.iter().map(|(s, c)| s / c).collect();
        let anchor: f64 = cost.iter().sum();
        for _ in 0..ROUNDS {
            let rate = rates(&rows, &cost, node_ix.len());
            let mut acc = vec![(0.0, 0.0); cost.len()];
            for (u, n, _, ms) in &rows {
                if let Some(u) = u {
                    acc[*u].0 += ms / 1000.0 * rate[*n];
                    acc[*u].1 += 1.0;
                }
            }
            for (c, (w, k)) in cost.iter_mut().zip(&acc) {
                *c = w / k;
            }
            let total: f64 = cost.iter().sum();
            if total > 0.0 {
                let scale = anchor / total;
                cost.iter_mut().for_each(|c| *c *= scale);
            }
        }
        // One last rate pass against the anchored costs.
        let rate = rates(&rows, &cost, node_ix.len());
        let rates = node_ix.iter().map(|(id, n)| (*id, rate[*n])).collect();
        let costs = unit_ix.iter().map(|(k, u)| (*k, cost[*u])).collect();
        Fitted { rates, costs }
    }
}

/// `(unit index, node index, size, ms)` of one observation.
type Row = (Option<usize>, usize, f64, f64);

/// Each node's rate: the costs of its jobs over their times (keyless jobs at their size).
fn rates(rows: &[Row], cost: &[f64], nodes: usize) -> Vec<f64> {
    let mut sums = vec![(0.0, 0.0); nodes];
    for (u, n, size, ms) in rows {
        sums[*n].0 += u.map_or(*size, |u| cost[u]);
        sums[*n].1 += ms / 1000.0;
    }
    sums.iter().map(|(w, s)| w / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two nodes (one twice as fast), three units whose cost per byte differs fourfold, each
    /// unit seen on one node only at first: the fit recovers both the rates and the costs.
    #[test]
    fn recovers_rates_and_costs_that_sizes_hide() {
        let mut f = Fit::default();
        // (unit, size, true cost); node 1 rate 2000/s, node 2 rate 1000/s.
        let units = [(1, 1000.0, 4000.0), (2, 1000.0, 1000.0), (3, 2000.0, 2000.0)];
        let mut t = |u: usize, node: NodeId, rate: f64| {
            let (key, size, cost) = units[u];
            f.add(Obs { unit: key, node, size, full_ms: cost / rate * 1000.0 });
        };
        t(0, 1, 2000.0);
        t(1, 2, 1000.0);
        t(2, 2, 1000.0);
        t(1, 1, 2000.0);
        t(2, 1, 2000.0);
        t(0, 2, 1000.0);
        assert!(f.due());
        let fit = f.solve();
        assert!(!f.due());
        let r = fit.rates[&1] / fit.rates[&2];
        assert!((r - 2.0).abs() < 0.01, "rate ratio {r}");
        let c = fit.costs[&1] / fit.costs[&2];
        assert!((c - 4.0).abs() < 0.01, "cost ratio {c}");
        // Anchored to the sizes' scale: the costs sum to the sizes' sum.
        let sum: f64 = fit.costs.values().sum();
        assert!((sum - 4000.0).abs() < 1.0, "{sum}");
    }
}
