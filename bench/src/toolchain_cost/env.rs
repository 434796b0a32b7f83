//! What every part of `discomy-bench toolchain` shares: the work tree, binaries and environment
//! ([`Env`], which runs local and wrapped compiles), byte-for-byte comparison bookkeeping
//! ([`Compare`]), and small unit conversions.

use crate::proc::Job;
use crate::project::{LUA_CFLAGS, Unit};
use anyhow::{Context, Result};
use discomy_protocol::ToolchainManifest;
use discomy_wrapper::toolchain;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const COMPILE_TIMEOUT: Duration = Duration::from_secs(300);

pub(super) fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

pub(super) fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// The work tree, binaries and environment every part uses.
pub(super) struct Env {
    pub(super) src: PathBuf,
    pub(super) scratch: PathBuf,
    pub(super) work: PathBuf,
    pub(super) path_var: OsString,
    pub(super) discomy_cc: PathBuf,
    pub(super) compilerd: PathBuf,
    /// `DISCOMY_CACHE_DIR` of every wrapper call, pre-warmed for the compilers used.
    pub(super) wrapper_cache: PathBuf,
}

impl Env {
    fn args(unit: &Unit) -> Vec<String> {
        let mut a: Vec<String> = LUA_CFLAGS.iter().map(|s| (*s).to_owned()).collect();
        a.extend(["-c".into(), unit.name.clone(), "-o".into(), unit.object()]);
        a
    }

    pub(super) fn local(&self, compiler: &Path, unit: &Unit) -> Job {
        Job::new(compiler, &self.src).args(Self::args(unit)).timeout(COMPILE_TIMEOUT)
    }

    pub(super) fn wrapped(
        &self,
        compiler: &Path,
        unit: &Unit,
        socket: &Path,
        stats_file: &Path,
    ) -> Job {
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
    pub(super) fn compile(
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
    pub(super) fn warm_wrapper_cache(&self, compiler: &Path) -> Result<ToolchainManifest> {
        let tc = toolchain::collect_cached_in(&self.wrapper_cache, compiler, &[], &self.path_var)
            .with_context(|| format!("collecting {}", compiler.display()))?;
        Ok(tc.manifest)
    }

    pub(super) fn wrapper_cache_entries(&self) -> usize {
        std::fs::read_dir(self.wrapper_cache.join("toolchains")).map_or(0, |d| d.count())
    }
}

/// Byte-for-byte comparison bookkeeping.
#[derive(Default)]
pub(super) struct Compare {
    pub(super) compared: usize,
    pub(super) mismatches: usize,
    pub(super) notes: Vec<String>,
}

impl Compare {
    pub(super) fn check(&mut self, what: impl FnOnce() -> String, reference: &[u8], got: &[u8]) {
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
