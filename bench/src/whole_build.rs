//! `discomy-bench build`: a whole-project build of Lua (`make -jN -C src linux`), (a) plain,
//! (b) with `CC="distcc gcc -std=gnu99"` against a long-running loopback `distccd`, (c) under
//! `discomy run` against a long-running loopback agent and worker, (d) under
//! `discomy run --local-farm S` (the farm started and stopped around the build); discomy with
//! its default settings (object cache on, cold: a new cache directory per build). Each build in
//! a fresh extraction, medians and ratios reported, objects compared with the plain build's.

use crate::Common;
use crate::farm::{DiscomyFarm, Distccd};
use crate::proc::{Job, find_discomy_bin};
use crate::project;
use crate::stats::{self, median, num, nums, ratio};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Plain,
    Distcc,
    /// `discomy run` against a long-running agent and worker, as distcc runs against a
    /// long-running distccd.
    Discomy,
    /// `discomy run --local-farm`: the farm started and stopped around each build.
    Embedded,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Distcc => "distcc",
            Mode::Discomy => "discomy",
            Mode::Embedded => "discomy-embedded",
        }
    }
}

/// The `*.o` files of a finished build, by name.
fn objects(src: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut map = BTreeMap::new();
    for e in std::fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
        let e = e.with_context(|| format!("listing {}", src.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".o") {
            let bytes = std::fs::read(e.path()).with_context(|| format!("reading {name}"))?;
            map.insert(name, bytes);
        }
    }
    Ok(map)
}

