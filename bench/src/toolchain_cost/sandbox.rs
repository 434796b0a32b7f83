//! Part 3 of `discomy-bench toolchain`, sandbox per-unit cost, the measurement: the same units
//! locally and through a sandboxed and an unsandboxed agent+worker pair, order rotated per rep;
//! the workers' own compile times (their `Stats` counters) and children's CPU; the bare set-up
//! cost of
//! `discomy-sandbox`. Summary and report are in `sandbox_report`.

use super::Args;
use super::env::{Compare, Env};
use crate::nodes::{NodeOpts, Nodes};
use crate::proc::{Job, find_discomy_bin};
use crate::project::Unit;
use crate::stats::{self, Outcomes, median, ms, ratio};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The daemons' log filter (their logs are for error reports only).
const SANDBOX_LOG: &str = "info";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Local,
    Sandboxed,
    Unsandboxed,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::Sandboxed => "sandboxed",
            Mode::Unsandboxed => "unsandboxed",
        }
    }
}

pub(super) struct UnitTimes {
    pub(super) unit: Unit,
    pub(super) local: Vec<f64>,
    pub(super) sandboxed: Vec<f64>,
    pub(super) unsandboxed: Vec<f64>,
    /// On-worker times from the workers' counters (timed reps only).
    pub(super) worker_s: Vec<f64>,
    pub(super) worker_u: Vec<f64>,
    /// CPU ms of the worker's children (compiler, and helper when sandboxed) per compile.
    pub(super) cpu_s: Vec<f64>,
    pub(super) cpu_u: Vec<f64>,
}

impl UnitTimes {
    pub(super) fn ratio(&self) -> Option<f64> {
        ratio(median(&self.sandboxed), median(&self.unsandboxed))
    }

    /// Median of same-rep ratios.
    pub(super) fn paired(&self) -> Option<f64> {
        let v: Vec<f64> =
            self.sandboxed.iter().zip(&self.unsandboxed).map(|(s, u)| s / u).collect();
        median(&v)
    }

    pub(super) fn worker_ratio(&self) -> Option<f64> {
        ratio(median(&self.worker_s), median(&self.worker_u))
    }

    pub(super) fn cpu_ratio(&self) -> Option<f64> {
        ratio(median(&self.cpu_s), median(&self.cpu_u))
    }
}

/// `source -> [ms]` of the units a worker compiled, in order (its `Stats` counters).
fn compiled_units(nodes: &Nodes) -> Result<BTreeMap<String, Vec<f64>>> {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for unit in nodes.worker_stats()?.recent_units {
        out.entry(unit.source).or_default().push(unit.ms);
    }
    Ok(out)
}

pub(super) struct SetupCost {
    /// What ran: `DRIVER -dumpversion`, and the sandbox root.
    pub(super) program: String,
    pub(super) root: PathBuf,
    pub(super) host: Vec<f64>,
    pub(super) sandboxed: Vec<f64>,
    /// The same with `--no-cgroup`: no per-run cgroups to create, join and remove.
    pub(super) no_cgroup: Vec<f64>,
    pub(super) probe: Vec<f64>,
}

/// Pause before each bare run: units reach a worker a compile apart, not back to back, and
/// some kernel costs (a cgroup join waits for an RCU grace period) hide in a tight loop.
pub(super) const SETUP_GAP: Duration = Duration::from_millis(200);

/// The bare, per-unit cost of a sandbox: `DRIVER -dumpversion` (a program that does next to
/// nothing) in `discomy-sandbox` with the worker's own limits and the toolchain tree the
/// sandboxed worker installed as its root (as root: cgroups and all), with and without
/// `--no-cgroup`, against the same on the host; and `discomy-sandbox --probe` (every set-up step,
/// root `/`, no program).
fn measure_setup(
    env: &Env,
    helper: &Path,
    root: &Path,
    driver: &str,
    reps: usize,
) -> Result<SetupCost> {
    let dir = crate::proc::temp_dir("discomy-bench-sbx.")?;
    let work = dir.path().join("work");
    std::fs::create_dir(&work).context("creating the sandbox work dir")?;
    // The worker's defaults (see `discomy-compilerd worker --help`): 600 s CPU, 4096 MiB.
    let sandbox = |extra: &[&str]| {
        Job::new(helper, dir.path())
            .arg(format!("--root={}", root.display()))
            .arg(format!("--work={}", work.display()))
            .args([
                "--cpu-secs=600",
                "--mem-bytes=4294967296",
                "--env=LC_ALL=C",
                "--env=TMPDIR=/tmp",
            ])
            .args(extra)
            .args(["--", driver, "-dumpversion"])
    };
    let jobs = [
        Job::new(driver, dir.path()).env("LC_ALL", "C").arg("-dumpversion"),
        sandbox(&[]),
        sandbox(&["--no-cgroup"]),
        Job::new(helper, dir.path()).arg("--probe"),
    ];
    let mut samples: [Vec<f64>; 4] = Default::default();
    let warmup = 1;
    for i in 0..reps + warmup {
        for k in 0..jobs.len() {
            let k = (k + i) % jobs.len();
            std::thread::sleep(SETUP_GAP);
            let f = jobs[k].run_ok(&env.scratch).context("sandbox set-up measurement")?;
            if i >= warmup {
                samples[k].push(f.ms());
            }
        }
    }
    let [host, sandboxed, no_cgroup, probe] = samples;
    Ok(SetupCost {
        program: format!("{driver} -dumpversion"),
        root: root.to_owned(),
        host,
        sandboxed,
        no_cgroup,
        probe,
    })
}

