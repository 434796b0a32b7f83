//! `discomy-bench sim --lto`: packages that end with LTO links, replayed from a recorded trace
//! (`bench/traces/lua-5.4-lto.json`, recorded by `scripts/record-lto-trace.sh`) on a fleet of
//! 32 nodes, with the LTRANS partitions compiled on the build host or on the farm.
//!
//! A package is one engine build of its compile units (on the farm), then one build per LTO
//! link, waiting on it: the WPA serial on the build host (`pre_s`), the LTRANS partitions, the
//! final link serial on the build host (`post_s`). Three ways to run the partitions:
//! - `local`: on the build host, `make -jN` over its N cores (`-flto=auto`): list scheduling of
//!   the partitions, in the makefile's order, folded into the serial part after the WPA;
//! - `farm -jN`: on the farm, at most N at once (discomy today: gcc's own `-jN`);
//! - `farm all`: on the farm, every partition at once (`DISCOMY_LTRANS_JOBS` ≥ partitions).

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use discomy_coordinator::plan::discomy::Discomy;
use discomy_coordinator::plan::engine::{lower_bound, simulate};
use discomy_coordinator::plan::fleet::SimNode;
use discomy_coordinator::plan::workload::{SimBuild, SimUnit, Unit, sim_units};

/// The shipped LTO trace.
pub const LUA_LTO_TRACE: &str = include_str!("../../traces/lua-5.4-lto.json");

/// Nodes of the LTO fleet.
pub const FLEET_NODES: usize = 32;
/// Slots of each node of the LTO fleet.
pub const FLEET_SLOTS: u32 = 8;
/// Build-host core counts the table compares (`-flto=auto`'s parallelism).
pub const HOST_CORES: &[u32] = &[2, 4, 8];
/// Package counts the table compares by default: one package alone, one per node, all at once
/// (`--lto-packages` for others: 96, three per node, saturates the farm, and takes minutes).
pub const PACKAGES: &[usize] = &[1, 32];

/// One LTRANS partition of a recorded link.
#[derive(Debug, Clone, Deserialize)]
pub struct Partition {
    /// `-dumpbase` of its LTRANS call (`lua.ltrans0.ltrans`).
    pub name: String,
    /// CPU seconds of its LTRANS compile.
    pub cpu_s: f64,
    /// The partition object WPA wrote.
    pub bytes_in: u64,
    /// The LTRANS object.
    pub bytes_out: u64,
}

/// One recorded LTO link.
#[derive(Debug, Clone, Deserialize)]
pub struct LtoLink {
    /// The program linked.
    pub name: String,
    /// CPU seconds of the whole-program analysis (serial, on the build host).
    pub wpa_s: f64,
    /// CPU seconds of the final link of the LTRANS objects (serial, on the build host).
    pub final_s: f64,
    /// Its partitions, in the makefile's order.
    pub partitions: Vec<Partition>,
}

/// A recorded LTO build: compile units, then LTO links that wait on all of them.
#[derive(Debug, Clone, Deserialize)]
pub struct LtoTrace {
    /// Where it came from.
    pub name: String,
    /// Compile units.
    pub units: Vec<Unit>,
    /// The LTO links.
    pub lto_links: Vec<LtoLink>,
}

impl LtoTrace {
    /// Parses a trace, refusing an empty one and negative or non-finite times.
    pub fn parse(text: &str) -> Result<LtoTrace> {
        let t: LtoTrace = serde_json::from_str(text).context("parsing the LTO trace")?;
        if t.units.is_empty() || t.lto_links.is_empty() {
            bail!("the LTO trace has no units or no LTO link");
        }
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        let times = t.units.iter().all(|u| ok(u.cpu_s) && ok(u.submit_s))
            && t.lto_links.iter().all(|l| {
                ok(l.wpa_s)
                    && ok(l.final_s)
                    && !l.partitions.is_empty()
                    && l.partitions.iter().all(|p| ok(p.cpu_s))
            });
        if !times {
            bail!("the LTO trace has a link without partitions, or negative or non-finite times");
        }
        Ok(t)
    }

    /// The shipped Lua trace.
    pub fn lua() -> Result<LtoTrace> {
        LtoTrace::parse(LUA_LTO_TRACE)
    }
}

/// Where the LTRANS partitions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ltrans {
    /// On the build host, over its cores.
    Local,
    /// On the farm, as many at once as the build host has cores.
    FarmHostJobs,
    /// On the farm, all at once.
    FarmAll,
}

impl Ltrans {
    /// Every mode, in table order.
    pub const ALL: [Ltrans; 3] = [Ltrans::Local, Ltrans::FarmHostJobs, Ltrans::FarmAll];

    /// Its key in the JSON.
    pub fn key(self) -> &'static str {
        match self {
            Ltrans::Local => "local",
            Ltrans::FarmHostJobs => "farm_host_jobs",
            Ltrans::FarmAll => "farm_all",
        }
    }
}

