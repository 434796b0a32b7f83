//! `discomy-bench toolchain`: what toolchain shipping and the worker's sandbox cost, side by side.
//!
//! 1. Packaging (one-time per compiler): the wrapper's own `toolchain::collect` of the system gcc
//!    and of a private gcc-11, cold (no manifest cache), into a fresh cache (miss + write) and
//!    warm (cache hit); manifest size.
//! 2. Install (one-time per node): against a fresh agent and a fresh sandboxed worker (fresh
//!    `--store` dirs), the first `discomy-cc gcc-11 -c UNIT` (wrapper→agent and agent→worker
//!    upload and install) versus the second one (installed); bytes moved and the daemons' install
//!    and push records (their `Stats` counters).
//! 3. Sandbox per-unit cost: two agent+worker pairs, one worker sandboxed and one
//!    `--insecure-no-sandbox`; the same units through each (and local gcc), order rotated per
//!    rep; per-unit medians and sandboxed/unsandboxed ratios, end to end and as the workers count
//!    them; the bare set-up cost of `discomy-sandbox`; objects compared byte for byte.
//!
//! This module owns the command line ([`Args`]) and the run ([`run`]): it sets up the work tree,
//! runs the parts in order and prints and writes their figures. The parts live in `packaging`,
//! `install`, `sandbox` (measurement) and `sandbox_report` (summary and report); `env` holds
//! what they share.

mod env;
mod install;
mod packaging;
mod sandbox;
mod sandbox_report;

use crate::proc::find_discomy_bin;
use crate::project::{self, LUA_CFLAGS};
use crate::stats;
use anyhow::{Context, Result, bail};
use discomy_wrapper::invocation::find_on_path;
use env::Env;
use install::{install_json, measure_install, print_install};
use packaging::{measure_packaging, packaging_json, print_packaging};
use sandbox::measure_sandbox;
use sandbox_report::{print_sandbox, sandbox_json, summarize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Units of the sandbox measurement: `default` (8 files spread by size), `all`, a count N,
    /// or a comma-separated list such as `lapi,lvm.c`.
    #[arg(long, default_value = "default")]
    pub units: String,
    /// Timed reps: collects per compiler, compiles per unit and mode, fresh node pairs.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Untimed runs before the timed ones (collects per compiler; compiles per unit and mode).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Fresh agent+worker pairs for the install measurement [default: --reps].
    #[arg(long)]
    pub install_reps: Option<usize>,
    /// Unit compiled with gcc-11 in the install measurement.
    #[arg(long, default_value = "lctype.c")]
    pub install_unit: String,
    /// The private compiler to package and ship [default:
    /// <workspace>/target/x86_64-unknown-linux-gnu/tmp/gcc11/usr/bin/gcc-11, made by
    /// `scripts/fetch-gcc11.sh PREFIX`].
    #[arg(long)]
    pub gcc11: Option<PathBuf>,
    /// Runs of each side of the bare sandbox set-up measurement.
    #[arg(long, default_value_t = 20)]
    pub setup_reps: usize,
    /// Worker slots (and agent host limit) of every node pair.
    #[arg(long, default_value_t = 2)]
    pub slots: u32,
    /// Parts to leave out.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub skip: Vec<Part>,
    /// Directory holding lua5.4_*.orig.tar.gz [default: $DISCOMY_PROJECTS_DIR, else
    /// <workspace>/target/projects].
    #[arg(long)]
    pub project_dir: Option<PathBuf>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Packaging,
    Install,
    Sandbox,
}

fn default_gcc11() -> PathBuf {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench.parent().unwrap_or(bench).join("target/x86_64-unknown-linux-gnu/tmp/gcc11/usr/bin/gcc-11")
}

