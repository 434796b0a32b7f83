//! The nodes the plan may place on, ordered by an upper bound of their effective rate, kept up
//! to date as nodes change (load, rate, slot fill), so a placement visits the few fastest
//! candidates instead of every node; the smallest transfer overhead among them, for the
//! plan's bound; the nodes that may need exploring (learning with room for one more job, then
//! by the age of their estimate); and the fastest measured rate (the guess for unmeasured
//! nodes). Floats are kept as their bits: positive floats order like their bits.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use super::{Node, NodeId, PolicyConfig, cpu_share};

/// Where a node is filed, so it can be taken out again.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keys {
    plan: Option<(u64, u64)>,
    age: Option<u64>,
    rate: Option<u64>,
}

/// The index.
#[derive(Debug, Default)]
pub struct NodeIndex {
    /// Plannable nodes by rate bound, highest first.
    by_ub: BTreeSet<(Reverse<u64>, NodeId)>,
    /// Overheads per byte of plannable nodes (multiset).
    ovhs: BTreeMap<u64, usize>,
    /// `(0 while learning, else when its last sample was taken, id)`.
    by_age: BTreeSet<(u64, NodeId)>,
    /// Rates of measured nodes (multiset).
    rates: BTreeMap<u64, usize>,
}

/// `1 - w * fill`: SMT and clock ramping make a fuller node slower per job.
pub fn fill_factor(n: &Node, weight: f64) -> f64 {
    let slots = n.spec.slots.max(1) as usize;
    1.0 - weight * n.assigned.len().min(slots) as f64 / slots as f64
}

/// An upper bound of the node's effective rate for any job: its learned rate with the fill
/// discount and its foreign load's share, or the submitter factor at its best (×1.1) when it
/// is some submitter's host.
pub fn rate_bound(n: &Node, cfg: &PolicyConfig) -> f64 {
    let share = cpu_share(n.load.foreign_load);
    let best = if n.submitters_host { share.max(1.1) } else { share };
    (n.rate_bps() * fill_factor(n, cfg.fill_weight) * best).max(1.0)
}

/// Whether the plan may place on the node: it has slots, foreign load leaves it room, and its
/// speed is measured (a learning node takes exploration jobs only).
pub fn plannable(n: &Node, cfg: &PolicyConfig) -> bool {
    n.spec.slots > 0 && n.load.foreign_load < 1000 && n.speed.samples >= cfg.min_samples
}

fn add(set: &mut BTreeMap<u64, usize>, k: u64) {
    *set.entry(k).or_default() += 1;
}

fn sub(set: &mut BTreeMap<u64, usize>, k: u64) {
    if let Some(c) = set.get_mut(&k) {
        *c -= 1;
        if *c == 0 {
            set.remove(&k);
        }
    }
}

impl NodeIndex {
    /// Files the node anew after it changed.
    pub fn update(&mut self, id: NodeId, n: &mut Node, cfg: &PolicyConfig) {
        self.remove(id, n);
        let mut keys = Keys::default();
        if plannable(n, cfg) {
            let ub = rate_bound(n, cfg).to_bits();
            let ovh = n.speed.overhead_ms_per_byte.max(0.0).to_bits();
            self.by_ub.insert((Reverse(ub), id));
            add(&mut self.ovhs, ovh);
            keys.plan = Some((ub, ovh));
        }
        let learning = n.speed.samples < cfg.min_samples;
        // A learning node with as many jobs in flight as samples waits for them.
        if !learning || n.assigned.len() <= n.speed.samples as usize {
            let age = if learning { 0 } else { n.speed.last_sample };
            self.by_age.insert((age, id));
            keys.age = Some(age);
        }
        if n.speed.samples > 0 {
            let rate = n.rate_bps().max(0.0).to_bits();
            add(&mut self.rates, rate);
            keys.rate = Some(rate);
        }
        n.keys = keys;
    }

    /// Takes the node out.
    pub fn remove(&mut self, id: NodeId, n: &mut Node) {
        let keys = std::mem::take(&mut n.keys);
        if let Some((ub, ovh)) = keys.plan {
            self.by_ub.remove(&(Reverse(ub), id));
            sub(&mut self.ovhs, ovh);
        }
        if let Some(age) = keys.age {
            self.by_age.remove(&(age, id));
        }
        if let Some(rate) = keys.rate {
            sub(&mut self.rates, rate);
        }
    }

    /// Plannable nodes, fastest bound first: `(bound, id)`.
    pub fn iter(&self) -> impl Iterator<Item = (f64, NodeId)> + '_ {
        self.by_ub.iter().map(|(Reverse(ub), id)| (f64::from_bits(*ub), *id))
    }

    /// Nodes still learning (with room for one more job), then nodes whose last sample is
    /// older than `stale_before`.
    pub fn exploration_candidates(&self, stale_before: u64) -> impl Iterator<Item = NodeId> + '_ {
        self.by_age
            .iter()
            .take_while(move |(age, _)| *age == 0 || *age < stale_before)
            .map(|(_, id)| *id)
    }

    /// The smallest overhead per byte among plannable nodes.
    pub fn min_overhead(&self) -> f64 {
        self.ovhs.keys().next().map_or(0.0, |b| f64::from_bits(*b))
    }

    /// The fastest measured rate, if any node is measured.
    pub fn max_rate(&self) -> Option<f64> {
        self.rates.keys().next_back().map(|b| f64::from_bits(*b))
    }
}
