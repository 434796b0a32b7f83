//! What `discomy plan` says about one fleet: the lower bound's parts (dependency chain with its
//! serial parts, total work over capacity, bytes over the links), the simulator's makespan, the
//! bottleneck, and the storage a rebuild needs.

use serde::Serialize;

use super::discomy::Discomy;
use super::engine::{lower_bound, simulate_after};
use super::fleet::PlanFleet;
use super::workload::{SimBuild, SimUnit, Workload};

/// Toolchain store per node: one target's compiler, binutils and headers as shipped, with room
/// for the next version during an upgrade (an assumption; `discomy stats --worker` shows it).
pub const TOOLCHAIN_STORE_BYTES: u64 = 1 << 30;

/// What limits the rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bottleneck {
    /// Compile work over the fleet's capacity: more nodes help.
    Cpu,
    /// The dependency chain: the build hosts' serial parts (configure, link, tests) and each
    /// build's own width (`make -j`); more nodes do not help.
    Serial,
    /// Bytes shipped per unit over the links.
    Network,
    /// A node's disk is too small for its stores.
    Storage,
}

impl Bottleneck {
    /// Its name in the text output.
    pub fn as_str(self) -> &'static str {
        match self {
            Bottleneck::Cpu => "cpu",
            Bottleneck::Serial => "serial",
            Bottleneck::Network => "network",
            Bottleneck::Storage => "storage",
        }
    }
}

/// Storage a rebuild needs.
#[derive(Debug, Clone, Serialize)]
pub struct Storage {
    /// Every unit's object once (the farm's object cache after a full rebuild).
    pub object_cache_bytes: u64,
    /// Toolchain stores on all nodes.
    pub toolchain_bytes: u64,
    /// Built packages and logs in the build queue's store.
    pub artefact_bytes: u64,
    /// The published repositories (a copy of the artefacts).
    pub repository_bytes: u64,
    /// All of it.
    pub total_bytes: u64,
    /// Per node: its toolchain store and its share of the object cache.
    pub per_node_bytes: u64,
    /// Nodes whose known disk is smaller than that.
    pub short_nodes: Vec<String>,
}

/// One fleet's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Nodes.
    pub nodes: usize,
    /// Compile slots.
    pub slots: u64,
    /// max(chain, work, network).
    pub lower_bound_s: f64,
    /// The longest dependency chain with its serial parts.
    pub chain_s: f64,
    /// Serial seconds (configure, link, tests) on that chain.
    pub chain_serial_s: f64,
    /// The chain's packages, first to last.
    pub critical_path: Vec<String>,
    /// Total compile work over capacity.
    pub work_s: f64,
    /// Shipped bytes over the fleet's ingress.
    pub network_s: f64,
    /// The simulator's makespan (discomy's policy, the engine's per-unit transfers).
    pub simulated_s: f64,
    /// max(simulated, network): the engine does not model links shared between transfers.
    pub expected_s: f64,
    /// Fleet busy share over the expected makespan: work / (capacity × expected).
    pub utilisation: f64,
    /// What limits it.
    pub bottleneck: Bottleneck,
    /// Storage.
    pub storage: Storage,
}

/// Bytes every unit ships (in and out), over the whole workload (uncapped unit counts).
pub fn shipped_bytes(w: &Workload) -> f64 {
    w.packages
        .iter()
        .map(|p| f64::from(p.units) * (p.bytes_in_per_unit + p.bytes_out_per_unit) as f64)
        .sum()
}