pub fn run(args: &Args) -> Result<i32> {
    if args.reps == 0 || args.install_reps == Some(0) {
        bail!("--reps and --install-reps must be at least 1");
    }
    let skip = |p: Part| args.skip.contains(&p);
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let gcc = find_on_path("gcc", &path_var, None).context("no gcc on PATH")?;
    let gcc11 = args.gcc11.clone().unwrap_or_else(default_gcc11);
    let need_gcc11 = !skip(Part::Packaging) || !skip(Part::Install);
    if need_gcc11 && !gcc11.is_file() {
        bail!(
            "{} not found: run `scripts/fetch-gcc11.sh PREFIX` and pass --gcc11 PREFIX/usr/bin/gcc-11 \
             (or --skip packaging,install)",
            gcc11.display()
        );
    }
    let gcc11 = if need_gcc11 {
        std::path::absolute(&gcc11).with_context(|| format!("resolving {}", gcc11.display()))?
    } else {
        gcc11
    };

    let tarball = project::find_lua_tarball(&project::projects_dir(args.project_dir.as_deref()))?;
    let work = crate::proc::temp_dir("discomy-bench-toolchain.")?;
    let scratch = work.path().join("scratch");
    let tree = work.path().join("tree");
    let wrapper_cache = work.path().join("wrapper-cache");
    for d in [&scratch, &tree, &wrapper_cache] {
        std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let root = project::extract(&tarball, &tree, &scratch)?;
    let src = root.join("src");
    let all = project::list_units(&src)?;
    let units = project::select_units(&all, &args.units)?;
    let install_unit = project::select_units(&all, &args.install_unit)?
        .into_iter()
        .next()
        .context("--install-unit selects nothing")?;
    let env = Env {
        src,
        scratch,
        work: work.path().to_owned(),
        path_var,
        discomy_cc: find_discomy_bin("discomy-cc")?,
        compilerd: find_discomy_bin("discomy-compilerd")?,
        wrapper_cache,
    };
    find_discomy_bin("discomy-sandbox")?;

    let file_name =
        tarball.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    println!(
        "discomy-bench toolchain: {file_name}; system gcc {} and private gcc-11 {}; {} rep(s)",
        gcc.display(),
        gcc11.display(),
        args.reps
    );
    println!(
        "binaries: {}",
        env.compilerd.parent().map(|p| p.display().to_string()).unwrap_or_default()
    );
    let load_before = stats::load_average();
    println!("load average before: {load_before}");
    println!();

    let mut mismatches = 0;
    let mut notes = Vec::new();
    let compilers: Vec<(&'static str, PathBuf)> =
        vec![("gcc", gcc.clone()), ("gcc-11", gcc11.clone())];

    let packaging = if skip(Part::Packaging) {
        None
    } else {
        eprintln!("packaging…");
        Some(measure_packaging(&env, &compilers, args)?)
    };
    let install = if skip(Part::Install) {
        None
    } else {
        eprintln!("install…");
        let reps = args.install_reps.unwrap_or(args.reps);
        let inst = measure_install(&env, &gcc11, &install_unit, reps, args.slots)?;
        mismatches += inst.compare.mismatches;
        notes.extend(inst.compare.notes.iter().cloned());
        Some(inst)
    };
    let sandbox = if skip(Part::Sandbox) {
        None
    } else {
        eprintln!("sandbox…");
        let sb = measure_sandbox(&env, &gcc, &units, args)?;
        mismatches += sb.compare.mismatches;
        notes.extend(sb.compare.notes.iter().cloned());
        Some(sb)
    };
    let load_after = stats::load_average();

    println!();
    if let Some(p) = &packaging {
        print_packaging(p, args);
        println!();
    }
    if let Some(i) = &install {
        print_install(i);
        println!();
    }
    let summary = sandbox.as_ref().map(summarize);
    if let (Some(sb), Some(sum)) = (&sandbox, &summary) {
        print_sandbox(sb, sum, args);
        println!();
    }
    let compared = install.as_ref().map_or(0, |i| i.compare.compared)
        + sandbox.as_ref().map_or(0, |s| s.compare.compared);
    println!(
        "objects compared (remote vs local, byte for byte): {compared}, mismatches: {mismatches}{}",
        if mismatches == 0 { "" } else { "   <-- MISMATCH" }
    );
    for n in notes.iter().take(20) {
        println!("  mismatch: {n}");
    }
    println!("load average after: {load_after}");

    if let Some(path) = &args.json {
        let v = json!({
            "benchmark": "toolchain",
            "project": file_name,
            "flags": LUA_CFLAGS,
            "reps": args.reps,
            "warmup": args.warmup,
            "slots": args.slots,
            "packaging": packaging.as_ref().map(|p| p.iter().map(packaging_json).collect::<Vec<_>>()),
            "install": install.as_ref().map(install_json),
            "sandbox": match (&sandbox, &summary) {
                (Some(sb), Some(sum)) => sandbox_json(sb, sum),
                _ => Value::Null,
            },
            "objects_compared": compared,
            "mismatches": mismatches,
            "load_average_before": load_before,
            "load_average_after": load_after,
        });
        stats::write_json(path, &v)?;
        println!("JSON written to {}", path.display());
    }
    drop(env);
    drop(work);
    Ok(if mismatches > 0 { 1 } else { 0 })
}
