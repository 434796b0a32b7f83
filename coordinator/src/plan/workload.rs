//! The simulator's inputs: a recorded job trace (per unit: compile CPU seconds, bytes in and
//! out, submit time; plus the final link) replayed as builds, and a package workload (packages
//! with build-order dependencies, compile work, serial parts, bytes), both turned into the
//! engine's [`SimBuild`]s.

use serde::{Deserialize, Serialize};

use super::PlanError;

/// The trace shipped with the bench, recorded from a real Lua 5.4 build.
pub const LUA_TRACE: &str = include_str!("../../../bench/traces/lua-5.4.json");

/// One compile unit of a trace.
#[derive(Debug, Clone, Deserialize)]
pub struct Unit {
    /// Source name.
    pub name: String,
    /// Compiler CPU seconds on a speed-1.0 node.
    pub cpu_s: f64,
    /// Preprocessed unit size.
    pub bytes_in: u64,
    /// Bytes of the unit from its main file (the agent's work estimate); 0 if not recorded.
    #[serde(default)]
    pub source_bytes: u64,
    /// Object size.
    pub bytes_out: u64,
    /// Submit time, seconds from the build's start.
    #[serde(default)]
    pub submit_s: f64,
}

/// The link: runs on the submitter after every unit of its build.
#[derive(Debug, Clone, Deserialize)]
pub struct Link {
    /// CPU seconds on the submitter.
    pub cpu_s: f64,
}

/// A recorded build.
#[derive(Debug, Clone, Deserialize)]
pub struct Trace {
    /// Where it came from.
    pub name: String,
    /// Its units.
    pub units: Vec<Unit>,
    /// Its link step.
    pub link: Link,
}

impl Trace {
    /// Parses a trace (JSON), refusing empty traces and negative or non-finite times.
    pub fn parse(text: &str) -> Result<Trace, PlanError> {
        let trace: Trace = serde_json::from_str(text)
            .map_err(|e| PlanError::Parse { what: "the trace".into(), message: e.to_string() })?;
        let bad = |m: &str| PlanError::Invalid(format!("the trace {m}"));
        if trace.units.is_empty() {
            return Err(bad("has no units"));
        }
        let times_ok = trace.units.iter().all(|u| u.cpu_s.is_finite() && u.cpu_s >= 0.0)
            && trace.units.iter().all(|u| u.submit_s.is_finite() && u.submit_s >= 0.0)
            && trace.link.cpu_s.is_finite()
            && trace.link.cpu_s >= 0.0;
        if !times_ok {
            return Err(bad("has negative or non-finite times"));
        }
        Ok(trace)
    }

    /// The shipped Lua trace.
    pub fn lua() -> Result<Trace, PlanError> {
        Trace::parse(LUA_TRACE)
    }

    /// The engine's builds: every build replays every unit, then the link.
    pub fn builds(&self, builds: &[Build]) -> Vec<SimBuild> {
        let units = sim_units(&self.units);
        builds
            .iter()
            .map(|b| SimBuild {
                name: self.name.clone(),
                submitter: b.submitter.clone(),
                start_s: b.start_s,
                deps: Vec::new(),
                pre_s: 0.0,
                units: units.clone(),
                post_s: self.link.cpu_s,
                jobs: 0,
            })
            .collect()
    }
}

/// The engine's units of a trace's `units`, keyed 1, 2, … in their order (the cost history's
/// keys: the same unit in every build of the trace).
pub fn sim_units(units: &[Unit]) -> Vec<SimUnit> {
    units
        .iter()
        .enumerate()
        .map(|(k, u)| SimUnit {
            cpu_s: u.cpu_s,
            bytes_in: u.bytes_in,
            work: u.source_bytes,
            bytes_out: u.bytes_out,
            submit_s: u.submit_s,
            key: k as u64 + 1,
        })
        .collect()
}

