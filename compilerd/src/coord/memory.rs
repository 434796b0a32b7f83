//! What an agent remembers of its coordinated farm, so that it can go on placing units while no
//! coordinator answers: the workers of the coordinator's farm view (`Status`, asked on the
//! agent's own connection) and of its placements, with their slots and learned speeds.
//!
//! Hostile by default: only addresses a coordinator gave are remembered, each one a single
//! discomy worker (`host:port`, at most [`MAX_ADDRESS_LEN`] bytes), at most [`MAX_WORKERS`] of
//! them, slots clamped to [`MAX_SLOTS`], speeds finite. Workers the coordinator quarantined are
//! left out. Connecting to them follows the usual rules (farm token, handshake).

use std::collections::BTreeMap;
use std::sync::Mutex;

use discomy_protocol::coordinator::FarmStatus;

use crate::hosts::{HostKind, HostSpec, parse_host_list};

/// Most workers remembered.
pub const MAX_WORKERS: usize = 256;
/// Longest worker address remembered.
pub const MAX_ADDRESS_LEN: usize = 255;
/// Most slots a remembered worker is given.
pub const MAX_SLOTS: usize = 256;
/// Slots of a worker known from a placement only (no farm view named it yet).
const PLACEMENT_SLOTS: usize = 2;

/// One remembered worker.
#[derive(Debug, Clone, PartialEq)]
pub struct RememberedWorker {
    /// Where it is, with its slots as the limit.
    pub spec: HostSpec,
    /// Its learned speed, work bytes per wall second (0: not measured yet).
    pub speed: f64,
}

#[derive(Debug, Default)]
struct Inner {
    workers: BTreeMap<String, RememberedWorker>,
    /// Bumped on every change: whoever built something from the list rebuilds it.
    generation: u64,
    farm: Option<String>,
}

/// The remembered farm, filled by the agent's coordinator link, read by the agent's placement.
#[derive(Debug, Default)]
pub struct FarmMemory {
    inner: Mutex<Inner>,
}

/// `address` as one discomy worker with `slots` slots, or `None` when it is not an address a
/// worker could have (too long, a list, options, a distccd URL).
fn worker_spec(address: &str, slots: usize) -> Option<HostSpec> {
    if address.is_empty() || address.len() > MAX_ADDRESS_LEN {
        return None;
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '[' | ']');
    if !address.chars().all(allowed) {
        return None;
    }
    let mut hosts = parse_host_list(address).ok()?;
    if hosts.len() != 1 || hosts[0].kind != HostKind::Native {
        return None;
    }
    let mut spec = hosts.remove(0);
    spec.limit = slots.clamp(1, MAX_SLOTS);
    Some(spec)
}

impl FarmMemory {
    /// Learns the farm of a coordinator's status: its nodes replace what was remembered (a node
    /// that left the farm is forgotten), unless it lists none (a coordinator that has just
    /// started and whose nodes have not logged in again yet).
    pub fn learn_status(&self, status: &FarmStatus) {
        if status.nodes.is_empty() {
            return;
        }
        let mut workers = BTreeMap::new();
        for node in &status.nodes {
            if workers.len() >= MAX_WORKERS {
                break;
            }
            if status.quarantined.contains(&node.address) {
                continue;
            }
            let slots = usize::try_from(node.slots).unwrap_or(MAX_SLOTS);
            let Some(spec) = worker_spec(&node.address, slots) else { continue };
            let speed = Some(node.speed_wall_bps).filter(|s| s.is_finite() && *s > 0.0);
            workers.insert(
                node.address.clone(),
                RememberedWorker { spec, speed: speed.unwrap_or(0.0) },
            );
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.workers != workers {
            inner.workers = workers;
            inner.generation += 1;
        }
    }

    /// Learns a worker the coordinator placed a unit on (with a guessed slot count until a farm
    /// view names it).
    pub fn learn_placement(&self, address: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.workers.contains_key(address) || inner.workers.len() >= MAX_WORKERS {
            return;
        }
        if let Some(spec) = worker_spec(address, PLACEMENT_SLOTS) {
            inner.workers.insert(address.to_string(), RememberedWorker { spec, speed: 0.0 });
            inner.generation += 1;
        }
    }

    /// Notes the farm a coordinator welcomed the agent to: a coordinator of another farm makes
    /// the agent forget the workers of the previous one.
    pub fn joined_farm(&self, farm: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.farm.as_deref().is_some_and(|f| f != farm) && !inner.workers.is_empty() {
            inner.workers.clear();
            inner.generation += 1;
        }
        inner.farm = Some(farm.to_string());
    }

    /// The remembered workers, fastest first (unmeasured ones last), and the list's generation.
    pub fn workers(&self) -> (u64, Vec<RememberedWorker>) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut workers: Vec<RememberedWorker> = inner.workers.values().cloned().collect();
        workers.sort_by(|a, b| b.speed.total_cmp(&a.speed));
        (inner.generation, workers)
    }

