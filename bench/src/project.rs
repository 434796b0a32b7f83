//! The benchmark's C code: finding the Lua 5.4 source tarball (Debian's `lua5.4_*.orig.tar.gz`),
//! extracting it, Lua's own compiler flags, and choosing which `src/*.c` units to compile.

use crate::proc::Job;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The flags Lua's `src/Makefile` uses for `make linux` (`CC= gcc -std=gnu99`, `CFLAGS= -O2 -Wall
/// -Wextra -DLUA_COMPAT_5_3 $(SYSCFLAGS)`, `SYSCFLAGS=-DLUA_USE_LINUX`).
pub const LUA_CFLAGS: &[&str] =
    &["-std=gnu99", "-O2", "-Wall", "-Wextra", "-DLUA_COMPAT_5_3", "-DLUA_USE_LINUX"];

/// Default units: eight files spread over the size range.
pub const DEFAULT_UNITS: &[&str] =
    &["lctype.c", "ltable.c", "lgc.c", "lstrlib.c", "lcode.c", "lapi.c", "lparser.c", "lvm.c"];

/// One C source file in Lua's `src/`.
#[derive(Clone, Debug)]
pub struct Unit {
    /// File name, e.g. `lapi.c`.
    pub name: String,
    pub bytes: u64,
}

impl Unit {
    /// The object file Lua's Makefile would produce, e.g. `lapi.o`.
    pub fn object(&self) -> String {
        format!("{}.o", self.name.strip_suffix(".c").unwrap_or(&self.name))
    }
}

/// `--project-dir`, else `$DISCOMY_PROJECTS_DIR`, else `<workspace>/target/projects`.
pub fn projects_dir(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_owned();
    }
    if let Some(p) = std::env::var_os("DISCOMY_PROJECTS_DIR") {
        return PathBuf::from(p);
    }
    let from_source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/projects");
    if from_source.is_dir() {
        return from_source;
    }
    // An installed or copied binary: look for `projects/` beside an ancestor `target/` dir.
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            let cand = dir.join("projects");
            if dir.file_name().is_some_and(|n| n == "target") && cand.is_dir() {
                return cand;
            }
        }
    }
    from_source
}

/// The newest `lua5.4_*.orig.tar.gz` in `dir`.
pub fn find_lua_tarball(dir: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("listing projects dir {}", dir.display()))?;
    let mut found = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("lua5.4_") && name.ends_with(".orig.tar.gz") {
            found.push(e.path());
        }
    }
    found.sort();
    found.pop().with_context(|| {
        format!(
            "no lua5.4_*.orig.tar.gz in {} (set --project-dir or DISCOMY_PROJECTS_DIR)",
            dir.display()
        )
    })
}

/// Extract `tarball` into `dest` with `tar`; return the Lua root (the directory with `src/Makefile`).
pub fn extract(tarball: &Path, dest: &Path, scratch: &Path) -> Result<PathBuf> {
    Job::new("tar", dest).arg("-xzf").arg(tarball).arg("-C").arg(dest).run_ok(scratch)?;
    let entries = std::fs::read_dir(dest).with_context(|| format!("listing {}", dest.display()))?;
    for e in entries {
        let p = e.with_context(|| format!("listing {}", dest.display()))?.path();
        if p.join("src/Makefile").is_file() {
            return Ok(p);
        }
    }
    bail!("{} has no <dir>/src/Makefile after extracting {}", dest.display(), tarball.display())
}

/// Every `*.c` in `src`, smallest first.
pub fn list_units(src: &Path) -> Result<Vec<Unit>> {
    let mut units = Vec::new();
    for e in std::fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
        let e = e.with_context(|| format!("listing {}", src.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".c") {
            let bytes = e.metadata().with_context(|| format!("stat {name}"))?.len();
            units.push(Unit { name, bytes });
        }
    }
    units.sort_by(|a, b| a.bytes.cmp(&b.bytes).then_with(|| a.name.cmp(&b.name)));
    Ok(units)
}

/// `--units`: `default` (the eight of [`DEFAULT_UNITS`]), `all`, a count `N` (N units evenly
/// spread over the size range), or a comma-separated list of names (`lapi,lvm.c`).
pub fn select_units(all: &[Unit], spec: &str) -> Result<Vec<Unit>> {
    let spec = spec.trim();
    let by_name = |n: &str| -> Result<Unit> {
        let n = if n.ends_with(".c") { n.to_owned() } else { format!("{n}.c") };
        all.iter().find(|u| u.name == n).cloned().with_context(|| format!("no unit {n} in src/"))
    };
    match spec {
        "all" => Ok(all.to_vec()),
        "default" | "" => DEFAULT_UNITS.iter().map(|n| by_name(n)).collect(),
        _ => {
            if let Ok(k) = spec.parse::<usize>() {
                if k == 0 {
                    bail!("--units 0 selects nothing");
                }
                let k = k.min(all.len());
                if k == 1 {
                    return Ok(vec![all[all.len() / 2].clone()]);
                }
                // Evenly spaced indices over the size-sorted list, smallest and largest included.
                let last = all.len() - 1;
                let mut idx: Vec<usize> =
                    (0..k).map(|i| (i * last + (k - 1) / 2) / (k - 1)).collect();
                idx.dedup();
                return Ok(idx.into_iter().map(|i| all[i].clone()).collect());
            }
            spec.split(',').filter(|s| !s.trim().is_empty()).map(|n| by_name(n.trim())).collect()
        }
    }
}
