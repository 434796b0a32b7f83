//! `discomy-bench lto`: Lua 5.4 built with Rocky 9's `%optflags` and `-flto=auto` links, in two
//! phases (compile: every unit and `liblua.a`; link: the LTO links of `lua` and `luac`, each a
//! WPA, LTRANS partitions and a final link), (a) with plain gcc and (b) under
//! `discomy run --local-farm S`, one embedded farm per phase. Reports each phase's median time,
//! where the units and the LTRANS partitions ran (from `discomy run`'s summaries), and whether
//! the linked programs are byte-identical to the plain build's. Every build happens in the same
//! directory (the objects record it), extracted afresh.

use crate::Common;
use crate::proc::{Job, find_discomy_bin};
use crate::project;
use crate::stats::{self, median, num, nums, ratio};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Rocky Linux 9's `%optflags` for x86_64 (without the redhat specs files, which Debian lacks).
pub const EL9_CFLAGS: &str = "-O2 -flto=auto -ffat-lto-objects -fexceptions -g \
    -grecord-gcc-switches -pipe -Wall -Werror=format-security -Wp,-D_FORTIFY_SOURCE=2 \
    -Wp,-D_GLIBCXX_ASSERTIONS -fstack-protector-strong -m64 -march=x86-64-v2 -mtune=generic \
    -fasynchronous-unwind-tables -fstack-clash-protection -fcf-protection";
/// Rocky 9's `%build_ldflags` with the `-flto=auto` of `%optflags`.
pub const EL9_LDFLAGS: &str = "-flto=auto -Wl,-z,relro -Wl,-z,now";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// make -jN (default: the number of CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Builds per mode.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    #[command(flatten)]
    pub common: Common,
}

const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);
const PROGRAMS: [&str; 2] = ["lua", "luac"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Plain,
    Farm,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Farm => "discomy-embedded",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Compile,
    Link,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Compile => "compile",
            Phase::Link => "link",
        }
    }

    /// The make goals: the objects and the library, then Lua's own `linux` target (whose
    /// objects are then up to date: only the two links are left).
    fn goals(self) -> &'static [&'static str] {
        match self {
            Phase::Compile => &["liblua.a", "lua.o", "luac.o", "SYSCFLAGS=-DLUA_USE_LINUX"],
            Phase::Link => &["linux"],
        }
    }
}

/// `make -C src -jN <goals>` with the EL9 flags.
fn make_args(jobs: usize, phase: Phase) -> Vec<String> {
    let mut v = vec!["make".into(), "-C".into(), "src".into(), format!("-j{jobs}")];
    v.extend(phase.goals().iter().map(|s| (*s).to_string()));
    v.push("CC=gcc -std=gnu99".into());
    v.push(format!("MYCFLAGS={EL9_CFLAGS}"));
    v.push(format!("MYLDFLAGS={EL9_LDFLAGS}"));
    v
}

fn read_summary(path: &Path) -> Value {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice::<Value>(&b)
            .unwrap_or_else(|e| json!({"unparsable": e.to_string()})),
        Err(e) => json!({"missing": e.to_string()}),
    }
}

fn count(v: &Value, path: &[&str]) -> u64 {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_u64).unwrap_or(0)
}