/// The fleet: [`FLEET_NODES`] LAN nodes of [`FLEET_SLOTS`] slots at the recording host's speed;
/// the build hosts are not in it.
pub fn fleet() -> Vec<SimNode> {
    (1..=FLEET_NODES).map(|i| SimNode::lan(&format!("n{i}"), 1.0, FLEET_SLOTS)).collect()
}

/// How long `cpu` (in order) takes on `cores` cores, each job to the first free core (what
/// `make -jN` does).
pub fn list_schedule(cpu: &[f64], cores: u32) -> f64 {
    let mut free = vec![0.0f64; cores.max(1) as usize];
    for c in cpu {
        let first = free.iter_mut().min_by(|a, b| a.total_cmp(b));
        if let Some(slot) = first {
            *slot += c;
        }
    }
    free.into_iter().fold(0.0, f64::max)
}

/// The engine's builds for `packages` packages (each on its own build host of `cores` cores,
/// all starting at 0), their LTRANS partitions run as `mode` says.
pub fn builds(trace: &LtoTrace, packages: usize, cores: u32, mode: Ltrans) -> Vec<SimBuild> {
    let units = sim_units(&trace.units);
    let mut out = Vec::new();
    for p in 0..packages {
        let host = format!("builder-{p}");
        let compile = out.len();
        out.push(SimBuild {
            name: format!("{} #{p}", trace.name),
            submitter: host.clone(),
            start_s: 0.0,
            deps: Vec::new(),
            pre_s: 0.0,
            units: units.clone(),
            post_s: 0.0,
            jobs: 0,
        });
        for (l, link) in trace.lto_links.iter().enumerate() {
            let cpu: Vec<f64> = link.partitions.iter().map(|x| x.cpu_s).collect();
            let partitions: Vec<SimUnit> = link
                .partitions
                .iter()
                .enumerate()
                .map(|(k, x)| SimUnit {
                    cpu_s: x.cpu_s,
                    bytes_in: x.bytes_in,
                    work: x.bytes_in,
                    bytes_out: x.bytes_out,
                    submit_s: 0.0,
                    key: 1_000_000 + (l as u64) * 1000 + k as u64,
                })
                .collect();
            let (units, post_s, jobs) = match mode {
                Ltrans::Local => (Vec::new(), list_schedule(&cpu, cores) + link.final_s, 0),
                Ltrans::FarmHostJobs => (partitions, link.final_s, cores),
                Ltrans::FarmAll => (partitions, link.final_s, 0),
            };
            out.push(SimBuild {
                name: format!("{} #{p}", link.name),
                submitter: host.clone(),
                start_s: 0.0,
                deps: vec![compile],
                pre_s: link.wpa_s,
                units,
                post_s,
                jobs,
            });
        }
    }
    out
}

/// One mode's figures: makespan (after a warm-up replay) and the lower bound.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// Makespan with discomy's policy.
    pub makespan_s: f64,
    /// The engine's lower bound for the same builds.
    pub bound_s: f64,
}

/// Simulates `packages` packages on hosts of `cores` cores over `nodes` with `mode`.
pub fn run_mode(
    trace: &LtoTrace,
    nodes: &[SimNode],
    packages: usize,
    cores: u32,
    mode: Ltrans,
) -> Figures {
    let b = builds(trace, packages, cores, mode);
    let bound_s = lower_bound(&b, nodes).seconds();
    let makespan_s = simulate(&b, nodes, &mut Discomy::new(nodes), false).makespan_s;
    Figures { makespan_s, bound_s }
}

/// One row of the table.
pub struct Row {
    /// Packages at once.
    pub packages: usize,
    /// Build-host cores.
    pub cores: u32,
    /// Figures per mode, in [`Ltrans::ALL`] order.
    pub figures: Vec<Figures>,
}

/// Every row: `packages` × [`HOST_CORES`].
pub fn table(trace: &LtoTrace, nodes: &[SimNode], packages: &[usize]) -> Vec<Row> {
    let mut rows = Vec::new();
    for &packages in packages {
        for &cores in HOST_CORES {
            let figures =
                Ltrans::ALL.iter().map(|m| run_mode(trace, nodes, packages, cores, *m)).collect();
            rows.push(Row { packages, cores, figures });
        }
    }
    rows
}

