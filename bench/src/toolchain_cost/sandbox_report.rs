//! Part 3 of `discomy-bench toolchain`, sandbox per-unit cost, the figures: the median unit, the
//! sandboxed/unsandboxed ratios against the target, the printed report and the JSON.

use super::Args;
use super::sandbox::{SETUP_GAP, Sandbox, UnitTimes};
use crate::project::LUA_CFLAGS;
use crate::stats::{self, median, ms, num, nums, ratio};
use serde_json::{Value, json};

/// The sandbox may add at most 5 % to a median unit.
const TARGET_RATIO: f64 = 1.05;

/// The unit whose unsandboxed median is the (lower) median of all units.
fn median_unit(units: &[UnitTimes]) -> Option<&UnitTimes> {
    let mut v: Vec<&UnitTimes> =
        units.iter().filter(|u| median(&u.unsandboxed).is_some()).collect();
    v.sort_by(|a, b| {
        let (x, y) = (median(&a.unsandboxed).unwrap_or(0.0), median(&b.unsandboxed).unwrap_or(0.0));
        x.total_cmp(&y)
    });
    v.get(v.len().saturating_sub(1) / 2).copied()
}

fn fmt_ratio(r: Option<f64>, width: usize) -> String {
    match r {
        Some(x) => format!("{x:>width$.3}"),
        None => format!("{:>width$}", "-"),
    }
}

fn verdict(r: Option<f64>) -> &'static str {
    match r {
        Some(x) if x <= TARGET_RATIO => "MET",
        Some(_) => "NOT MET",
        None => "unknown",
    }
}

pub(super) struct SandboxSummary {
    median_unit: Option<String>,
    /// The median unit's unsandboxed median, ms.
    median_unit_ms: Option<f64>,
    median_unit_ratio: Option<f64>,
    median_unit_paired: Option<f64>,
    median_unit_worker: Option<f64>,
    median_of_ratios: Option<f64>,
    median_of_paired: Option<f64>,
    median_of_worker_ratios: Option<f64>,
    median_of_cpu_ratios: Option<f64>,
    median_unit_cpu: Option<f64>,
    cpu_delta_ms: Option<f64>,
    ratio_of_medians: Option<f64>,
    median_delta_ms: Option<f64>,
    worker_delta_ms: Option<f64>,
}

pub(super) fn summarize(sb: &Sandbox) -> SandboxSummary {
    let over = |f: &dyn Fn(&UnitTimes) -> Option<f64>| -> Option<f64> {
        median(&sb.units.iter().filter_map(f).collect::<Vec<_>>())
    };
    let mu = median_unit(&sb.units);
    SandboxSummary {
        median_unit: mu.map(|u| u.unit.name.clone()),
        median_unit_ratio: mu.and_then(UnitTimes::ratio),
        median_unit_ms: mu.and_then(|u| median(&u.unsandboxed)),
        median_unit_paired: mu.and_then(UnitTimes::paired),
        median_unit_worker: mu.and_then(UnitTimes::worker_ratio),
        median_of_ratios: over(&UnitTimes::ratio),
        median_of_paired: over(&UnitTimes::paired),
        median_of_worker_ratios: over(&UnitTimes::worker_ratio),
        median_of_cpu_ratios: over(&UnitTimes::cpu_ratio),
        median_unit_cpu: mu.and_then(UnitTimes::cpu_ratio),
        cpu_delta_ms: over(&|u: &UnitTimes| stats::diff(median(&u.cpu_s), median(&u.cpu_u))),
        ratio_of_medians: ratio(
            over(&|u: &UnitTimes| median(&u.sandboxed)),
            over(&|u: &UnitTimes| median(&u.unsandboxed)),
        ),
        median_delta_ms: over(&|u: &UnitTimes| {
            stats::diff(median(&u.sandboxed), median(&u.unsandboxed))
        }),
        worker_delta_ms: over(&|u: &UnitTimes| {
            stats::diff(median(&u.worker_s), median(&u.worker_u))
        }),
    }
}

