//! `discomy-bench sim`: replays a job trace over simulated fleets with a virtual clock and
//! compares placement policies by makespan against the lower bound. The engine, node model,
//! trace and discomy's policy adapter are `discomy_coordinator::plan` (which `discomy plan`
//! uses too); this command keeps the generated fleets and the peer policies. With `--lto`, it
//! replays packages that end with LTO links instead ([`lto`]).

mod fleet;
mod lto;
mod policies;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};
use std::path::PathBuf;

use discomy_coordinator::plan::discomy::Discomy;
use discomy_coordinator::plan::engine::{SimPolicy, lower_bound, simulate};
use discomy_coordinator::plan::fleet::SimNode;
use discomy_coordinator::plan::workload::{SimBuild, Trace, default_builds};
use policies::{Fifo, IcecreamFastest, LeastLoaded, Random, RoundRobin};

/// The shipped trace, or one from a file.
fn load_trace(path: Option<&std::path::Path>) -> Result<Trace> {
    let trace = match path {
        Some(p) => Trace::parse(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )?,
        None => Trace::lua()?,
    };
    Ok(trace)
}

/// `sim` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON (`{"fleets": {...}, "policies": {...}}`) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// A trace file (default: the shipped bench/traces/lua-5.4.json).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Only this fleet (uniform, hetero, wan, loaded, flaky).
    #[arg(long)]
    pub fleet: Option<String>,
    /// No warm-up replay: the policies start knowing nothing (a coordinator that never saw
    /// these units).
    #[arg(long)]
    pub cold: bool,
    /// Packages ending with LTO links (a recorded trace: WPA, LTRANS partitions, final link) on
    /// a 32-node fleet: makespan with the partitions on the build host and on the farm.
    #[arg(long)]
    pub lto: bool,
    /// An LTO trace file for `--lto` (default: the shipped bench/traces/lua-5.4-lto.json).
    #[arg(long, requires = "lto")]
    pub lto_trace: Option<PathBuf>,
    /// Package counts for `--lto`, comma-separated (default 1,32).
    #[arg(long, requires = "lto", value_delimiter = ',')]
    pub lto_packages: Option<Vec<usize>>,
}

const POLICIES: &[&str] = &["discomy", "random", "round-robin", "least-loaded", "icecream-fastest"];

fn policy(name: &str, nodes: &[SimNode]) -> Box<dyn SimPolicy> {
    match name {
        "discomy" => Box::new(Discomy::new(nodes)),
        "random" => Box::new(Fifo::new(Random(0x9E37_79B9_7F4A_7C15))),
        "round-robin" => Box::new(Fifo::new(RoundRobin::default())),
        "least-loaded" => Box::new(Fifo::new(LeastLoaded)),
        _ => Box::new(Fifo::new(IcecreamFastest::default())),
    }
}

/// Runs the simulation. Whether discomy met its targets is reported (`targets_met`), not
/// turned into an exit code.
pub fn run(args: &Args) -> Result<i32> {
    if args.lto {
        if args.trace.is_some() || args.fleet.is_some() || args.cold {
            bail!("--lto takes none of --trace, --fleet, --cold (see --lto-trace)");
        }
        return lto::run(args.lto_trace.as_deref(), args.lto_packages.as_deref(), args.json);
    }
    let trace = load_trace(args.trace.as_deref())?;
    let builds: Vec<SimBuild> = trace.builds(&default_builds());
    let mut fleets = fleet::fleets();
    if let Some(only) = &args.fleet {
        fleets.retain(|f| f.name == only);
        if fleets.is_empty() {
            bail!("no fleet named {only}");
        }
    }
    let mut by_fleet = Map::new();
    let mut met = true;
    let mut table = Vec::new();
    for f in &fleets {
        let lb = lower_bound(&builds, &f.nodes).seconds();
        let mut pols = Map::new();
        let mut spans = Vec::new();
        for name in POLICIES {
            let mut p = policy(name, &f.nodes);
            let out = simulate(&builds, &f.nodes, p.as_mut(), args.cold);
            spans.push(out.makespan_s);
            pols.insert(
                (*name).to_string(),
                json!({"makespan_s": round3(out.makespan_s), "lower_bound_s": round3(lb), "ratio": round3(out.makespan_s / lb)}),
            );
        }
        let ours = spans[0];
        let beats = spans[1..].iter().all(|s| ours < *s);
        let ok = ours <= 1.10 * lb && beats;
        met &= ok;
        table.push((f.name, lb, spans, ok));
        by_fleet.insert(f.name.to_string(), json!({"policies": pols, "target_met": ok}));
    }
    if args.json {
        // `policies` holds the first fleet's figures (the hetero one when filtered), for tools
        // that read one fleet; `fleets` holds them all.
        let first = fleets.first().map(|f| f.name).unwrap_or_default();
        let policies =
            by_fleet.get(first).and_then(|v| v.get("policies")).cloned().unwrap_or(Value::Null);
        let out = json!({"trace": trace.name, "builds": builds.len(), "warm_up": !args.cold, "policies": policies, "fleets": by_fleet, "targets_met": met});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let warm = if args.cold { "no warm-up" } else { "after a warm-up replay" };
        println!(
            "trace: {} ({} units × {} builds, {warm})",
            trace.name,
            trace.units.len(),
            builds.len()
        );
        println!(
            "{:<10} {:>8} {}",
            "fleet",
            "bound_s",
            POLICIES.iter().map(|p| format!("{p:>17}")).collect::<String>()
        );
        for (name, lb, spans, ok) in table {
            let cells: String =
                spans.iter().map(|s| format!("{:>10.3} ({:.2}×)", s, s / lb)).collect();
            println!("{name:<10} {lb:>8.3} {cells}  {}", if ok { "ok" } else { "TARGET MISSED" });
        }
    }
    Ok(0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// discomy's policy beats every baseline on every generated fleet, and stays within 1.10× of
    /// the lower bound on every fleet but the flaky one (where the bound knows in advance which
    /// node dies; see the README's simulator section).
    #[test]
    fn discomy_beats_the_baselines_on_every_fleet() {
        let trace = Trace::lua().unwrap();
        let builds = trace.builds(&default_builds());
        for f in fleet::fleets() {
            let lb = lower_bound(&builds, &f.nodes).seconds();
            let spans: Vec<f64> = POLICIES
                .iter()
                .map(|name| simulate(&builds, &f.nodes, policy(name, &f.nodes).as_mut(), false))
                .map(|o| o.makespan_s)
                .collect();
            assert!(spans[0].is_finite(), "{}: discomy did not finish", f.name);
            for (name, s) in POLICIES.iter().zip(&spans).skip(1) {
                assert!(spans[0] < *s, "{}: discomy {} vs {name} {s}", f.name, spans[0]);
            }
            if f.name != "flaky" {
                assert!(spans[0] <= 1.10 * lb, "{}: {} vs bound {lb}", f.name, spans[0]);
            }
        }
    }
}
