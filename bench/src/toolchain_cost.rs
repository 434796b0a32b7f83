//! `discomy-bench toolchain`: what toolchain shipping and the worker's sandbox cost, side by side.
//!
//! 1. Packaging (one-time per compiler): the wrapper's own `toolchain::collect` of the system gcc
//!    and of a private gcc-11, cold (no manifest cache), into a fresh cache (miss + write) and
//!    warm (cache hit); manifest size.
//! 2. Install (one-time per node): against a fresh agent and a fresh sandboxed worker (fresh
//!    `--store` dirs), the first `discomy-cc gcc-11 -c UNIT` (wrapper→agent and agent→worker
//!    upload and install) versus the second one (installed); bytes moved and the daemons'
//!    `toolchain installed … ms=` / `toolchain sent to worker … ms=` lines.
//! 3. Sandbox per-unit cost: two agent+worker pairs, one worker sandboxed and one
//!    `--insecure-no-sandbox`; the same units through each (and local gcc), order rotated per
//!    rep; per-unit medians and sandboxed/unsandboxed ratios, end to end and as the workers log
//!    them; the bare set-up cost of `discomy-sandbox`; objects compared byte for byte.

use crate::nodes::{self, NodeOpts, Nodes};
use crate::proc::{Job, find_discomy_bin};
use crate::project::{self, LUA_CFLAGS, Unit};
use crate::stats::{self, Outcomes, median, ms, num, nums, ratio};
use anyhow::{Context, Result, bail};
use discomy_protocol::{EntryKind, ToolchainManifest};
use discomy_wrapper::invocation::find_on_path;
use discomy_wrapper::toolchain;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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

const COMPILE_TIMEOUT: Duration = Duration::from_secs(300);
/// The sandbox may add at most 5 % to a median unit.
const TARGET_RATIO: f64 = 1.05;
/// Worker debug lines (`compiled … ms=`) give the on-worker time of each unit.
const SANDBOX_LOG: &str = "info,discomy_compilerd::worker=debug";

fn default_gcc11() -> PathBuf {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench.parent().unwrap_or(bench).join("target/x86_64-unknown-linux-gnu/tmp/gcc11/usr/bin/gcc-11")
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// The work tree, binaries and environment every part uses.
struct Env {
    src: PathBuf,
    scratch: PathBuf,
    work: PathBuf,
    path_var: OsString,
    discomy_cc: PathBuf,
    compilerd: PathBuf,
    /// `DISCOMY_CACHE_DIR` of every wrapper call, pre-warmed for the compilers used.
    wrapper_cache: PathBuf,
}

impl Env {
    fn args(unit: &Unit) -> Vec<String> {
        let mut a: Vec<String> = LUA_CFLAGS.iter().map(|s| (*s).to_owned()).collect();
        a.extend(["-c".into(), unit.name.clone(), "-o".into(), unit.object()]);
        a
    }

    fn local(&self, compiler: &Path, unit: &Unit) -> Job {
        Job::new(compiler, &self.src).args(Self::args(unit)).timeout(COMPILE_TIMEOUT)
    }

    fn wrapped(&self, compiler: &Path, unit: &Unit, socket: &Path, stats_file: &Path) -> Job {
        Job::new(&self.discomy_cc, &self.src)
            .env_remove("DISCOMY_DISABLE")
            .env_remove("DISCOMY_LOG")
            .env("DISCOMY_SOCKET", socket)
            .env("DISCOMY_STATS_FILE", stats_file)
            .env("DISCOMY_CACHE_DIR", &self.wrapper_cache)
            .arg(compiler)
            .args(Self::args(unit))
            .timeout(COMPILE_TIMEOUT)
    }

    /// Run `job` (removing the unit's old object first); wall ms and the object.
    fn compile(
        &self,
        job: &Job,
        unit: &Unit,
        report: impl Fn() -> String,
    ) -> Result<(f64, Vec<u8>)> {
        let obj = self.src.join(unit.object());
        match std::fs::remove_file(&obj) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", obj.display())),
        }
        let fin = job
            .run_ok(&self.scratch)
            .with_context(|| format!("compile of {} failed\n{}", unit.name, report()))?;
        let bytes = std::fs::read(&obj).with_context(|| {
            format!(
                "`{}` exited 0 but left no readable {}\n{}",
                job.describe(),
                obj.display(),
                report()
            )
        })?;
        Ok((fin.ms(), bytes))
    }

    /// Warm the wrapper's manifest cache for `compiler` (the key is the driver as named plus
    /// PATH, as `discomy-cc` computes it when no masquerade directory is on PATH).
    fn warm_wrapper_cache(&self, compiler: &Path) -> Result<ToolchainManifest> {
        let tc = toolchain::collect_cached_in(&self.wrapper_cache, compiler, &[], &self.path_var)
            .with_context(|| format!("collecting {}", compiler.display()))?;
        Ok(tc.manifest)
    }

    fn wrapper_cache_entries(&self) -> usize {
        std::fs::read_dir(self.wrapper_cache.join("toolchains")).map_or(0, |d| d.count())
    }
}