pub(super) struct Sandbox {
    pub(super) units: Vec<UnitTimes>,
    pub(super) describe: [String; 2],
    pub(super) outcomes: Outcomes,
    pub(super) calls: usize,
    pub(super) compare: Compare,
    pub(super) setup: Option<SetupCost>,
    pub(super) gcc: PathBuf,
}

pub(super) fn measure_sandbox(
    env: &Env,
    gcc: &Path,
    units: &[Unit],
    args: &Args,
) -> Result<Sandbox> {
    let stats_file = env.work.join("sandbox-stats.tsv");
    let manifest = env.warm_wrapper_cache(gcc)?;
    let s = Nodes::start(
        &env.compilerd,
        &NodeOpts { label: "sandboxed", slots: args.slots, sandbox: true, log_filter: SANDBOX_LOG },
    )?;
    let u = Nodes::start(
        &env.compilerd,
        &NodeOpts {
            label: "unsandboxed",
            slots: args.slots,
            sandbox: false,
            log_filter: SANDBOX_LOG,
        },
    )?;
    println!("  ({})", s.describe());
    println!("  ({})", u.describe());
    let report = || format!("{}\n{}", s.report(), u.report());
    let mut compare = Compare::default();
    let mut results = Vec::new();
    let mut calls = 0;
    let modes = [Mode::Local, Mode::Sandboxed, Mode::Unsandboxed];
    for unit in units {
        let mut t = UnitTimes {
            unit: unit.clone(),
            local: Vec::new(),
            sandboxed: Vec::new(),
            unsandboxed: Vec::new(),
            worker_s: Vec::new(),
            worker_u: Vec::new(),
            cpu_s: Vec::new(),
            cpu_u: Vec::new(),
        };
        let mut reference: Option<Vec<u8>> = None;
        for i in 0..args.warmup + args.reps {
            // Rotate the order each rep; rep 0 starts with local, the reference object.
            for k in 0..modes.len() {
                let mode = modes[(k + i) % modes.len()];
                let job = match mode {
                    Mode::Local => env.local(gcc, unit),
                    Mode::Sandboxed => env.wrapped(gcc, unit, &s.socket, &stats_file),
                    Mode::Unsandboxed => env.wrapped(gcc, unit, &u.socket, &stats_file),
                };
                let node = match mode {
                    Mode::Local => None,
                    Mode::Sandboxed => Some(&s),
                    Mode::Unsandboxed => Some(&u),
                };
                let cpu_before = node.and_then(Nodes::worker_children_cpu_ms);
                let (ms, obj) = env.compile(&job, unit, report)?;
                let cpu = stats::diff(node.and_then(Nodes::worker_children_cpu_ms), cpu_before);
                if mode != Mode::Local {
                    calls += 1;
                }
                match &reference {
                    None => reference = Some(obj),
                    Some(r) => compare.check(
                        || format!("{} via {} (run {})", unit.name, mode.label(), i + 1),
                        r,
                        &obj,
                    ),
                }
                if i >= args.warmup {
                    match mode {
                        Mode::Local => t.local.push(ms),
                        Mode::Sandboxed => t.sandboxed.push(ms),
                        Mode::Unsandboxed => t.unsandboxed.push(ms),
                    }
                    match (mode, cpu) {
                        (Mode::Sandboxed, Some(c)) => t.cpu_s.push(c),
                        (Mode::Unsandboxed, Some(c)) => t.cpu_u.push(c),
                        _ => {}
                    }
                }
            }
        }
        eprintln!(
            "  {:<12} local {} ms  sandboxed {} ms  unsandboxed {} ms",
            unit.name,
            ms(median(&t.local), 7),
            ms(median(&t.sandboxed), 7),
            ms(median(&t.unsandboxed), 7)
        );
        results.push(t);
    }
    let (ws, wu) = (compiled_units(&s)?, compiled_units(&u)?);
    for t in &mut results {
        let skip = |v: Option<&Vec<f64>>| -> Vec<f64> {
            v.map(|v| v.iter().skip(args.warmup).copied().collect()).unwrap_or_default()
        };
        t.worker_s = skip(ws.get(&t.unit.name));
        t.worker_u = skip(wu.get(&t.unit.name));
    }
    let describe = [s.describe(), u.describe()];
    // The tree the sandboxed worker installed (its store's layout: trees/<identity>), while the
    // daemons idle; `/` if the layout is not that.
    let tree = s.worker_store().join("trees").join(manifest.digest().to_string());
    let root = if tree.is_dir() { tree } else { PathBuf::from("/") };
    let helper = find_discomy_bin("discomy-sandbox")?;
    let setup = if args.setup_reps > 0 {
        Some(measure_setup(env, &helper, &root, &manifest.driver, args.setup_reps)?)
    } else {
        None
    };
    drop(s);
    drop(u);
    Ok(Sandbox {
        units: results,
        describe,
        outcomes: Outcomes::read(&stats_file)?,
        calls,
        compare,
        setup,
        gcc: gcc.to_owned(),
    })
}
