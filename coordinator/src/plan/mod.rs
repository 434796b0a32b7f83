//! `discomy plan`: the theoretical peak of a rebuild and the computing and storage it needs.
//!
//! - [`engine`]: the discrete-event simulator (virtual clock, node slots, transfers, builds
//!   after their dependencies with serial parts) and the lower bound; `discomy-bench sim`
//!   replays traces on it too.
//! - [`fleet`] / [`inventory`]: the fleet (an inventory file, or the coordinator's status).
//! - [`workload`] / [`import`] / [`estimate`]: packages, dependencies, costs (history or
//!   estimates), Debian `Sources` and repoquery lists, cycles.
//! - [`discomy`]: the coordinator's placement policy driven under simulation.
//! - [`model`]: bounds, bottleneck, storage; [`plot`]: the SVG of makespan against fleet size.
//!
//! - [`cli`]: `discomy plan`'s options and reading its files.
//!
//! [`run`] is pure: it takes the parsed inputs; the `discomy` binary asks the coordinator.

pub mod cli;
pub mod discomy;
pub mod engine;
pub mod estimate;
pub mod fleet;
pub mod import;
pub mod inventory;
pub mod model;
pub mod plot;
mod render;
pub mod workload;

use serde::Serialize;

use fleet::PlanFleet;
use model::Evaluation;
use workload::{CostSource, Workload};

/// Why a plan could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// An input did not parse.
    #[error("{what}: {message}")]
    Parse {
        /// Which input.
        what: String,
        /// The parser's complaint.
        message: String,
    },
    /// An input parsed but holds absurd or inconsistent figures.
    #[error("{0}")]
    Invalid(String),
    /// The packages' build dependencies form a cycle (`--break-cycles` drops edges instead).
    #[error("build-order cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// A file could not be read.
    #[error("{what}: {source}")]
    Io {
        /// Which file.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The plot could not be drawn.
    #[error("plot: {0}")]
    Plot(String),
}

/// What to compute besides the fleet as given.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// What-if: this many more nodes of this many slots.
    pub add_nodes: Option<(u32, u32)>,
    /// What-if: every link at this many bytes per second.
    pub link: Option<f64>,
    /// Compute the makespan-against-fleet-size curve.
    pub curve: bool,
    /// Drop dependencies on cycles instead of refusing.
    pub break_cycles: bool,
}

/// The workload as planned.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadSummary {
    /// Its name.
    pub name: String,
    /// Packages.
    pub packages: usize,
    /// Compile units.
    pub units: u64,
    /// Compile CPU seconds on a speed-1.0 core.
    pub compile_cpu_s: f64,
    /// Serial seconds (configure, link, tests) over all packages.
    pub serial_s: f64,
    /// Packages whose figures were given, came from history, were estimated.
    pub given: usize,
    /// See `given`.
    pub history: usize,
    /// See `given`.
    pub estimated: usize,
    /// The estimated packages (the first 50).
    pub estimated_packages: Vec<String>,
}

/// The fleet as planned.
#[derive(Debug, Clone, Serialize)]
pub struct FleetSummary {
    /// Where it came from.
    pub source: String,
    /// Nodes.
    pub nodes: usize,
    /// Compile slots.
    pub slots: u64,
    /// Speed-weighted slots.
    pub capacity: f64,
    /// Bytes per second into the fleet (`null`: unlimited, e.g. a build host's own cores).
    pub ingress_bps: Option<f64>,
    /// What the plan assumed.
    pub assumed: Vec<String>,
}

/// One what-if.
#[derive(Debug, Clone, Serialize)]
pub struct WhatIf {
    /// What changed.
    pub what: String,
    /// The figures with it.
    pub plan: Evaluation,
}

/// One point of the makespan-against-fleet-size curve.
#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    /// Nodes.
    pub nodes: usize,
    /// Slots.
    pub slots: u64,
    /// The simulator's makespan (with the network bound).
    pub expected_s: f64,
    /// The lower bound.
    pub lower_bound_s: f64,
}

/// `discomy plan`'s answer (`--json` prints it; the field names are a stable interface).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The workload.
    pub workload: WorkloadSummary,
    /// The fleet.
    pub fleet: FleetSummary,
    /// The figures on the fleet as given.
    pub plan: Evaluation,
    /// The what-ifs asked for.
    pub what_if: Vec<WhatIf>,
    /// Makespan against fleet size (empty unless asked for).
    pub curve: Vec<CurvePoint>,
    /// What was dropped, assumed or estimated on the way.
    pub notes: Vec<String>,
}

