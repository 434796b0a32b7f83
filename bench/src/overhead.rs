//! `discomy-bench overhead`: per-job overhead of one compile at a time. The same Lua units are
//! compiled (a) by local gcc, (b) through `distcc` to a loopback `distccd`, (c) through
//! `discomy-cc` to a loopback agent and worker, with its default settings (object cache on, in a
//! private directory); objects are compared byte for byte, the wrapper's remote outcomes are
//! counted, and the wrapper's start-up cost with `DISCOMY_DISABLE=1` is measured against plain
//! gcc. Every rep adds a fresh `-DDISCOMY_BENCH_KEY=N` to all three modes, so each discomy
//! compile is a cache miss, as in a cold build, and pays for computing its key.

use crate::Common;
use crate::farm::{DiscomyFarm, Distccd};
use crate::proc::{Job, find_discomy_bin};
use crate::project::{self, LUA_CFLAGS, Unit};
use crate::stats::{self, Outcomes, diff, median, ms, num, nums, ratio, signed_ms};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Units to compile: `default` (8 files spread by size), `all` (every src/*.c), a count N
    /// (N files evenly spread by size), or a comma-separated list such as `lapi,lvm.c`.
    #[arg(long, default_value = "default")]
    pub units: String,
    /// Timed runs per unit and mode.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Untimed runs per unit and mode before the timed ones.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs of each side of the wrapper start-up measurement.
    #[arg(long, default_value_t = 20)]
    pub startup_reps: usize,
    /// Unit compiled for the wrapper start-up measurement.
    #[arg(long, default_value = "lctype.c")]
    pub startup_unit: String,
    /// Turn discomy's object cache off (`DISCOMY_CACHE=0`), to see what the cache costs a miss;
    /// the default measures default settings.
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub common: Common,
}

const COMPILE_TIMEOUT: Duration = Duration::from_secs(300);
/// The overhead ratio the project aims for: discomy's added cost at most half of distcc's.
const TARGET_RATIO: f64 = 0.5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Local,
    Distcc,
    Discomy,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::Distcc => "distcc",
            Mode::Discomy => "discomy",
        }
    }
}

/// Everything a compile job of any mode needs.
struct Ctx {
    src: PathBuf,
    scratch: PathBuf,
    distccd: Option<Distccd>,
    farm: Option<DiscomyFarm>,
    discomy_cc: Option<PathBuf>,
    stats_file: PathBuf,
    /// The wrapper's object cache (default settings: on), private to this run.
    cache_dir: PathBuf,
    /// `--no-cache`.
    no_cache: bool,
}

impl Ctx {
    /// The compile command; `key` (when given) makes every rep a new cache key.
    fn compile_args(unit: &Unit, key: Option<usize>) -> Vec<String> {
        let mut a: Vec<String> = LUA_CFLAGS.iter().map(|s| (*s).to_owned()).collect();
        if let Some(k) = key {
            a.push(format!("-DDISCOMY_BENCH_KEY={k}"));
        }
        a.extend(["-c".into(), unit.name.clone(), "-o".into(), unit.object()]);
        a
    }

    fn job(&self, mode: Mode, unit: &Unit, key: usize) -> Job {
        let args = Self::compile_args(unit, Some(key));
        let job = match mode {
            Mode::Local => Job::new("gcc", &self.src),
            Mode::Distcc => {
                let env = self.distccd.as_ref().map(Distccd::client_env).unwrap_or_default();
                Job::new("distcc", &self.src).envs(&env).arg("gcc")
            }
            Mode::Discomy => {
                let prog = self.discomy_cc.clone().unwrap_or_else(|| "discomy-cc".into());
                // Default settings: the cache is on (every rep is a fresh key, so a miss).
                let mut j = Job::new(prog, &self.src)
                    .env_remove("DISCOMY_DISABLE")
                    .env_remove("DISCOMY_CACHE")
                    .env_remove("DISCOMY_SOURCE_MODE")
                    .env("DISCOMY_CACHE_DIR", &self.cache_dir)
                    .env("DISCOMY_STATS_FILE", &self.stats_file);
                if self.no_cache {
                    j = j.env("DISCOMY_CACHE", "0");
                }
                if let Some(f) = &self.farm {
                    j = j.env("DISCOMY_SOCKET", &f.socket);
                }
                j.arg("gcc")
            }
        };
        job.args(args).timeout(COMPILE_TIMEOUT)
    }

    /// Daemon state to attach to a failure of `mode`.
    fn report(&self, mode: Mode) -> String {
        match mode {
            Mode::Local => String::new(),
            Mode::Distcc => self.distccd.as_ref().map(Distccd::report).unwrap_or_default(),
            Mode::Discomy => self.farm.as_ref().map(DiscomyFarm::report).unwrap_or_default(),
        }
    }

    /// Compile `unit` once (removing any old object first); return wall ms and the object.
    fn compile(&self, mode: Mode, unit: &Unit, key: usize) -> Result<(f64, Vec<u8>)> {
        let obj = self.src.join(unit.object());
        match std::fs::remove_file(&obj) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", obj.display())),
        }
        let job = self.job(mode, unit, key);
        let fin = job.run_ok(&self.scratch).with_context(|| {
            format!("{} compile of {} failed\n{}", mode.label(), unit.name, self.report(mode))
        })?;
        let bytes = std::fs::read(&obj).with_context(|| {
            format!(
                "`{}` exited 0 but left no readable {}\n{}",
                job.describe(),
                obj.display(),
                self.report(mode)
            )
        })?;
        Ok((fin.ms(), bytes))
    }
}

/// Results for one unit.
struct UnitResult {
    unit: Unit,
    samples: Vec<(Mode, Vec<f64>)>,
}

impl UnitResult {
    fn samples(&self, m: Mode) -> &[f64] {
        self.samples.iter().find(|(k, _)| *k == m).map(|(_, v)| v.as_slice()).unwrap_or(&[])
    }

    fn median(&self, m: Mode) -> Option<f64> {
        median(self.samples(m))
    }

    /// Median over reps of `m`'s time minus local's time in the same rep.
    fn paired_overhead(&self, m: Mode) -> Option<f64> {
        let d: Vec<f64> =
            self.samples(m).iter().zip(self.samples(Mode::Local)).map(|(x, a)| x - a).collect();
        median(&d)
    }
}

/// `c / b`, only when `b` (distcc's overhead) is positive.
fn valid_ratio(c: Option<f64>, b: Option<f64>) -> Option<f64> {
    if b? <= 0.0 {
        return None;
    }
    ratio(c, b)
}

fn print_ratio(label: &str, r: Option<f64>, denominator: Option<f64>) {
    match (r, denominator) {
        (Some(r), _) => println!(
            "  {label}{r:>8.3}      target <= {TARGET_RATIO}: {}",
            if r <= TARGET_RATIO { "MET" } else { "NOT MET" }
        ),
        (None, Some(d)) if d <= 0.0 => {
            println!(
                "  {label}       -      (undefined: distcc's overhead is not positive; noise dominates)"
            )
        }
        (None, _) => println!("  {label}       -"),
    }
}

pub fn run(args: &Args) -> Result<i32> {
    let c = &args.common;
    if args.reps == 0 || args.startup_reps == 0 {
        anyhow::bail!("--reps and --startup-reps must be at least 1");
    }
    let tarball = project::find_lua_tarball(&project::projects_dir(c.project_dir.as_deref()))?;
    let work = crate::proc::temp_dir("discomy-bench-overhead.")?;
    let scratch = work.path().join("scratch");
    let tree = work.path().join("tree");
    for d in [&scratch, &tree] {
        std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let root = project::extract(&tarball, &tree, &scratch)?;
    let src = root.join("src");
    let all = project::list_units(&src)?;
    let units = project::select_units(&all, &args.units)?;
    let startup_unit = project::select_units(&all, &args.startup_unit)?
        .into_iter()
        .next()
        .context("--startup-unit selects nothing")?;

    let mut modes = vec![Mode::Local];
    let (mut discomy_cc, mut compilerd) = (None, None);
    if !c.no_distcc {
        modes.push(Mode::Distcc);
    }
    if !c.no_discomy {
        discomy_cc = Some(find_discomy_bin("discomy-cc")?);
        compilerd = Some(find_discomy_bin("discomy-compilerd")?);
        modes.push(Mode::Discomy);
    }

    let distccd = if c.no_distcc { None } else { Some(Distccd::start(c.farm_slots)?) };
    let farm = match &compilerd {
        Some(cd) => Some(DiscomyFarm::start(cd, c.farm_slots)?),
        None => None,
    };
    let ctx = Ctx {
        src: src.clone(),
        scratch: scratch.clone(),
        distccd,
        farm,
        discomy_cc,
        stats_file: work.path().join("discomy-stats.tsv"),
        cache_dir: work.path().join("discomy-cache"),
        no_cache: args.no_cache,
    };

    let file_name =
        tarball.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    println!(
        "discomy-bench overhead: {file_name}, {} unit(s), {} timed rep(s) (+{} warm-up) per mode, one compile at a time",
        units.len(),
        args.reps,
        args.warmup
    );
    println!("command: gcc {} -c X.c -o X.o   (in src/)", LUA_CFLAGS.join(" "));
    if let Some(d) = &ctx.distccd {
        println!("(b) {}", d.describe());
    }
    if let Some(f) = &ctx.farm {
        println!("(c) {}", f.describe());
        println!(
            "    discomy-cc object cache: {}",
            if ctx.no_cache {
                "off (--no-cache)"
            } else {
                "on, every rep a new key (default settings)"
            }
        );
    }
    let load_before = stats::load_average();
    println!("load average before: {load_before}");
    println!();

    // --- per-unit timings, modes interleaved so that drift hits all three alike ---
    let mut results = Vec::new();
    let mut mismatches = 0usize;
    let mut compared = 0usize;
    let mut mismatch_notes = Vec::new();
    let mut calls = [0usize; 3];
    let mut key = 0usize;
    for unit in &units {
        let mut samples: Vec<(Mode, Vec<f64>)> = modes.iter().map(|&m| (m, Vec::new())).collect();
        for i in 0..args.warmup + args.reps {
            // Rotate the order each rep so that no mode always follows the same one; all modes
            // of a rep share its key, and their objects are compared with the local one.
            key += 1;
            let n = samples.len();
            let mut objects: Vec<(Mode, Vec<u8>)> = Vec::with_capacity(n);
            for k in 0..n {
                let (mode, times) = &mut samples[(k + i) % n];
                let (t, obj) = ctx.compile(*mode, unit, key)?;
                calls[*mode as usize] += 1;
                objects.push((*mode, obj));
                if i >= args.warmup {
                    times.push(t);
                }
            }
            let reference = objects.iter().find(|(m, _)| *m == Mode::Local).map(|(_, o)| o);
            for (mode, obj) in objects.iter().filter(|(m, _)| *m != Mode::Local) {
                let Some(r) = reference else { continue };
                compared += 1;
                if r != obj {
                    mismatches += 1;
                    mismatch_notes.push(format!(
                        "{} via {} (run {}): {} bytes vs local {} bytes",
                        unit.name,
                        mode.label(),
                        i + 1,
                        obj.len(),
                        r.len()
                    ));
                }
            }
        }
        let r = UnitResult { unit: unit.clone(), samples };
        eprintln!(
            "  {:<12} local {} ms  distcc {} ms  discomy {} ms",
            unit.name,
            ms(r.median(Mode::Local), 7),
            ms(r.median(Mode::Distcc), 7),
            ms(r.median(Mode::Discomy), 7)
        );
        results.push(r);
    }

    // --- wrapper start-up: discomy-cc with DISCOMY_DISABLE=1 versus plain gcc ---
    let startup = match &ctx.discomy_cc {
        Some(cc) => Some(measure_startup(&ctx, cc, &startup_unit, args.startup_reps, work.path())?),
        None => None,
    };
    if let Some(s) = &startup {
        compared += s.compared;
        mismatches += s.mismatches;
        if s.mismatches > 0 {
            mismatch_notes.push(format!(
                "{}: {} DISCOMY_DISABLE=1 object(s) differ from gcc's",
                startup_unit.name, s.mismatches
            ));
        }
    }

    let outcomes = Outcomes::read(&ctx.stats_file)?;
    let distcc_remote = match &ctx.distccd {
        Some(d) => Some(d.compile_ok_count()?),
        None => None,
    };

    // --- summary ---
    let per_mode = |m: Mode| -> Option<f64> {
        let meds: Vec<f64> = results.iter().filter_map(|r| r.median(m)).collect();
        median(&meds)
    };
    let (a, b, cc) = (per_mode(Mode::Local), per_mode(Mode::Distcc), per_mode(Mode::Discomy));
    let over_b = diff(b, a);
    let over_c = diff(cc, a);
    // The ratio only means something when distcc's overhead is positive; with noise larger
    // than the overhead, (b-a) can come out zero or negative.
    let ratio_cb = valid_ratio(over_c, over_b);
    // A noise-robust companion: within each rep the three modes run back to back, so take
    // per-unit medians of the same-rep differences, then the median over units.
    let paired = |m: Mode| -> Option<f64> {
        let d: Vec<f64> = results.iter().filter_map(|r| r.paired_overhead(m)).collect();
        median(&d)
    };
    let (paired_b, paired_c) = (paired(Mode::Distcc), paired(Mode::Discomy));
    let paired_ratio = valid_ratio(paired_c, paired_b);

    println!(
        "{:<12} {:>7} {:>10} {:>10} {:>11} {:>13} {:>14}",
        "unit", "KB", "local ms", "distcc ms", "discomy ms", "distcc-local", "discomy-local"
    );
    for r in &results {
        let (ra, rb, rc) = (r.median(Mode::Local), r.median(Mode::Distcc), r.median(Mode::Discomy));
        println!(
            "{:<12} {:>7.1} {} {} {} {} {}",
            r.unit.name,
            r.unit.bytes as f64 / 1024.0,
            ms(ra, 10),
            ms(rb, 10),
            ms(rc, 11),
            signed_ms(diff(rb, ra), 13),
            signed_ms(diff(rc, ra), 14)
        );
    }
    println!(
        "{:<12} {:>7} {} {} {} {} {}",
        "MEDIAN",
        "",
        ms(a, 10),
        ms(b, 10),
        ms(cc, 11),
        signed_ms(over_b, 13),
        signed_ms(over_c, 14)
    );
    println!();
    println!("median over units of per-unit medians:");
    println!("  (a) local gcc            {} ms", ms(a, 8));
    println!("  (b) distcc -> distccd    {} ms", ms(b, 8));
    println!("  (c) discomy-cc -> agent  {} ms", ms(cc, 8));
    println!("  overhead (b-a) distcc    {} ms", signed_ms(over_b, 8));
    println!("  overhead (c-a) discomy   {} ms", signed_ms(over_c, 8));
    print_ratio("ratio (c-a)/(b-a)        ", ratio_cb, over_b);
    println!("paired (same-rep differences; per-unit median, then median over units):");
    println!("  overhead distcc          {} ms", signed_ms(paired_b, 8));
    println!("  overhead discomy         {} ms", signed_ms(paired_c, 8));
    print_ratio("ratio discomy/distcc     ", paired_ratio, paired_b);
    if let Some(s) = &startup {
        println!(
            "wrapper start-up, local-only ({}; {} reps each; DISCOMY_DISABLE=1 discomy-cc gcc vs gcc):",
            startup_unit.name, args.startup_reps
        );
        println!(
            "  gcc {} ms, discomy-cc {} ms, difference {} ms",
            ms(s.gcc, 0),
            ms(s.wrapped, 0),
            signed_ms(s.diff(), 0)
        );
        println!("  wrapper outcomes: {}", s.outcomes.summary());
    }
    println!(
        "objects compared with local: {compared}, mismatches: {mismatches}{}",
        if mismatches == 0 { "" } else { "   <-- MISMATCH" }
    );
    for n in mismatch_notes.iter().take(20) {
        println!("  mismatch: {n}");
    }
    let discomy_calls = calls[Mode::Discomy as usize];
    let distcc_calls = calls[Mode::Distcc as usize];
    if ctx.farm.is_some() {
        println!(
            "discomy remote: {} of {discomy_calls} calls ({})",
            outcomes.remote,
            outcomes.summary()
        );
        if outcomes.remote < discomy_calls {
            println!(
                "  WARNING: not every discomy-cc call ran remotely{}",
                if outcomes.total() == 0 {
                    " (the wrapper wrote no DISCOMY_STATS_FILE lines)"
                } else {
                    ""
                }
            );
        }
    }
    if let Some(n) = distcc_remote {
        println!("distcc remote (distccd COMPILE_OK): {n} of {distcc_calls} calls");
    }

    let load_after = stats::load_average();
    println!("load average after: {load_after}");

    if let Some(path) = &c.json {
        let units_json: Vec<_> = results
            .iter()
            .map(|r| {
                let ra = r.median(Mode::Local);
                json!({
                    "name": r.unit.name,
                    "bytes": r.unit.bytes,
                    "local_ms": num(ra),
                    "distcc_ms": num(r.median(Mode::Distcc)),
                    "discomy_ms": num(r.median(Mode::Discomy)),
                    "distcc_overhead_ms": num(diff(r.median(Mode::Distcc), ra)),
                    "discomy_overhead_ms": num(diff(r.median(Mode::Discomy), ra)),
                    "paired_distcc_overhead_ms": num(r.paired_overhead(Mode::Distcc)),
                    "paired_discomy_overhead_ms": num(r.paired_overhead(Mode::Discomy)),
                    "local_samples_ms": nums(r.samples(Mode::Local)),
                    "distcc_samples_ms": nums(r.samples(Mode::Distcc)),
                    "discomy_samples_ms": nums(r.samples(Mode::Discomy)),
                })
            })
            .collect();
        let v = json!({
            "benchmark": "overhead",
            "project": file_name,
            "flags": LUA_CFLAGS,
            "discomy_cache": !args.no_cache,
            "reps": args.reps,
            "warmup": args.warmup,
            "farm_slots": c.farm_slots,
            "units": units_json,
            "median_local_ms": num(a),
            "median_distcc_ms": num(b),
            "median_discomy_ms": num(cc),
            "distcc_overhead_ms": num(over_b),
            "discomy_overhead_ms": num(over_c),
            "overhead_ratio": num(ratio_cb),
            "paired_distcc_overhead_ms": num(paired_b),
            "paired_discomy_overhead_ms": num(paired_c),
            "paired_overhead_ratio": num(paired_ratio),
            "overhead_ratio_target": TARGET_RATIO,
            "wrapper_startup_ms": num(startup.as_ref().and_then(StartupResult::diff)),
            "wrapper_startup": startup.as_ref().map(|s| json!({
                "unit": startup_unit.name,
                "reps": args.startup_reps,
                "gcc_ms": num(s.gcc),
                "discomy_cc_disabled_ms": num(s.wrapped),
                "outcomes": s.outcomes.to_json(),
            })),
            "objects_compared": compared,
            "mismatches": mismatches,
            "remote_count": if ctx.farm.is_some() { json!(outcomes.remote) } else { json!(null) },
            "discomy_calls": discomy_calls,
            "discomy_outcomes": outcomes.to_json(),
            "distcc_calls": distcc_calls,
            "distcc_remote_count": distcc_remote,
            "load_average_before": load_before,
            "load_average_after": load_after,
        });
        stats::write_json(path, &v)?;
        println!("JSON written to {}", path.display());
    }

    // The farms and the work dir are torn down here, before the exit code is returned.
    drop(ctx);
    drop(work);
    Ok(if mismatches > 0 { 1 } else { 0 })
}

struct StartupResult {
    gcc: Option<f64>,
    wrapped: Option<f64>,
    outcomes: Outcomes,
    compared: usize,
    mismatches: usize,
}

impl StartupResult {
    fn diff(&self) -> Option<f64> {
        diff(self.wrapped, self.gcc)
    }
}

fn measure_startup(
    ctx: &Ctx,
    discomy_cc: &Path,
    unit: &Unit,
    reps: usize,
    work: &Path,
) -> Result<StartupResult> {
    let stats_file = work.join("startup-stats.tsv");
    let args = Ctx::compile_args(unit, None);
    let gcc = Job::new("gcc", &ctx.src).args(&args).timeout(COMPILE_TIMEOUT);
    let wrapped = Job::new(discomy_cc, &ctx.src)
        .env("DISCOMY_DISABLE", "1")
        .env_remove("DISCOMY_SOCKET")
        .env("DISCOMY_STATS_FILE", &stats_file)
        .arg("gcc")
        .args(&args)
        .timeout(COMPILE_TIMEOUT);
    let obj = ctx.src.join(unit.object());
    let (mut t_gcc, mut t_wrapped) = (Vec::new(), Vec::new());
    let (mut compared, mut mismatches) = (0, 0);
    let warmup = 2;
    for i in 0..warmup + reps {
        let mut reference = None;
        for (job, times) in [(&gcc, &mut t_gcc), (&wrapped, &mut t_wrapped)] {
            match std::fs::remove_file(&obj) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", obj.display())),
            }
            let fin = job.run_ok(&ctx.scratch).context("wrapper start-up measurement failed")?;
            let bytes = std::fs::read(&obj).with_context(|| {
                format!("`{}` left no readable {}", job.describe(), obj.display())
            })?;
            match &reference {
                None => reference = Some(bytes),
                Some(r) => {
                    compared += 1;
                    if *r != bytes {
                        mismatches += 1;
                    }
                }
            }
            if i >= warmup {
                times.push(fin.ms());
            }
        }
    }
    Ok(StartupResult {
        gcc: median(&t_gcc),
        wrapped: median(&t_wrapped),
        outcomes: Outcomes::read(&stats_file)?,
        compared,
        mismatches,
    })
}
