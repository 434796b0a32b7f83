//! Part 2 of `discomy-bench toolchain`, install (one-time per node): the first and second
//! `discomy-cc gcc-11` compile against fresh agent+worker pairs, the daemons' install and push
//! records and blobs received (their `Stats` counters: log text is not an interface); the report
//! and JSON of those figures.

use super::env::{Compare, Env, mib};
use super::packaging::{ManifestSize, manifest_size};
use crate::nodes::{NodeOpts, Nodes};
use crate::project::Unit;
use crate::stats::{Outcomes, median, ms, num};
use anyhow::{Context, Result, bail};
use discomy_protocol::stats::{Installed, StoreActivity, unix_ms_now};
use discomy_wrapper::toolchain;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

#[derive(Default)]
struct Blobs {
    count: usize,
    bytes: f64,
}

fn blobs_received(store: &StoreActivity) -> Blobs {
    Blobs {
        count: usize::try_from(store.blobs_received).unwrap_or(usize::MAX),
        bytes: store.blob_bytes_received as f64,
    }
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
    /// From the start of the first compile to the agent's install of it (wrapper start,
    /// `NeedToolchain`, wrapper→agent blobs, agent install).
    to_agent_ms: Option<f64>,
    /// From the start of the first compile to the agent's push to the worker being done.
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

/// The store's install of `digest`, if it made one.
fn installed<'a>(store: &'a StoreActivity, digest: &str) -> Option<&'a Installed> {
    store.installed.iter().find(|i| i.digest == digest)
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
        let t0 = unix_ms_now();
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
        let agent = nodes.agent_stats()?.store;
        let worker = nodes.worker_stats()?.store;
        let (agent_install, worker_install) =
            (installed(&agent, digest), installed(&worker, digest));
        let sent = agent.pushed.iter().find(|p| p.digest == *digest);
        let since_t0 = |at: u64| at.saturating_sub(t0) as f64;
        let rep = InstallRep {
            startup_ms: nodes.startup_ms,
            first_ms,
            second_ms,
            agent_install_ms: agent_install.map(|i| i.ms as f64),
            sent_ms: sent.map(|p| p.ms as f64),
            worker_install_ms: worker_install.map(|i| i.ms as f64),
            install_bytes: worker_install.or(agent_install).map(|i| i.bytes as f64),
            agent_blobs: blobs_received(&agent),
            worker_blobs: blobs_received(&worker),
            identity_ok: agent_install.is_some() && worker_install.is_some(),
            wrapper_cache_hit,
            to_agent_ms: agent_install.map(|i| since_t0(i.at_unix_ms)),
            to_worker_ms: sent.map(|p| since_t0(p.at_unix_ms)),
        };
        eprintln!(
            "  install rep {}: first {} ms, second {} ms; agent install {} ms, sent {} ms, worker install {} ms",
            i + 1,
            ms(Some(first_ms), 0),
            ms(Some(second_ms), 0),
            ms(rep.agent_install_ms, 0),
            ms(rep.sent_ms, 0),
            ms(rep.worker_install_ms, 0)
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
        ("agent  install (store counters) ms=    ", col(r, |x| x.agent_install_ms)),
        ("agent  push to the worker ms=          ", col(r, |x| x.sent_ms)),
        ("worker install (store counters) ms=    ", col(r, |x| x.worker_install_ms)),
    ];
    for (label, v) in &logs {
        println!("  {label}{} ms   [{}]", ms(median(v), 6), list(v));
    }
    let phases: [(&str, Vec<f64>); 3] = [
        ("start -> agent has it (wrapper->agent)", col(r, InstallRep::agent_phase_ms)),
        ("agent has it -> sent to worker        ", col(r, InstallRep::worker_phase_ms)),
        ("sent -> compile done (compile, answer)", col(r, InstallRep::after_worker_ms)),
    ];
    println!("  first compile, split by the agent's install and push records:");
    for (label, v) in &phases {
        println!("    {label} {} ms   [{}]", ms(median(v), 6), list(v));
    }
    let med_usize =
        |f: fn(&InstallRep) -> usize| median(&col(r, |x| Some(f(x) as f64))).unwrap_or(0.0);
    let med_bytes = |f: fn(&InstallRep) -> f64| median(&col(r, |x| Some(f(x)))).unwrap_or(0.0);
    println!(
        "  manifest content: {} files, {:.1} MiB ({} distinct blobs); installed bytes (store counters) {:.1} MiB",
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