/// One replay of a trace by one submitter, starting at `start_s`.
#[derive(Debug, Clone)]
pub struct Build {
    /// The submitting host.
    pub submitter: String,
    /// Offset of the build's start.
    pub start_s: f64,
}

/// The bench's default replay: three builds from two submitters, the third a second later.
pub fn default_builds() -> Vec<Build> {
    vec![
        Build { submitter: "dev-a".into(), start_s: 0.0 },
        Build { submitter: "dev-b".into(), start_s: 0.0 },
        Build { submitter: "dev-a".into(), start_s: 1.0 },
    ]
}

/// A compile unit as the engine runs it.
#[derive(Debug, Clone)]
pub struct SimUnit {
    /// Compiler CPU seconds on a speed-1.0 node.
    pub cpu_s: f64,
    /// Bytes shipped to the node.
    pub bytes_in: u64,
    /// The placement policy's work estimate (main-file bytes).
    pub work: u64,
    /// Object bytes shipped back.
    pub bytes_out: u64,
    /// Submit time after the build's serial part before units.
    pub submit_s: f64,
    /// The unit's key (the same unit in every replay has the same key).
    pub key: u64,
}

/// A build as the engine runs it: after its dependencies (and not before `start_s`), `pre_s`
/// on its own host (configure), its units on the farm, then `post_s` on its own host (the
/// link, LTO, tests, packaging).
#[derive(Debug, Clone)]
pub struct SimBuild {
    /// What it builds.
    pub name: String,
    /// The host it runs on.
    pub submitter: String,
    /// Earliest start.
    pub start_s: f64,
    /// Builds (indices) it waits for.
    pub deps: Vec<usize>,
    /// Serial seconds before its units.
    pub pre_s: f64,
    /// Its compile units.
    pub units: Vec<SimUnit>,
    /// Serial seconds after its units.
    pub post_s: f64,
    /// `make -j`: units in flight at once (0: all, at their submit times).
    pub jobs: u32,
}

/// Where a package's figures came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CostSource {
    /// Given in the workload file (recorded by whoever wrote it).
    #[default]
    Given,
    /// The build queue's finished jobs (wall time; the serial share assumed).
    History,
    /// Estimated from source size and language: never built.
    Estimate,
}

/// One package to build.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Package {
    /// Source package name.
    pub name: String,
    /// Source packages it build-depends on (names; unknown names are ignored with a note).
    #[serde(default)]
    pub deps: Vec<String>,
    /// Compile CPU seconds in all, on a speed-1.0 core.
    pub compile_cpu_s: f64,
    /// Compile units (the compile work is split evenly over them).
    pub units: u32,
    /// Serial seconds before the units (configure).
    #[serde(default)]
    pub configure_s: f64,
    /// Serial seconds after the units (link, LTO, tests, packaging).
    #[serde(default)]
    pub serial_s: f64,
    /// Bytes shipped per unit (preprocessed source).
    #[serde(default = "default_unit_in")]
    pub bytes_in_per_unit: u64,
    /// Object bytes per unit.
    #[serde(default = "default_unit_out")]
    pub bytes_out_per_unit: u64,
    /// Built packages and logs kept for the repository, bytes.
    #[serde(default)]
    pub artefact_bytes: u64,
    /// `make -j` of its build (0: unlimited).
    #[serde(default)]
    pub jobs: u32,
    /// Where the figures came from.
    #[serde(default)]
    pub cost: CostSource,
}

fn default_unit_in() -> u64 {
    300_000
}

fn default_unit_out() -> u64 {
    20_000
}

/// A batch of packages.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Workload {
    /// What it is (a file name, a distribution).
    #[serde(default)]
    pub name: String,
    /// The packages.
    pub packages: Vec<Package>,
}