/// Byte-for-byte comparison bookkeeping.
#[derive(Default)]
struct Compare {
    compared: usize,
    mismatches: usize,
    notes: Vec<String>,
}

impl Compare {
    fn check(&mut self, what: impl FnOnce() -> String, reference: &[u8], got: &[u8]) {
        self.compared += 1;
        if reference != got {
            self.mismatches += 1;
            self.notes.push(format!(
                "{}: {} bytes vs local {} bytes",
                what(),
                got.len(),
                reference.len()
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Packaging

struct ManifestSize {
    files: usize,
    symlinks: usize,
    dirs: usize,
    blobs: usize,
    bytes: u64,
}

fn manifest_size(m: &ToolchainManifest) -> ManifestSize {
    let count = |f: fn(&EntryKind) -> bool| m.entries.iter().filter(|e| f(&e.kind)).count();
    ManifestSize {
        files: count(|k| matches!(k, EntryKind::File { .. })),
        symlinks: count(|k| matches!(k, EntryKind::Symlink { .. })),
        dirs: count(|k| matches!(k, EntryKind::Dir)),
        blobs: m.blobs().len(),
        bytes: m.content_size(),
    }
}

struct Packaging {
    label: &'static str,
    driver: PathBuf,
    name: String,
    digest: String,
    size: ManifestSize,
    /// Bytes of the cache record on disk.
    record_bytes: u64,
    cold: Vec<f64>,
    miss: Vec<f64>,
    warm: Vec<f64>,
}

fn measure_packaging(
    env: &Env,
    compilers: &[(&'static str, PathBuf)],
    args: &Args,
) -> Result<Vec<Packaging>> {
    let mut out: Vec<Packaging> = Vec::new();
    for (label, driver) in compilers {
        let tc = toolchain::collect(driver, &[], &env.path_var)
            .with_context(|| format!("collecting {}", driver.display()))?;
        out.push(Packaging {
            label,
            driver: driver.clone(),
            name: tc.manifest.name.clone(),
            digest: tc.manifest.digest().to_string(),
            size: manifest_size(&tc.manifest),
            record_bytes: 0,
            cold: Vec::new(),
            miss: Vec::new(),
            warm: Vec::new(),
        });
    }
    let n = out.len();
    for i in 0..args.warmup + args.reps {
        for k in 0..n {
            let p = &mut out[(k + i) % n];
            let t = Instant::now();
            let cold = toolchain::collect(&p.driver, &[], &env.path_var)
                .with_context(|| format!("collecting {}", p.driver.display()))?;
            let cold_ms = ms_since(t);
            let cache = crate::proc::temp_dir("discomy-bench-cache.")?;
            let t = Instant::now();
            let miss = toolchain::collect_cached_in(cache.path(), &p.driver, &[], &env.path_var)?;
            let miss_ms = ms_since(t);
            let t = Instant::now();
            let warm = toolchain::collect_cached_in(cache.path(), &p.driver, &[], &env.path_var)?;
            let warm_ms = ms_since(t);
            for (what, m) in [("cold", &cold), ("cache miss", &miss), ("cache hit", &warm)] {
                if m.manifest.digest().to_string() != p.digest {
                    bail!("{} gave a different manifest on its {what} collect", p.driver.display());
                }
            }
            p.record_bytes = dir_bytes(&cache.path().join("toolchains"));
            if i >= args.warmup {
                p.cold.push(cold_ms);
                p.miss.push(miss_ms);
                p.warm.push(warm_ms);
            }
        }
    }
    Ok(out)
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()
}

fn print_packaging(ps: &[Packaging], args: &Args) {
    println!(
        "1. PACKAGING (one-time per compiler): discomy_wrapper::toolchain in-process, {} rep(s) (+{} warm-up), page cache warm",
        args.reps, args.warmup
    );
    println!(
        "{:<8} {:<30} {:>5} {:>5} {:>7} {:>9} {:>12} {:>9} {:>10}",
        "compiler",
        "manifest",
        "files",
        "links",
        "MiB",
        "cold ms",
        "miss+write",
        "warm ms",
        "cold/warm"
    );
    for p in ps {
        let (c, m, w) = (median(&p.cold), median(&p.miss), median(&p.warm));
        println!(
            "{:<8} {:<30} {:>5} {:>5} {:>7.1} {} {} {} {:>10}",
            p.label,
            p.name,
            p.size.files,
            p.size.symlinks,
            mib(p.size.bytes as f64),
            ms(c, 9),
            ms(m, 12),
            ms(w, 9),
            ratio(c, w).map_or("-".into(), |r| format!("{r:.0}x"))
        );
    }
    for p in ps {
        println!(
            "  {}: {} ({} distinct blobs, cache record {} KiB), identity {}…",
            p.label,
            p.driver.display(),
            p.size.blobs,
            p.record_bytes / 1024,
            &p.digest[..16.min(p.digest.len())]
        );
    }
}

fn packaging_json(p: &Packaging) -> Value {
    json!({
        "compiler": p.label,
        "driver": p.driver.display().to_string(),
        "name": p.name,
        "identity": p.digest,
        "files": p.size.files,
        "symlinks": p.size.symlinks,
        "dirs": p.size.dirs,
        "distinct_blobs": p.size.blobs,
        "content_bytes": p.size.bytes,
        "cache_record_bytes": p.record_bytes,
        "cold_ms": num(median(&p.cold)),
        "cache_miss_ms": num(median(&p.miss)),
        "warm_ms": num(median(&p.warm)),
        "cold_samples_ms": nums(&p.cold),
        "cache_miss_samples_ms": nums(&p.miss),
        "warm_samples_ms": nums(&p.warm),
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Install

#[derive(Default)]
struct Blobs {
    count: usize,
    bytes: f64,
}

fn blobs_received(lines: &[&str]) -> Blobs {
    let mut b = Blobs::default();
    for l in lines.iter().filter(|l| l.contains("blob received")) {
        b.count += 1;
        b.bytes += nodes::num_field(l, "bytes").unwrap_or(0.0);
    }
    b
}

struct InstallRep {
    startup_ms: f64,
    first_ms: f64,
    second_ms: f64,
    agent_install_ms: Option<f64>,
    sent_ms: Option<f64>,
    worker_install_ms: Option<f64>,
    install_bytes: Option<f64>,
    agent_blobs: Blobs,
    worker_blobs: Blobs,
    /// The installed toolchain's identity is gcc-11's manifest digest.
    identity_ok: bool,
    wrapper_cache_hit: bool,
    /// From the start of the first compile to the agent's `toolchain installed` line (wrapper
    /// start, preprocessing, `NeedToolchain`, wrapper→agent blobs, agent install).
    to_agent_ms: Option<f64>,
    /// From the start of the first compile to the agent's `toolchain sent to worker` line.
    to_worker_ms: Option<f64>,
}

impl InstallRep {
    /// The rest of the first compile after the worker had the toolchain (compile, answer).
    fn after_worker_ms(&self) -> Option<f64> {
        Some(self.first_ms - self.to_worker_ms?)
    }

    /// wrapper→agent part: start → agent installed.
    fn agent_phase_ms(&self) -> Option<f64> {
        self.to_agent_ms
    }

    /// Between the agent having it and the agent logging it sent (placement, worker's
    /// `NeedToolchain`, push and worker install).
    fn worker_phase_ms(&self) -> Option<f64> {
        Some(self.to_worker_ms? - self.to_agent_ms?)
    }
}

/// The first `toolchain installed` line after seeding: `ms=`, `bytes=`, whether its identity is
/// `digest`, and its time of day.
fn install_line(lines: &[&str], digest: &str) -> (Option<f64>, Option<f64>, bool, Option<f64>) {
    match lines.iter().find(|l| l.contains("toolchain installed")) {
        Some(l) => (
            nodes::num_field(l, "ms"),
            nodes::num_field(l, "bytes"),
            nodes::field(l, "toolchain") == Some(digest),
            nodes::log_time_of_day(l),
        ),
        None => (None, None, false, None),
    }
}

struct Install {
    unit: Unit,
    driver: PathBuf,
    size: ManifestSize,
    reps: Vec<InstallRep>,
    remote: Outcomes,
    compare: Compare,
}

fn measure_install(
    env: &Env,
    gcc11: &Path,
    unit: &Unit,
    reps: usize,
    slots: u32,
) -> Result<Install> {
    let manifest = toolchain::collect(gcc11, &[], &env.path_var)
        .with_context(|| format!("collecting {}", gcc11.display()))?
        .manifest;
    let digest = &manifest.digest().to_string();
    let stats_file = env.work.join("install-stats.tsv");
    env.warm_wrapper_cache(gcc11)?;
    let (_, reference) = env.compile(&env.local(gcc11, unit), unit, String::new)?;
    let mut compare = Compare::default();
    let mut out = Vec::new();
    for i in 0..reps {
        let label = format!("install{}", i + 1);
        let opts = NodeOpts { label: &label, slots, sandbox: true, log_filter: "info" };
        let mut nodes = Nodes::start(&env.compilerd, &opts)?;
        if i == 0 {
            println!("  ({})", nodes.describe());
        }
        if nodes.worker_log()?.contains(digest) || nodes.agent_log()?.contains(digest) {
            bail!("a fresh node already holds gcc-11 ({digest})\n{}", nodes.report());
        }
        let cache_before = env.wrapper_cache_entries();
        let job = env.wrapped(gcc11, unit, &nodes.socket, &stats_file);
        let t0 = nodes::now_time_of_day();
        let (first_ms, obj1) = env.compile(&job, unit, || nodes.report())?;
        let wrapper_cache_hit = env.wrapper_cache_entries() == cache_before;
        let (second_ms, obj2) = env.compile(&job, unit, || nodes.report())?;
        nodes.ensure_running()?;
        for (k, o) in [(1, &obj1), (2, &obj2)] {
            compare.check(
                || format!("{} via gcc-11 install rep {} compile {k}", unit.name, i + 1),
                &reference,
                o,
            );
        }
        let agent_log = nodes.agent_log()?;
        let worker_log = nodes.worker_log()?;
        let agent_lines = nodes::after_seeding(&agent_log);
        let worker_lines = nodes::after_seeding(&worker_log);
        let (agent_install_ms, agent_bytes, agent_ok, agent_at) =
            install_line(&agent_lines, digest);
        let (worker_install_ms, worker_bytes, worker_ok, _) = install_line(&worker_lines, digest);
        let sent = agent_lines.iter().find(|l| l.contains("toolchain sent to worker"));
        let sent_ms = sent.and_then(|l| nodes::num_field(l, "ms"));
        let sent_at = sent.and_then(|l| nodes::log_time_of_day(l));
        let since_t0 = |at: Option<f64>| at.map(|a| nodes::time_of_day_diff_ms(a, t0));
        let rep = InstallRep {
            startup_ms: nodes.startup_ms,
            first_ms,
            second_ms,
            agent_install_ms,
            sent_ms,
            worker_install_ms,
            install_bytes: worker_bytes.or(agent_bytes),
            agent_blobs: blobs_received(&agent_lines),
            worker_blobs: blobs_received(&worker_lines),
            identity_ok: agent_ok && worker_ok,
            wrapper_cache_hit,
            to_agent_ms: since_t0(agent_at),
            to_worker_ms: since_t0(sent_at),
        };
        eprintln!(
            "  install rep {}: first {} ms, second {} ms; agent install {} ms, sent {} ms, worker install {} ms",
            i + 1,
            ms(Some(first_ms), 0),
            ms(Some(second_ms), 0),
            ms(agent_install_ms, 0),
            ms(sent_ms, 0),
            ms(worker_install_ms, 0)
        );
        out.push(rep);
    }
    Ok(Install {
        unit: unit.clone(),
        driver: gcc11.to_owned(),
        size: manifest_size(&manifest),
        reps: out,
        remote: Outcomes::read(&stats_file)?,
        compare,
    })
}

fn col(reps: &[InstallRep], f: impl Fn(&InstallRep) -> Option<f64>) -> Vec<f64> {
    reps.iter().filter_map(f).collect()
}

fn print_install(inst: &Install) {
    let r = &inst.reps;
    let first = col(r, |x| Some(x.first_ms));
    let second = col(r, |x| Some(x.second_ms));
    let diffs = col(r, |x| Some(x.first_ms - x.second_ms));
    let ratios = col(r, |x| Some(x.first_ms / x.second_ms));
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" ");
    println!(
        "2. INSTALL (one-time per node): gcc-11 `discomy-cc {} … -c {}`, {} fresh agent+worker pair(s) (sandboxed worker)",
        inst.driver.display(),
        inst.unit.name,
        r.len()
    );
    println!(
        "  first compile (upload + install)   {} ms   [{}]",
        ms(median(&first), 8),
        list(&first)
    );
    println!(
        "  second compile (installed)         {} ms   [{}]",
        ms(median(&second), 8),
        list(&second)
    );
    println!(
        "  one-time cost (first - second)     {} ms   (median of same-pair differences)",
        ms(median(&diffs), 8)
    );
    println!(
        "  ratio first/second                 {:>8}",
        median(&ratios).map_or("-".into(), |x| format!("{x:.2}"))
    );
    let logs: [(&str, Vec<f64>); 3] = [
        ("agent  `toolchain installed` ms=       ", col(r, |x| x.agent_install_ms)),
        ("agent  `toolchain sent to worker` ms=  ", col(r, |x| x.sent_ms)),
        ("worker `toolchain installed` ms=       ", col(r, |x| x.worker_install_ms)),
    ];
    for (label, v) in &logs {
        println!("  {label}{} ms   [{}]", ms(median(v), 6), list(v));
    }
    let phases: [(&str, Vec<f64>); 3] = [
        ("start -> agent has it (wrapper->agent)", col(r, InstallRep::agent_phase_ms)),
        ("agent has it -> sent to worker        ", col(r, InstallRep::worker_phase_ms)),
        ("sent -> compile done (compile, answer)", col(r, InstallRep::after_worker_ms)),
    ];
    println!("  first compile, split by the agent's log timestamps:");
    for (label, v) in &phases {
        println!("    {label} {} ms   [{}]", ms(median(v), 6), list(v));
    }
    let med_usize =
        |f: fn(&InstallRep) -> usize| median(&col(r, |x| Some(f(x) as f64))).unwrap_or(0.0);
    let med_bytes = |f: fn(&InstallRep) -> f64| median(&col(r, |x| Some(f(x)))).unwrap_or(0.0);
    println!(
        "  manifest content: {} files, {:.1} MiB ({} distinct blobs); logged install bytes= {:.1} MiB",
        inst.size.files,
        mib(inst.size.bytes as f64),
        inst.size.blobs,
        mib(median(&col(r, |x| x.install_bytes)).unwrap_or(0.0))
    );
    println!(
        "  blobs moved: wrapper->agent {:.0} blobs {:.1} MiB; agent->worker {:.0} blobs {:.1} MiB (the rest the fresh stores already held, seeded from the host's gcc)",
        med_usize(|x| x.agent_blobs.count),
        mib(med_bytes(|x| x.agent_blobs.bytes)),
        med_usize(|x| x.worker_blobs.count),
        mib(med_bytes(|x| x.worker_blobs.bytes)),
    );
    println!(
        "  node start-up (worker + agent, incl. seeding host compilers): {} ms",
        ms(median(&col(r, |x| Some(x.startup_ms))), 0)
    );
    let ok = r.iter().filter(|x| x.identity_ok).count();
    let hits = r.iter().filter(|x| x.wrapper_cache_hit).count();
    println!(
        "  installed identity = gcc-11 manifest digest: {ok}/{} reps; wrapper manifest cache hit on first compile: {hits}/{}; outcomes: {}",
        r.len(),
        r.len(),
        inst.remote.summary()
    );
}

fn install_json(inst: &Install) -> Value {
    let r = &inst.reps;
    let first = col(r, |x| Some(x.first_ms));
    let second = col(r, |x| Some(x.second_ms));
    json!({
        "unit": inst.unit.name,
        "reps": r.len(),
        "first_ms": num(median(&first)),
        "second_ms": num(median(&second)),
        "one_time_ms": num(median(&col(r, |x| Some(x.first_ms - x.second_ms)))),
        "first_over_second": num(median(&col(r, |x| Some(x.first_ms / x.second_ms)))),
        "agent_install_ms": num(median(&col(r, |x| x.agent_install_ms))),
        "sent_to_worker_ms": num(median(&col(r, |x| x.sent_ms))),
        "worker_install_ms": num(median(&col(r, |x| x.worker_install_ms))),
        "node_startup_ms": num(median(&col(r, |x| Some(x.startup_ms)))),
        "first_phase_wrapper_to_agent_ms": num(median(&col(r, InstallRep::agent_phase_ms))),
        "first_phase_agent_to_worker_ms": num(median(&col(r, InstallRep::worker_phase_ms))),
        "first_phase_compile_ms": num(median(&col(r, InstallRep::after_worker_ms))),
        "per_rep": r.iter().map(|x| json!({
            "first_ms": num(Some(x.first_ms)),
            "second_ms": num(Some(x.second_ms)),
            "agent_install_ms": num(x.agent_install_ms),
            "sent_to_worker_ms": num(x.sent_ms),
            "worker_install_ms": num(x.worker_install_ms),
            "install_bytes": num(x.install_bytes),
            "agent_blobs_received": x.agent_blobs.count,
            "agent_blob_bytes": num(Some(x.agent_blobs.bytes)),
            "worker_blobs_received": x.worker_blobs.count,
            "worker_blob_bytes": num(Some(x.worker_blobs.bytes)),
            "identity_ok": x.identity_ok,
            "wrapper_cache_hit": x.wrapper_cache_hit,
            "node_startup_ms": num(Some(x.startup_ms)),
            "first_phase_wrapper_to_agent_ms": num(x.agent_phase_ms()),
            "first_phase_agent_to_worker_ms": num(x.worker_phase_ms()),
            "first_phase_compile_ms": num(x.after_worker_ms()),
        })).collect::<Vec<_>>(),
        "outcomes": inst.remote.to_json(),
        "objects_compared": inst.compare.compared,
        "mismatches": inst.compare.mismatches,
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Sandbox

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

struct UnitTimes {
    unit: Unit,
    local: Vec<f64>,
    sandboxed: Vec<f64>,
    unsandboxed: Vec<f64>,
    /// On-worker times from the workers' `compiled … ms=` lines (timed reps only).
    worker_s: Vec<f64>,
    worker_u: Vec<f64>,
    /// CPU ms of the worker's children (compiler, and helper when sandboxed) per compile.
    cpu_s: Vec<f64>,
    cpu_u: Vec<f64>,
}

impl UnitTimes {
    fn ratio(&self) -> Option<f64> {
        ratio(median(&self.sandboxed), median(&self.unsandboxed))
    }

    /// Median of same-rep ratios.
    fn paired(&self) -> Option<f64> {
        let v: Vec<f64> =
            self.sandboxed.iter().zip(&self.unsandboxed).map(|(s, u)| s / u).collect();
        median(&v)
    }

    fn worker_ratio(&self) -> Option<f64> {
        ratio(median(&self.worker_s), median(&self.worker_u))
    }

    fn cpu_ratio(&self) -> Option<f64> {
        ratio(median(&self.cpu_s), median(&self.cpu_u))
    }
}

/// `source -> [ms]` of the workers' `compiled` debug lines, in log order.
fn compiled_lines(log: &str) -> BTreeMap<String, Vec<f64>> {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for l in log.lines().filter(|l| l.contains(" compiled ")) {
        if let (Some(src), Some(t)) = (nodes::field(l, "source"), nodes::num_field(l, "ms")) {
            out.entry(src.trim_matches('"').to_owned()).or_default().push(t);
        }
    }
    out
}

struct SetupCost {
    /// What ran: `DRIVER -dumpversion`, and the sandbox root.
    program: String,
    root: PathBuf,
    host: Vec<f64>,
    sandboxed: Vec<f64>,
    /// The same with `--no-cgroup`: no per-run cgroups to create, join and remove.
    no_cgroup: Vec<f64>,
    probe: Vec<f64>,
}

/// Pause before each bare run: units reach a worker a compile apart, not back to back, and
/// some kernel costs (a cgroup join waits for an RCU grace period) hide in a tight loop.
const SETUP_GAP: Duration = Duration::from_millis(200);

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

struct Sandbox {
    units: Vec<UnitTimes>,
    describe: [String; 2],
    outcomes: Outcomes,
    calls: usize,
    compare: Compare,
    setup: Option<SetupCost>,
    gcc: PathBuf,
}

fn measure_sandbox(env: &Env, gcc: &Path, units: &[Unit], args: &Args) -> Result<Sandbox> {
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
    let (ws, wu) = (compiled_lines(&s.worker_log()?), compiled_lines(&u.worker_log()?));
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

struct SandboxSummary {
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

fn summarize(sb: &Sandbox) -> SandboxSummary {
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

fn print_sandbox(sb: &Sandbox, sum: &SandboxSummary, args: &Args) {
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
         wrk = the workers' own `compiled ms=` debug lines; cpu = CPU of the worker's children, 10 ms ticks)"
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

fn sandbox_json(sb: &Sandbox, sum: &SandboxSummary) -> Value {
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

// ---------------------------------------------------------------------------------------------

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
