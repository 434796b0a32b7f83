//! Part 2 of `discomy-bench toolchain`, install (one-time per node): the first and second
//! `discomy-cc gcc-11` compile against fresh agent+worker pairs, the daemons' install and upload
//! log lines, blobs moved; the report and JSON of those figures.

use super::env::{Compare, Env, mib};
use super::packaging::{ManifestSize, manifest_size};
use crate::nodes::{self, NodeOpts, Nodes};
use crate::project::Unit;
use crate::stats::{Outcomes, median, ms, num};
use anyhow::{Context, Result, bail};
use discomy_wrapper::toolchain;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

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

pub(super) struct Install {
    unit: Unit,
    driver: PathBuf,
    size: ManifestSize,
    reps: Vec<InstallRep>,
    remote: Outcomes,
    pub(super) compare: Compare,
}

pub(super) fn measure_install(
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

pub(super) fn print_install(inst: &Install) {
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

pub(super) fn install_json(inst: &Install) -> Value {
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