/// At most this many packages (more than any distribution has source packages).
pub const MAX_PACKAGES: usize = 200_000;
/// At most this many units per package (Chromium has ~50,000).
pub const MAX_UNITS: u32 = 1_000_000;
/// At most this many CPU seconds per package (about 11.5 CPU-days).
pub const MAX_CPU_S: f64 = 1.0e6;
/// Units the engine runs per package at most: larger packages are simulated with fewer, larger
/// units (same work; only the packing of the last units is coarser).
pub const SIM_UNITS_CAP: u32 = 64;

impl Workload {
    /// Refuses absurd figures: too many packages, negative, non-finite or absurd sizes.
    pub fn check(&self) -> Result<(), PlanError> {
        if self.packages.is_empty() {
            return Err(PlanError::Invalid("the workload has no packages".into()));
        }
        if self.packages.len() > MAX_PACKAGES {
            return Err(PlanError::Invalid(format!(
                "{} packages: more than {MAX_PACKAGES}",
                self.packages.len()
            )));
        }
        for p in &self.packages {
            let bad = |m: String| PlanError::Invalid(format!("package {:?}: {m}", p.name));
            for (what, v) in [
                ("compile_cpu_s", p.compile_cpu_s),
                ("configure_s", p.configure_s),
                ("serial_s", p.serial_s),
            ] {
                if !v.is_finite() || !(0.0..=MAX_CPU_S).contains(&v) {
                    return Err(bad(format!("{what} {v} is outside 0 to {MAX_CPU_S}")));
                }
            }
            if p.units > MAX_UNITS {
                return Err(bad(format!("{} units: more than {MAX_UNITS}", p.units)));
            }
            if p.compile_cpu_s > 0.0 && p.units == 0 {
                return Err(bad("compile work but no units".into()));
            }
            if p.bytes_in_per_unit > 1 << 32 || p.bytes_out_per_unit > 1 << 32 {
                return Err(bad("more than 4 GiB per unit".into()));
            }
            if p.artefact_bytes > 1 << 40 {
                return Err(bad("more than 1 TiB of artefacts".into()));
            }
        }
        Ok(())
    }

    /// The engine's builds, in the workload's order, dependencies by index (unknown names
    /// dropped, returned), every build on its own host.
    pub fn builds(&self) -> (Vec<SimBuild>, Vec<String>) {
        let index: std::collections::HashMap<&str, usize> =
            self.packages.iter().enumerate().map(|(i, p)| (p.name.as_str(), i)).collect();
        let mut unknown = Vec::new();
        let default_bps = crate::policy::PolicyConfig::default().default_bps;
        let builds = self
            .packages
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut deps: Vec<usize> = Vec::new();
                for d in &p.deps {
                    match index.get(d.as_str()) {
                        Some(&j) if j != i => deps.push(j),
                        Some(_) => {}
                        None => unknown.push(format!("{} -> {d}", p.name)),
                    }
                }
                deps.sort_unstable();
                deps.dedup();
                let n = p.units.min(SIM_UNITS_CAP);
                let scale = f64::from(p.units) / f64::from(n.max(1));
                let per = if n == 0 { 0.0 } else { p.compile_cpu_s / f64::from(n) };
                let units = (0..n)
                    .map(|k| SimUnit {
                        cpu_s: per,
                        bytes_in: (p.bytes_in_per_unit as f64 * scale) as u64,
                        // The policy's cold estimate (work over its default speed) then matches the
                        // unit's cost: no false stall, no hedge, before it has learned.
                        work: (per * default_bps) as u64,
                        bytes_out: (p.bytes_out_per_unit as f64 * scale) as u64,
                        submit_s: 0.0,
                        key: ((i as u64) << 20) | u64::from(k + 1),
                    })
                    .collect();
                SimBuild {
                    name: p.name.clone(),
                    submitter: format!("builder-{i}"),
                    start_s: 0.0,
                    deps,
                    pre_s: p.configure_s,
                    units,
                    post_s: p.serial_s,
                    jobs: p.jobs,
                }
            })
            .collect();
        (builds, unknown)
    }
}
