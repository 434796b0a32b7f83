//! `discomy-bench tls-cost`: what the working fleet's mutual TLS costs a unit. Two discomy farms
//! side by side on loopback, the same in all but the link between agent and worker: plain TCP
//! (a lab farm) and mutual TLS 1.3 with certificates of a farm CA. The same Lua units go through
//! `discomy-cc` with default settings (object cache on, every rep a fresh key, so a miss), the
//! two farms alternating unit by unit; objects are compared with local gcc's. Reported: medians
//! per unit and the paired same-rep difference, TLS minus plain (issue 17's target: ≤ +0.5 ms).

use crate::Common;
use crate::farm::DiscomyFarm;
use crate::proc::{Job, find_discomy_bin};
use crate::project::{self, LUA_CFLAGS, Unit};
use crate::stats::{self, Outcomes, median, ms, num, signed_ms};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Units: `default`, `all`, a count N, or a comma-separated list (as `overhead`).
    #[arg(long, default_value = "default")]
    pub units: String,
    /// Timed runs per unit and farm.
    #[arg(long, default_value_t = 9)]
    pub reps: usize,
    /// Untimed runs per unit and farm first (the TLS farm's first connection included).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[command(flatten)]
    pub common: Common,
}

/// The target of issue 17: TLS adds at most this much per unit.
const TARGET_MS: f64 = 0.5;

/// One farm under test, with the wrapper's private stats file and object cache for it.
struct Side {
    label: &'static str,
    farm: DiscomyFarm,
    stats_file: PathBuf,
    cache_dir: PathBuf,
}

/// Where the units are compiled.
struct Tree<'a> {
    cc: &'a Path,
    src: &'a Path,
    scratch: &'a Path,
}

/// Per unit: name, plain median, TLS median, paired median.
type UnitFigures = (String, Option<f64>, Option<f64>, Option<f64>);

fn compile(tree: &Tree<'_>, side: &Side, unit: &Unit, key: usize) -> Result<(f64, Vec<u8>)> {
    let (cc, src, scratch, farm) = (tree.cc, tree.src, tree.scratch, &side.farm);
    let (stats_file, cache_dir) = (&side.stats_file, &side.cache_dir);
    let obj = src.join(unit.object());
    let _ = std::fs::remove_file(&obj);
    let mut args: Vec<String> = LUA_CFLAGS.iter().map(|s| (*s).to_owned()).collect();
    args.push(format!("-DDISCOMY_BENCH_KEY={key}"));
    args.extend(["-c".into(), unit.name.clone(), "-o".into(), unit.object()]);
    let job = Job::new(cc, src)
        .env_remove("DISCOMY_DISABLE")
        .env_remove("DISCOMY_CACHE")
        .env("DISCOMY_CACHE_DIR", cache_dir)
        .env("DISCOMY_STATS_FILE", stats_file)
        .env("DISCOMY_SOCKET", &farm.socket)
        .arg("gcc")
        .args(args)
        .timeout(Duration::from_secs(300));
    let fin = job.run_ok(scratch).with_context(|| farm.report())?;
    let bytes = std::fs::read(&obj).with_context(|| format!("no {}", obj.display()))?;
    Ok((fin.ms(), bytes))
}