pub(super) fn print_sandbox(sb: &Sandbox, sum: &SandboxSummary, args: &Args) {
    println!(
        "3. SANDBOX (per unit): `discomy-cc {} {} -c X.c`, {} rep(s) (+{} warm-up) per unit and mode, order rotated",
        sb.gcc.display(),
        LUA_CFLAGS.join(" "),
        args.reps,
        args.warmup
    );
    for d in &sb.describe {
        println!("  ({d})");
    }
    println!(
        "{:<11} {:>6} {:>9} {:>10} {:>10} {:>7} {:>7} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7}",
        "unit",
        "KB",
        "local ms",
        "sandbox ms",
        "no-sbx ms",
        "S/U",
        "paired",
        "wrk S ms",
        "wrk U ms",
        "wrk S/U",
        "cpu S ms",
        "cpu U ms",
        "cpu S/U"
    );
    for u in &sb.units {
        println!(
            "{:<11} {:>6.1} {} {} {} {} {} {} {} {} {} {} {}",
            u.unit.name,
            u.unit.bytes as f64 / 1024.0,
            ms(median(&u.local), 9),
            ms(median(&u.sandboxed), 10),
            ms(median(&u.unsandboxed), 10),
            fmt_ratio(u.ratio(), 7),
            fmt_ratio(u.paired(), 7),
            ms(median(&u.worker_s), 9),
            ms(median(&u.worker_u), 9),
            fmt_ratio(u.worker_ratio(), 7),
            ms(median(&u.cpu_s), 9),
            ms(median(&u.cpu_u), 9),
            fmt_ratio(u.cpu_ratio(), 7),
        );
    }
    println!(
        "  median unit (by unsandboxed time): {}: S/U {} (paired {}, on-worker {}, cpu {})   target <= {TARGET_RATIO}: {}",
        sum.median_unit.as_deref().unwrap_or("-"),
        fmt_ratio(sum.median_unit_ratio, 0),
        fmt_ratio(sum.median_unit_paired, 0),
        fmt_ratio(sum.median_unit_worker, 0),
        fmt_ratio(sum.median_unit_cpu, 0),
        verdict(sum.median_unit_ratio)
    );
    println!(
        "  over units: median of per-unit S/U {} (paired {}, on-worker {}, cpu {}); ratio of medians {}   target: {}",
        fmt_ratio(sum.median_of_ratios, 0),
        fmt_ratio(sum.median_of_paired, 0),
        fmt_ratio(sum.median_of_worker_ratios, 0),
        fmt_ratio(sum.median_of_cpu_ratios, 0),
        fmt_ratio(sum.ratio_of_medians, 0),
        verdict(sum.median_of_ratios)
    );
    println!(
        "  added per unit (median over units of S - U): end to end {} ms, on the worker {} ms, cpu {} ms",
        stats::signed_ms(sum.median_delta_ms, 0),
        stats::signed_ms(sum.worker_delta_ms, 0),
        stats::signed_ms(sum.cpu_delta_ms, 0)
    );
    // The sandbox costs about the same per unit whatever its size; the median over all units of
    // that cost is steadier than any one unit's ratio.
    let model = sum.median_unit_ms.and_then(|m| Some(1.0 + sum.median_delta_ms? / m));
    println!(
        "  as a fixed cost per unit: 1 + {} ms / {} ms (median unit, unsandboxed) = {}   target: {}",
        stats::signed_ms(sum.median_delta_ms, 0),
        ms(sum.median_unit_ms, 0),
        fmt_ratio(model, 0),
        verdict(model)
    );
    println!(
        "  (S = sandboxed worker, U = --insecure-no-sandbox worker; paired = median of same-rep S/U; \
         wrk = the workers' own compile times (their Stats counters); cpu = CPU of the worker's children, 10 ms ticks)"
    );
    if let Some(c) = &sb.setup {
        let (t, h, n, p) =
            (median(&c.host), median(&c.sandboxed), median(&c.no_cgroup), median(&c.probe));
        println!(
            "  bare sandbox, {} reps {} ms apart of `{}` (root: the sandboxed worker's tree {}):",
            c.host.len(),
            SETUP_GAP.as_millis(),
            c.program,
            c.root.display()
        );
        println!(
            "    host {} ms; sandboxed {} ms ({} ms); sandboxed --no-cgroup {} ms ({} ms): per-run cgroups {} ms; `discomy-sandbox --probe` {} ms",
            ms(t, 0),
            ms(h, 0),
            stats::signed_ms(stats::diff(h, t), 0),
            ms(n, 0),
            stats::signed_ms(stats::diff(n, t), 0),
            stats::signed_ms(stats::diff(h, n), 0),
            ms(p, 0)
        );
    }
    println!(
        "  remote: {} of {} discomy-cc calls ({})",
        sb.outcomes.remote,
        sb.calls,
        sb.outcomes.summary()
    );
}