pub fn run(args: &Args) -> Result<i32> {
    let c = &args.common;
    let jobs =
        args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let tarball = project::find_lua_tarball(&project::projects_dir(c.project_dir.as_deref()))?;
    let work = crate::proc::temp_dir("discomy-bench-build.")?;
    let scratch = work.path().join("scratch");
    std::fs::create_dir(&scratch).with_context(|| format!("creating {}", scratch.display()))?;

    let mut modes = vec![Mode::Plain];
    let discomy = if c.no_discomy {
        None
    } else {
        // `discomy` lives next to `discomy-cc`.
        let cc = find_discomy_bin("discomy-cc")?;
        let d = cc.with_file_name("discomy");
        Some(if d.is_file() { d } else { find_discomy_bin("discomy")? })
    };
    let distccd = if c.no_distcc { None } else { Some(Distccd::start(c.farm_slots)?) };
    if distccd.is_some() {
        modes.push(Mode::Distcc);
    }
    let farm = if c.no_discomy {
        None
    } else {
        Some(DiscomyFarm::start(&find_discomy_bin("discomy-compilerd")?, c.farm_slots)?)
    };
    if discomy.is_some() {
        modes.push(Mode::Discomy);
        modes.push(Mode::Embedded);
    }

    let file_name =
        tarball.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    println!(
        "discomy-bench build: {file_name}, make -j{jobs} -C src linux, {} rep(s) per mode, farm slots {}",
        args.reps, c.farm_slots
    );
    if let Some(d) = &distccd {
        println!("(b) {}", d.describe());
    }
    if let Some(f) = &farm {
        println!("(c) discomy run against a long-running {}", f.describe());
        println!(
            "(d) discomy run --local-farm {} (farm started and stopped per build)",
            c.farm_slots
        );
    }
    println!("load average before: {}", stats::load_average());
    println!();

    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut reference: Option<BTreeMap<String, Vec<u8>>> = None;
    let (mut compared, mut mismatches) = (0usize, 0usize);
    let mut mismatch_notes = Vec::new();
    let mut summaries = Vec::new();
    for rep in 0..args.reps {
        // Rotate the order each rep (rep 1 starts with plain, the reference for objects).
        for k in 0..modes.len() {
            let mode = modes[(k + rep) % modes.len()];
            let dir = work.path().join(format!("{}-{}", mode.label(), rep + 1));
            std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let root = project::extract(&tarball, &dir, &scratch)?;
            let make: Vec<String> =
                vec!["make".into(), format!("-j{jobs}"), "-C".into(), "src".into(), "linux".into()];
            let summary_path: PathBuf =
                work.path().join(format!("summary-{}-{}.json", mode.label(), rep + 1));
            let job = match mode {
                Mode::Plain => Job::new(&make[0], &root).args(&make[1..]),
                Mode::Distcc => Job::new(&make[0], &root)
                    .args(&make[1..])
                    .arg("CC=distcc gcc -std=gnu99")
                    .envs(&distccd.as_ref().map(Distccd::client_env).unwrap_or_default()),
                Mode::Discomy | Mode::Embedded => {
                    let prog: &Path = discomy.as_deref().unwrap_or(Path::new("discomy"));
                    // Default settings, cold: the cache is on, in a directory new to this build.
                    let job = Job::new(prog, &root)
                        .env_remove("DISCOMY_DISABLE")
                        .env_remove("DISCOMY_CACHE")
                        .env("DISCOMY_CACHE_DIR", dir.join("discomy-cache"))
                        .arg("run");
                    let job = match (mode, &farm) {
                        (Mode::Discomy, Some(f)) => job.env("DISCOMY_SOCKET", &f.socket),
                        _ => job.arg("--local-farm").arg(c.farm_slots.to_string()),
                    };
                    job.arg("--summary-json").arg(&summary_path).arg("--").args(&make)
                }
            }
            .timeout(BUILD_TIMEOUT);
            let fin = job.run_ok(&scratch).with_context(|| {
                let extra = match (mode, &distccd) {
                    (Mode::Distcc, Some(d)) => d.report(),
                    _ => String::new(),
                };
                format!("{} build failed\n{extra}", mode.label())
            })?;
            let src = root.join("src");
            for bin in ["lua", "luac"] {
                if !src.join(bin).is_file() {
                    bail!("`{}` exited 0 but built no src/{bin}", job.describe());
                }
            }
            let objs = objects(&src)?;
            match &reference {
                None => reference = Some(objs),
                Some(r) if mode != Mode::Plain => {
                    for (name, want) in r {
                        compared += 1;
                        match objs.get(name) {
                            Some(got) if got == want => {}
                            Some(_) => {
                                mismatches += 1;
                                mismatch_notes.push(format!(
                                    "{name} ({}, rep {})",
                                    mode.label(),
                                    rep + 1
                                ));
                            }
                            None => {
                                mismatches += 1;
                                mismatch_notes.push(format!(
                                    "{name} missing ({}, rep {})",
                                    mode.label(),
                                    rep + 1
                                ));
                            }
                        }
                    }
                }
                Some(_) => {}
            }
            if matches!(mode, Mode::Discomy | Mode::Embedded) {
                let summary = match std::fs::read(&summary_path) {
                    Ok(b) => serde_json::from_slice::<Value>(&b)
                        .unwrap_or_else(|e| json!({"unparsable": e.to_string()})),
                    Err(e) => json!({"missing": e.to_string()}),
                };
                summaries.push(summary);
            }
            eprintln!("  {:<16} rep {}: {:.2} s", mode.label(), rep + 1, fin.ms() / 1000.0);
            times.entry(mode.label()).or_default().push(fin.ms());
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }

    // `discomy run` keeps its own per-call log; its summary's counts are the outcomes.
    let summed = |key: &str| -> u64 { summaries.iter().filter_map(|s| s.get(key)?.as_u64()).sum() };
    let (remote, units) = (summed("remote"), summed("units"));
    let distcc_remote = match &distccd {
        Some(d) => Some(d.compile_ok_count()?),
        None => None,
    };
    drop(distccd);
    drop(farm);

    let get = |m: Mode| times.get(m.label()).map(Vec::as_slice).unwrap_or(&[]);
    let med = |m: Mode| median(get(m));
    let (a, b, cc) = (med(Mode::Plain), med(Mode::Distcc), med(Mode::Discomy));
    let dd = med(Mode::Embedded);

    println!("{:<16} {:>30} {:>10} {:>9}", "mode", "builds (s)", "median s", "vs plain");
    for &m in &modes {
        let runs: Vec<String> = get(m).iter().map(|t| format!("{:.2}", t / 1000.0)).collect();
        println!(
            "{:<16} {:>30} {:>10.2} {:>9}",
            m.label(),
            runs.join(" "),
            med(m).unwrap_or(f64::NAN) / 1000.0,
            ratio(med(m), a).map_or("-".into(), |r| format!("{r:.3}"))
        );
    }
    if let Some(r) = ratio(cc, b) {
        println!("discomy / distcc build time: {r:.3}");
    }
    if let Some(r) = ratio(dd, b) {
        println!("discomy-embedded / distcc build time: {r:.3}");
    }
    println!("objects compared with the plain build: {compared}, mismatches: {mismatches}");
    for n in mismatch_notes.iter().take(20) {
        println!("  mismatch: {n}");
    }
    if discomy.is_some() {
        println!(
            "discomy remote: {remote} of {units} units (local {}, fallback {}, failed {}), from its summaries",
            summed("local"),
            summed("fallback"),
            summed("failed")
        );
        for (i, s) in summaries.iter().enumerate() {
            println!(
                "discomy summary rep {}: {}",
                i + 1,
                serde_json::to_string(s).unwrap_or_default()
            );
        }
    }
    if let Some(n) = distcc_remote {
        println!("distcc remote (distccd COMPILE_OK): {n}");
    }

    if let Some(path) = &c.json {
        let v = json!({
            "benchmark": "build",
            "project": file_name,
            "jobs": jobs,
            "reps": args.reps,
            "farm_slots": c.farm_slots,
            "plain_ms": nums(get(Mode::Plain)),
            "distcc_ms": nums(get(Mode::Distcc)),
            "discomy_ms": nums(get(Mode::Discomy)),
            "discomy_embedded_ms": nums(get(Mode::Embedded)),
            "median_discomy_embedded_ms": num(dd),
            "discomy_embedded_vs_distcc": num(ratio(dd, b)),
            "median_plain_ms": num(a),
            "median_distcc_ms": num(b),
            "median_discomy_ms": num(cc),
            "distcc_vs_plain": num(ratio(b, a)),
            "discomy_vs_plain": num(ratio(cc, a)),
            "discomy_vs_distcc": num(ratio(cc, b)),
            "objects_compared": compared,
            "mismatches": mismatches,
            "remote_count": if discomy.is_some() { json!(remote) } else { json!(null) },
            "discomy_units": if discomy.is_some() { json!(units) } else { json!(null) },
            "load_average": crate::stats::load_average(),
            "distcc_remote_count": distcc_remote,
            "discomy_summaries": summaries,
        });
        stats::write_json(path, &v)?;
        println!("JSON written to {}", path.display());
    }
    drop(work);
    Ok(if mismatches > 0 { 1 } else { 0 })
}
