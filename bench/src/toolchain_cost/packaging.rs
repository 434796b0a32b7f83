//! Part 1 of `discomy-bench toolchain`, packaging (one-time per compiler): the wrapper's own
//! `toolchain::collect` timed cold, into a fresh manifest cache and warm; manifest sizes; the
//! report and JSON of those figures.

use super::Args;
use super::env::{Env, mib, ms_since};
use crate::stats::{median, ms, num, nums, ratio};
use anyhow::{Context, Result, bail};
use discomy_protocol::{EntryKind, ToolchainManifest};
use discomy_wrapper::toolchain;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub(super) struct ManifestSize {
    pub(super) files: usize,
    pub(super) symlinks: usize,
    pub(super) dirs: usize,
    pub(super) blobs: usize,
    pub(super) bytes: u64,
}

pub(super) fn manifest_size(m: &ToolchainManifest) -> ManifestSize {
    let count = |f: fn(&EntryKind) -> bool| m.entries.iter().filter(|e| f(&e.kind)).count();
    ManifestSize {
        files: count(|k| matches!(k, EntryKind::File { .. })),
        symlinks: count(|k| matches!(k, EntryKind::Symlink { .. })),
        dirs: count(|k| matches!(k, EntryKind::Dir)),
        blobs: m.blobs().len(),
        bytes: m.content_size(),
    }
}

pub(super) struct Packaging {
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

pub(super) fn measure_packaging(
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

pub(super) fn print_packaging(ps: &[Packaging], args: &Args) {
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

pub(super) fn packaging_json(p: &Packaging) -> Value {
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