pub(super) fn sandbox_json(sb: &Sandbox, sum: &SandboxSummary) -> Value {
    json!({
        "compiler": sb.gcc.display().to_string(),
        "units": sb.units.iter().map(|u| json!({
            "name": u.unit.name,
            "bytes": u.unit.bytes,
            "local_ms": num(median(&u.local)),
            "sandboxed_ms": num(median(&u.sandboxed)),
            "unsandboxed_ms": num(median(&u.unsandboxed)),
            "ratio": num(u.ratio()),
            "paired_ratio": num(u.paired()),
            "worker_sandboxed_ms": num(median(&u.worker_s)),
            "worker_unsandboxed_ms": num(median(&u.worker_u)),
            "worker_ratio": num(u.worker_ratio()),
            "cpu_sandboxed_ms": num(median(&u.cpu_s)),
            "cpu_unsandboxed_ms": num(median(&u.cpu_u)),
            "cpu_ratio": num(u.cpu_ratio()),
            "cpu_sandboxed_samples_ms": nums(&u.cpu_s),
            "cpu_unsandboxed_samples_ms": nums(&u.cpu_u),
            "local_samples_ms": nums(&u.local),
            "sandboxed_samples_ms": nums(&u.sandboxed),
            "unsandboxed_samples_ms": nums(&u.unsandboxed),
            "worker_sandboxed_samples_ms": nums(&u.worker_s),
            "worker_unsandboxed_samples_ms": nums(&u.worker_u),
        })).collect::<Vec<_>>(),
        "median_unit": sum.median_unit,
        "median_unit_ratio": num(sum.median_unit_ratio),
        "median_unit_paired_ratio": num(sum.median_unit_paired),
        "median_unit_worker_ratio": num(sum.median_unit_worker),
        "median_of_unit_ratios": num(sum.median_of_ratios),
        "median_of_paired_ratios": num(sum.median_of_paired),
        "median_of_worker_ratios": num(sum.median_of_worker_ratios),
        "median_unit_cpu_ratio": num(sum.median_unit_cpu),
        "median_of_cpu_ratios": num(sum.median_of_cpu_ratios),
        "median_added_cpu_ms": num(sum.cpu_delta_ms),
        "ratio_of_medians": num(sum.ratio_of_medians),
        "median_added_ms": num(sum.median_delta_ms),
        "median_unit_unsandboxed_ms": num(sum.median_unit_ms),
        "fixed_cost_ratio": num(sum.median_unit_ms.and_then(|m| Some(1.0 + sum.median_delta_ms? / m))),
        "median_added_worker_ms": num(sum.worker_delta_ms),
        "target_ratio": TARGET_RATIO,
        "target_met": sum.median_unit_ratio.map(|r| r <= TARGET_RATIO),
        "bare_sandbox": sb.setup.as_ref().map(|c| json!({
            "program": c.program,
            "root": c.root.display().to_string(),
            "gap_ms": SETUP_GAP.as_millis() as u64,
            "host_ms": num(median(&c.host)),
            "sandboxed_ms": num(median(&c.sandboxed)),
            "no_cgroup_ms": num(median(&c.no_cgroup)),
            "probe_ms": num(median(&c.probe)),
            "host_samples_ms": nums(&c.host),
            "sandboxed_samples_ms": nums(&c.sandboxed),
            "no_cgroup_samples_ms": nums(&c.no_cgroup),
            "probe_samples_ms": nums(&c.probe),
        })),
        "discomy_calls": sb.calls,
        "outcomes": sb.outcomes.to_json(),
        "objects_compared": sb.compare.compared,
        "mismatches": sb.compare.mismatches,
    })
}