pub fn run(args: &Args) -> Result<i32> {
    let c = &args.common;
    anyhow::ensure!(args.reps > 0, "--reps must be at least 1");
    let tarball = project::find_lua_tarball(&project::projects_dir(c.project_dir.as_deref()))?;
    let work = crate::proc::temp_dir("discomy-bench-tls.")?;
    let (scratch, tree) = (work.path().join("scratch"), work.path().join("tree"));
    for d in [&scratch, &tree] {
        std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let src = project::extract(&tarball, &tree, &scratch)?.join("src");
    let units = project::select_units(&project::list_units(&src)?, &args.units)?;
    let cc = find_discomy_bin("discomy-cc")?;
    let compilerd = find_discomy_bin("discomy-compilerd")?;
    let side = |label: &'static str, tls: bool| -> Result<Side> {
        Ok(Side {
            label,
            farm: DiscomyFarm::start_with(&compilerd, c.farm_slots, tls)?,
            stats_file: work.path().join(format!("{label}.tsv")),
            cache_dir: work.path().join(format!("{label}-cache")),
        })
    };
    let sides = [side("plain", false)?, side("tls", true)?];
    let tree_ = Tree { cc: &cc, src: &src, scratch: &scratch };
    println!(
        "discomy-bench tls-cost: {} unit(s), {} timed rep(s) (+{} warm-up) per farm, default settings",
        units.len(),
        args.reps,
        args.warmup
    );
    for s in &sides {
        println!("  {}: {}", s.label, s.farm.describe());
    }
    println!("load average before: {}", stats::load_average());
    let (mut mismatches, mut key) = (0usize, 0usize);
    let mut per_unit: Vec<UnitFigures> = Vec::new();
    for unit in &units {
        let mut times = [Vec::new(), Vec::new()];
        let mut paired = Vec::new();
        for i in 0..args.warmup + args.reps {
            key += 1;
            let reference = {
                let obj = src.join(unit.object());
                let _ = std::fs::remove_file(&obj);
                let mut local = Job::new("gcc", &src);
                for a in LUA_CFLAGS {
                    local = local.arg(a);
                }
                local
                    .arg(format!("-DDISCOMY_BENCH_KEY={key}"))
                    .args(["-c", &unit.name, "-o", &unit.object()])
                    .run_ok(&scratch)?;
                std::fs::read(&obj)?
            };
            let mut rep = [0.0f64; 2];
            // Alternate which farm goes first.
            for k in 0..2 {
                let f = (k + i) % 2;
                let (t, obj) = compile(&tree_, &sides[f], unit, key)?;
                if obj != reference {
                    mismatches += 1;
                }
                rep[f] = t;
            }
            if i >= args.warmup {
                times[0].push(rep[0]);
                times[1].push(rep[1]);
                paired.push(rep[1] - rep[0]);
            }
        }
        let (p, t, d) = (median(&times[0]), median(&times[1]), median(&paired));
        println!(
            "  {:<12} plain {} ms  tls {} ms  tls-plain (paired) {} ms",
            unit.name,
            ms(p, 7),
            ms(t, 7),
            signed_ms(d, 7)
        );
        per_unit.push((unit.name.clone(), p, t, d));
    }
    let med = |f: fn(&UnitFigures) -> Option<f64>| {
        median(&per_unit.iter().filter_map(f).collect::<Vec<_>>())
    };
    let (plain, tls, paired) = (med(|u| u.1), med(|u| u.2), med(|u| u.3));
    let outcomes = [Outcomes::read(&sides[0].stats_file)?, Outcomes::read(&sides[1].stats_file)?];
    println!("median over units: plain {} ms, tls {} ms", ms(plain, 0), ms(tls, 0));
    println!(
        "TLS cost per unit (paired, median over units): {} ms (target <= +{TARGET_MS} ms)",
        signed_ms(paired, 0)
    );
    println!("remote: plain {}, tls {}", outcomes[0].summary(), outcomes[1].summary());
    println!(
        "objects compared with local gcc: {}, mismatches: {mismatches}",
        2 * units.len() * (args.warmup + args.reps)
    );
    println!("load average after: {}", stats::load_average());
    if let Some(path) = &c.json {
        let v = serde_json::json!({
            "benchmark": "tls-cost",
            "reps": args.reps,
            "units": per_unit.iter().map(|(n, p, t, d)| serde_json::json!({
                "name": n, "plain_ms": num(*p), "tls_ms": num(*t), "paired_tls_minus_plain_ms": num(*d),
            })).collect::<Vec<_>>(),
            "median_plain_ms": num(plain),
            "median_tls_ms": num(tls),
            "paired_tls_cost_ms": num(paired),
            "target_ms": TARGET_MS,
            "remote_plain": outcomes[0].remote,
            "remote_tls": outcomes[1].remote,
            "mismatches": mismatches,
        });
        stats::write_json(path, &v)?;
    }
    drop(sides);
    drop(work);
    Ok(if mismatches > 0 { 1 } else { 0 })
}