/// Prints the table, or the JSON.
pub fn run(
    trace_file: Option<&std::path::Path>,
    packages: Option<&[usize]>,
    as_json: bool,
) -> Result<i32> {
    let packages = packages.unwrap_or(PACKAGES);
    if packages.iter().any(|p| !(1..=1000).contains(p)) {
        bail!("--lto-packages: each count from 1 to 1000");
    }
    let trace = match trace_file {
        Some(p) => LtoTrace::parse(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )?,
        None => LtoTrace::lua()?,
    };
    let nodes = fleet();
    let rows = table(&trace, &nodes, packages);
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    if as_json {
        let rows: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut v = json!({"packages": r.packages, "host_cores": r.cores});
                for (m, f) in Ltrans::ALL.iter().zip(&r.figures) {
                    v[m.key()] =
                        json!({"makespan_s": r3(f.makespan_s), "lower_bound_s": r3(f.bound_s)});
                }
                v
            })
            .collect();
        let links: Vec<Value> = trace
            .lto_links
            .iter()
            .map(|l| {
                let parts: Vec<Value> = l
                    .partitions
                    .iter()
                    .map(|p| json!({"name": p.name, "cpu_s": p.cpu_s}))
                    .collect();
                json!({"name": l.name, "wpa_s": l.wpa_s, "final_s": l.final_s, "partitions": parts})
            })
            .collect();
        let out = json!({
            "trace": trace.name,
            "fleet": {"nodes": FLEET_NODES, "slots": FLEET_SLOTS, "link": "LAN 0.5 ms, 100 MB/s"},
            "compile_units": trace.units.len(),
            "lto_links": links,
            "rows": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    let cpu: f64 = trace.units.iter().map(|u| u.cpu_s).sum();
    println!("trace: {}", trace.name);
    println!(
        "fleet: {FLEET_NODES} nodes × {FLEET_SLOTS} slots (LAN); build hosts apart; discomy's policy after a warm-up replay"
    );
    println!("per package: {} compile units ({cpu:.2} CPU s), then", trace.units.len());
    for l in &trace.lto_links {
        let lt: f64 = l.partitions.iter().map(|p| p.cpu_s).sum();
        println!(
            "  link {}: WPA {:.3} s, {} LTRANS partitions ({lt:.3} CPU s, longest {:.3} s), final link {:.3} s",
            l.name,
            l.wpa_s,
            l.partitions.len(),
            l.partitions.iter().map(|p| p.cpu_s).fold(0.0, f64::max),
            l.final_s
        );
    }
    println!(
        "{:>8} {:>6} {:>12} {:>14} {:>12} {:>9} {:>9}",
        "packages", "cores", "local_s", "farm_-jcores_s", "farm_all_s", "bound_s", "all/local"
    );
    for r in &rows {
        let [l, h, a] = [r.figures[0], r.figures[1], r.figures[2]];
        println!(
            "{:>8} {:>6} {:>12.3} {:>14.3} {:>12.3} {:>9.3} {:>9.3}",
            r.packages,
            r.cores,
            l.makespan_s,
            h.makespan_s,
            a.makespan_s,
            a.bound_s,
            a.makespan_s / l.makespan_s
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_scheduling_is_make_j() {
        assert_eq!(list_schedule(&[3.0, 2.0, 1.0], 1), 6.0);
        assert_eq!(list_schedule(&[3.0, 2.0, 1.0], 2), 3.0);
        assert_eq!(list_schedule(&[1.0, 1.0, 4.0], 2), 5.0);
        assert_eq!(list_schedule(&[], 4), 0.0);
    }

    #[test]
    fn the_shipped_trace_has_partitioned_links() {
        let t = LtoTrace::lua().unwrap();
        assert!(t.units.len() >= 30, "{} units", t.units.len());
        assert!(t.lto_links.iter().all(|l| l.partitions.len() >= 2));
        assert!(LtoTrace::parse(r#"{"name":"x","units":[],"lto_links":[]}"#).is_err());
    }

    /// On an unsaturated farm the partitions never make a package later than on its build host
    /// (but for the partitions' transfers, when the host has a core for each), every makespan is
    /// at least its lower bound, and a farm running every partition at once beats a 2-core host.
    #[test]
    fn remote_ltrans_is_never_worse_than_local() {
        let t = LtoTrace::lua().unwrap();
        let nodes = fleet();
        // Every partition's round trip and transfer on the LAN, as if all ran one after another.
        let slack: f64 = t
            .lto_links
            .iter()
            .flat_map(|l| &l.partitions)
            .map(|p| 0.001 + (p.bytes_in + p.bytes_out) as f64 / 100e6)
            .sum();
        for (packages, cores) in [(1, 2), (1, 8), (4, 2)] {
            let f: Vec<Figures> =
                Ltrans::ALL.iter().map(|m| run_mode(&t, &nodes, packages, cores, *m)).collect();
            for (m, x) in Ltrans::ALL.iter().zip(&f) {
                assert!(x.makespan_s.is_finite(), "{m:?} did not finish");
                assert!(x.makespan_s >= x.bound_s - 1e-6, "{m:?}: {x:?} under its bound");
            }
            let (local, jobs, all) = (f[0].makespan_s, f[1].makespan_s, f[2].makespan_s);
            assert!(all <= jobs + 1e-6, "{packages}×{cores}: all {all} vs -j{cores} {jobs}");
            assert!(jobs <= local + slack, "{packages}×{cores}: farm {jobs} vs local {local}");
            if cores == 2 {
                assert!(all < local, "{packages}×{cores}: farm {all} vs local {local}");
            }
        }
    }

    #[test]
    fn the_simulation_is_deterministic() {
        let t = LtoTrace::lua().unwrap();
        let nodes = fleet();
        let a = run_mode(&t, &nodes, 4, 4, Ltrans::FarmAll).makespan_s;
        let b = run_mode(&t, &nodes, 4, 4, Ltrans::FarmAll).makespan_s;
        assert_eq!(a.to_bits(), b.to_bits());
    }
}