    /// The list's generation (bumped on every change).
    pub fn generation(&self) -> u64 {
        self.inner.lock().map(|i| i.generation).unwrap_or(0)
    }

    /// How many workers are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.workers.len()).unwrap_or(0)
    }

    /// Whether no worker is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use discomy_protocol::coordinator::NodeStatus;

    fn node(address: &str, slots: u32, speed: f64) -> NodeStatus {
        NodeStatus { address: address.into(), slots, speed_wall_bps: speed, ..Default::default() }
    }

    #[test]
    fn only_plausible_addresses_within_bounds() {
        let memory = FarmMemory::default();
        let mut status = FarmStatus::default();
        status.nodes.push(node("10.0.0.1:3633", 8, 5e5));
        status.nodes.push(node("10.0.0.2:3633", 100_000, f64::NAN));
        status.nodes.push(node("a,b", 1, 1.0));
        status.nodes.push(node("distcc://x:1", 1, 1.0));
        status.nodes.push(node("h/3", 1, 1.0));
        status.nodes.push(node(&"x".repeat(300), 1, 1.0));
        status.nodes.push(node("10.0.0.9:3633", 4, 1.0));
        status.quarantined.push("10.0.0.9:3633".into());
        for i in 0..1000 {
            status.nodes.push(node(&format!("10.1.{}.{}:1", i / 250, i % 250), 1, 1.0));
        }
        memory.learn_status(&status);
        let (_, workers) = memory.workers();
        assert_eq!(workers.len(), MAX_WORKERS);
        assert_eq!(workers[0].spec.address(), "10.0.0.1:3633");
        assert_eq!(workers[0].spec.limit, 8);
        let big = workers.iter().find(|w| w.spec.host == "10.0.0.2").unwrap();
        assert_eq!((big.spec.limit, big.speed), (MAX_SLOTS, 0.0));
        assert!(workers.iter().all(|w| w.spec.host != "10.0.0.9" && w.spec.host.len() < 20));
    }

    #[test]
    fn placements_add_and_an_empty_view_keeps_the_list() {
        let memory = FarmMemory::default();
        memory.learn_placement("127.0.0.1:40000");
        memory.learn_placement("not an address");
        assert_eq!(memory.len(), 1);
        let generation = memory.generation();
        memory.learn_status(&FarmStatus::default());
        assert_eq!((memory.len(), memory.generation()), (1, generation));
        let mut status = FarmStatus::default();
        status.nodes.push(node("127.0.0.1:40001", 3, 0.0));
        memory.learn_status(&status);
        let (_, workers) = memory.workers();
        assert_eq!(workers.len(), 1, "a node no longer in the farm is forgotten");
        assert_eq!(workers[0].spec.limit, 3);
        memory.joined_farm("a");
        memory.joined_farm("b");
        assert!(memory.is_empty(), "another farm's workers are forgotten");
    }
}