pub fn run(args: &Args) -> Result<i32> {
    let c = &args.common;
    let jobs =
        args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let tarball = project::find_lua_tarball(&project::projects_dir(c.project_dir.as_deref()))?;
    let discomy = if c.no_discomy {
        None
    } else {
        let cc = find_discomy_bin("discomy-cc")?;
        let d = cc.with_file_name("discomy");
        Some(if d.is_file() { d } else { find_discomy_bin("discomy")? })
    };
    let work = crate::proc::temp_dir("discomy-bench-lto.")?;
    let scratch = work.path().join("scratch");
    std::fs::create_dir(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let tree_parent = work.path().join("build");
    let mut modes = vec![Mode::Plain];
    if discomy.is_some() {
        modes.push(Mode::Farm);
    }
    let file_name =
        tarball.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    println!(
        "discomy-bench lto: {file_name}, Rocky 9 %optflags, -flto=auto links, make -j{jobs}, {} rep(s) per mode",
        args.reps
    );
    println!("compile phase: {}", make_args(jobs, Phase::Compile)[3..].join(" "));
    println!("link phase:    {}", make_args(jobs, Phase::Link)[3..].join(" "));
    if discomy.is_some() {
        println!(
            "{}: each phase under `discomy run --local-farm {}` (its own farm, started and stopped)",
            Mode::Farm.label(),
            c.farm_slots
        );
    }
    println!("load average before: {}", stats::load_average());

    // times[(mode, phase)] in ms
    let mut times: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    let mut reference: Option<Vec<Vec<u8>>> = None;
    let (mut compared, mut mismatches) = (0usize, 0usize);
    let mut summaries: Vec<Value> = Vec::new();
    for rep in 0..args.reps {
        for k in 0..modes.len() {
            let mode = modes[(k + rep) % modes.len()];
            if tree_parent.exists() {
                std::fs::remove_dir_all(&tree_parent)
                    .with_context(|| format!("removing {}", tree_parent.display()))?;
            }
            std::fs::create_dir(&tree_parent)
                .with_context(|| format!("creating {}", tree_parent.display()))?;
            let root = project::extract(&tarball, &tree_parent, &scratch)?;
            let cache = work.path().join(format!("cache-{}", rep + 1));
            let mut rep_summary = json!({"rep": rep + 1});
            for phase in [Phase::Compile, Phase::Link] {
                let make = make_args(jobs, phase);
                let summary_path: PathBuf =
                    work.path().join(format!("summary-{}-{}.json", phase.label(), rep + 1));
                let job = match (mode, &discomy) {
                    (Mode::Farm, Some(prog)) => Job::new(prog, &root)
                        .env_remove("DISCOMY_DISABLE")
                        .env_remove("DISCOMY_CACHE")
                        .env_remove("DISCOMY_LTRANS_JOBS")
                        .env("DISCOMY_CACHE_DIR", &cache)
                        .arg("run")
                        .arg("--local-farm")
                        .arg(c.farm_slots.to_string())
                        .arg("--summary-json")
                        .arg(&summary_path)
                        .arg("--")
                        .args(&make),
                    _ => Job::new(&make[0], &root).args(&make[1..]),
                }
                .timeout(BUILD_TIMEOUT);
                let fin = job
                    .run_ok(&scratch)
                    .with_context(|| format!("{} {} phase failed", mode.label(), phase.label()))?;
                eprintln!(
                    "  {:<16} rep {} {:<7}: {:.2} s",
                    mode.label(),
                    rep + 1,
                    phase.label(),
                    fin.ms() / 1000.0
                );
                times.entry((mode.label(), phase.label())).or_default().push(fin.ms());
                if mode == Mode::Farm {
                    rep_summary[phase.label()] = read_summary(&summary_path);
                }
            }
            let mut bins = Vec::new();
            for p in PROGRAMS {
                let path = root.join("src").join(p);
                bins.push(
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                );
            }
            match (&reference, mode) {
                (None, Mode::Plain) => reference = Some(bins),
                (Some(r), Mode::Farm) => {
                    for (name, (want, got)) in PROGRAMS.iter().zip(r.iter().zip(&bins)) {
                        compared += 1;
                        if want != got {
                            mismatches += 1;
                            println!("  mismatch: src/{name} (rep {})", rep + 1);
                        }
                    }
                }
                _ => {}
            }
            if mode == Mode::Farm {
                summaries.push(rep_summary);
            }
        }
    }

    let get = |m: Mode, p: Phase| times.get(&(m.label(), p.label())).cloned().unwrap_or_default();
    let total = |m: Mode| -> Vec<f64> {
        get(m, Phase::Compile).iter().zip(get(m, Phase::Link)).map(|(a, b)| a + b).collect()
    };
    println!();
    println!(
        "{:<16} {:>12} {:>12} {:>12} {:>9}",
        "mode", "compile_s", "link_s", "total_s", "vs plain"
    );
    let plain_total = median(&total(Mode::Plain));
    for &m in &modes {
        let t = median(&total(m));
        println!(
            "{:<16} {:>12.2} {:>12.2} {:>12.2} {:>9}",
            m.label(),
            median(&get(m, Phase::Compile)).unwrap_or(f64::NAN) / 1000.0,
            median(&get(m, Phase::Link)).unwrap_or(f64::NAN) / 1000.0,
            t.unwrap_or(f64::NAN) / 1000.0,
            ratio(t, plain_total).map_or("-".into(), |r| format!("{r:.3}"))
        );
    }
    let summed = |phase: &str, path: &[&str]| -> u64 {
        summaries.iter().filter_map(|s| s.get(phase)).map(|s| count(s, path)).sum()
    };
    if discomy.is_some() {
        println!(
            "compile phase: {} of {} units remote (local {}, fallback {}); link phase: {} of {} LTRANS units remote (fallback {}), {} compile units; WPA and final links on the build host",
            summed("compile", &["remote"]),
            summed("compile", &["units"]),
            summed("compile", &["local"]),
            summed("compile", &["fallback"]),
            summed("link", &["ltrans", "remote"]),
            summed("link", &["ltrans", "units"]),
            summed("link", &["ltrans", "fallback"]),
            summed("link", &["units"]),
        );
    }
    println!(
        "linked programs compared with the plain build's: {compared}, mismatches: {mismatches}"
    );
    if let Some(path) = &c.json {
        let phase_ms = |m: Mode| {
            json!({
                "compile_ms": nums(&get(m, Phase::Compile)),
                "link_ms": nums(&get(m, Phase::Link)),
                "median_compile_ms": num(median(&get(m, Phase::Compile))),
                "median_link_ms": num(median(&get(m, Phase::Link))),
                "median_total_ms": num(median(&total(m))),
            })
        };
        let v = json!({
            "benchmark": "lto",
            "project": file_name,
            "cflags": EL9_CFLAGS,
            "ldflags": EL9_LDFLAGS,
            "jobs": jobs,
            "reps": args.reps,
            "farm_slots": c.farm_slots,
            "plain": phase_ms(Mode::Plain),
            "discomy_embedded": if discomy.is_some() { phase_ms(Mode::Farm) } else { Value::Null },
            "ltrans_units": summed("link", &["ltrans", "units"]),
            "ltrans_remote": summed("link", &["ltrans", "remote"]),
            "ltrans_fallback": summed("link", &["ltrans", "fallback"]),
            "compile_units": summed("compile", &["units"]),
            "compile_remote": summed("compile", &["remote"]),
            "programs_compared": compared,
            "mismatches": mismatches,
            "load_average": stats::load_average(),
            "discomy_summaries": summaries,
        });
        stats::write_json(path, &v)?;
        println!("JSON written to {}", path.display());
    }
    drop(work);
    Ok(if mismatches > 0 { 1 } else { 0 })
}