/// Storage for the workload on the fleet.
pub fn storage(w: &Workload, fleet: &PlanFleet) -> Storage {
    let objects: u64 = w
        .packages
        .iter()
        .map(|p| u64::from(p.units).saturating_mul(p.bytes_out_per_unit))
        .fold(0, u64::saturating_add);
    let artefacts: u64 = w
        .packages
        .iter()
        .map(|p| {
            if p.artefact_bytes > 0 {
                p.artefact_bytes
            } else {
                u64::from(p.units).saturating_mul(p.bytes_out_per_unit).saturating_mul(2)
            }
        })
        .fold(0, u64::saturating_add);
    let nodes = fleet.nodes.len().max(1) as u64;
    let toolchains = TOOLCHAIN_STORE_BYTES.saturating_mul(nodes);
    let per_node = TOOLCHAIN_STORE_BYTES.saturating_add(objects / nodes);
    let short_nodes = fleet
        .nodes
        .iter()
        .filter(|n| n.disk_bytes > 0 && n.disk_bytes < per_node)
        .map(|n| n.name.clone())
        .collect();
    Storage {
        object_cache_bytes: objects,
        toolchain_bytes: toolchains,
        artefact_bytes: artefacts,
        repository_bytes: artefacts,
        total_bytes: objects
            .saturating_add(toolchains)
            .saturating_add(artefacts)
            .saturating_add(artefacts),
        per_node_bytes: per_node,
        short_nodes,
    }
}

/// A warm-up for the policy: four one-second units per slot, so that every node is measured
/// (a coordinator that has run builds before; a cold one explores each node first).
pub fn calibration(fleet: &PlanFleet) -> Vec<SimBuild> {
    let default_bps = crate::policy::PolicyConfig::default().default_bps;
    let count = fleet.slots().saturating_mul(4).min(1 << 20);
    let units = (0..count)
        .map(|k| SimUnit {
            cpu_s: 1.0,
            bytes_in: 0,
            work: default_bps as u64,
            bytes_out: 0,
            submit_s: 0.0,
            key: u64::MAX - k,
        })
        .collect();
    vec![SimBuild {
        name: "calibration".into(),
        submitter: "calibration".into(),
        start_s: 0.0,
        deps: Vec::new(),
        pre_s: 0.0,
        units,
        post_s: 0.0,
        jobs: 0,
    }]
}

/// Evaluates the workload on a fleet: bounds, simulation (discomy's policy after a
/// [`calibration`] warm-up), bottleneck, storage.
pub fn evaluate(w: &Workload, builds: &[SimBuild], fleet: &PlanFleet) -> Evaluation {
    let bound = lower_bound(builds, &fleet.nodes);
    let ingress = fleet.ingress();
    let network_s =
        if ingress.is_finite() && ingress > 0.0 { shipped_bytes(w) / ingress } else { 0.0 };
    let mut policy = Discomy::new(&fleet.nodes);
    let warm_up = calibration(fleet);
    let simulated_s = simulate_after(&warm_up, builds, &fleet.nodes, &mut policy).makespan_s;
    let expected_s = simulated_s.max(network_s);
    let work: f64 = builds.iter().flat_map(|b| &b.units).map(|u| u.cpu_s).sum();
    let capacity = fleet.capacity();
    let utilisation = if expected_s > 0.0 && capacity > 0.0 && expected_s.is_finite() {
        (work / (capacity * expected_s)).min(1.0)
    } else {
        0.0
    };
    let storage = storage(w, fleet);
    let lower_bound_s = bound.chain_s.max(bound.work_s).max(network_s);
    let bottleneck = if !storage.short_nodes.is_empty() {
        Bottleneck::Storage
    } else if network_s >= bound.chain_s.max(bound.work_s) && network_s > 0.0 {
        Bottleneck::Network
    } else if bound.chain_s >= bound.work_s {
        Bottleneck::Serial
    } else {
        Bottleneck::Cpu
    };
    let chain_serial_s = bound.path.iter().map(|&b| builds[b].pre_s + builds[b].post_s).sum();
    Evaluation {
        nodes: fleet.nodes.len(),
        slots: fleet.slots(),
        lower_bound_s,
        chain_s: bound.chain_s,
        chain_serial_s,
        critical_path: bound.path.iter().map(|&b| builds[b].name.clone()).collect(),
        work_s: bound.work_s,
        network_s,
        simulated_s,
        expected_s,
        utilisation,
        bottleneck,
        storage,
    }
}