impl Report {
    /// The text output.
    pub fn render_text(&self) -> String {
        render::text(self)
    }
}

/// The fleet grown or shrunk to `n` nodes: the first `n`, or copies of its nodes in turn.
pub fn scaled(fleet: &PlanFleet, n: usize) -> PlanFleet {
    if n <= fleet.nodes.len() {
        return fleet.first(n);
    }
    let mut out = fleet.clone();
    for i in fleet.nodes.len()..n {
        let mut node = fleet.nodes[i % fleet.nodes.len()].clone();
        node.name = format!("{}+{}", node.name, i);
        node.host = node.name.clone();
        out.nodes.push(node);
    }
    out
}

/// Makes the plan: checks the workload (cycles refused unless broken), evaluates the fleet,
/// the what-ifs and, when asked, the curve.
pub fn run(
    fleet: &PlanFleet,
    workload: &Workload,
    opts: &PlanOptions,
) -> Result<Report, PlanError> {
    workload.check()?;
    if fleet.nodes.is_empty() {
        return Err(PlanError::Invalid("the fleet has no nodes".into()));
    }
    let mut notes = Vec::new();
    let mut workload = workload.clone();
    if let Some(cycle) = import::find_cycle(&workload) {
        if !opts.break_cycles {
            return Err(PlanError::Cycle(cycle));
        }
        let dropped = import::break_cycles(&mut workload);
        notes.push(format!(
            "cycles broken by dropping {} dependencies: {}",
            dropped.len(),
            dropped.join(", ")
        ));
    }
    let (builds, unknown) = workload.builds();
    if !unknown.is_empty() {
        notes.push(format!(
            "{} dependencies on packages outside the workload ignored",
            unknown.len()
        ));
    }
    tracing::debug!(packages = builds.len(), nodes = fleet.nodes.len(), "plan: evaluating");
    let plan = model::evaluate(&workload, &builds, fleet);
    let mut what_if = Vec::new();
    if let Some((count, slots)) = opts.add_nodes {
        let mut f = fleet.clone();
        f.add_nodes(count, slots);
        let what = format!("{count} more {slots}-slot nodes");
        what_if.push(WhatIf { what, plan: model::evaluate(&workload, &builds, &f) });
    }
    if let Some(bps) = opts.link {
        let mut f = fleet.clone();
        f.set_link(bps);
        let what = format!("links at {:.1} Mbit/s", bps * 8.0 / 1e6);
        what_if.push(WhatIf { what, plan: model::evaluate(&workload, &builds, &f) });
    }
    let mut curve = Vec::new();
    if opts.curve {
        let n = fleet.nodes.len();
        let mut sizes: Vec<usize> =
            [1, n / 8, n / 4, n / 2, n, 2 * n, 4 * n].into_iter().filter(|s| *s >= 1).collect();
        sizes.sort_unstable();
        sizes.dedup();
        for size in sizes {
            let f = scaled(fleet, size);
            let e = model::evaluate(&workload, &builds, &f);
            curve.push(CurvePoint {
                nodes: size,
                slots: f.slots(),
                expected_s: e.expected_s,
                lower_bound_s: e.lower_bound_s,
            });
        }
    }
    let count = |c: CostSource| workload.packages.iter().filter(|p| p.cost == c).count();
    let estimated: Vec<String> = workload
        .packages
        .iter()
        .filter(|p| p.cost == CostSource::Estimate)
        .map(|p| p.name.clone())
        .take(50)
        .collect();
    if !estimated.is_empty() {
        notes.push(format!(
            "{} packages never built: their costs are estimates from source size and language",
            count(CostSource::Estimate)
        ));
    }
    let ingress = fleet.ingress();
    Ok(Report {
        workload: WorkloadSummary {
            name: workload.name.clone(),
            packages: workload.packages.len(),
            units: workload.packages.iter().map(|p| u64::from(p.units)).sum(),
            compile_cpu_s: workload.packages.iter().map(|p| p.compile_cpu_s).sum(),
            serial_s: workload.packages.iter().map(|p| p.configure_s + p.serial_s).sum(),
            given: count(CostSource::Given),
            history: count(CostSource::History),
            estimated: count(CostSource::Estimate),
            estimated_packages: estimated,
        },
        fleet: FleetSummary {
            source: fleet.source.clone(),
            nodes: fleet.nodes.len(),
            slots: fleet.slots(),
            capacity: fleet.capacity(),
            ingress_bps: ingress.is_finite().then_some(ingress),
            assumed: fleet.assumed.clone(),
        },
        plan,
        what_if,
        curve,
        notes,
    })
}
