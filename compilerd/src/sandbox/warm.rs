//! Sandbox helpers started ahead of time ([`WarmPool`]).
//!
//! A helper's slowest step on a busy host is joining its run's cgroup: a cgroup v1 migration
//! waits for an RCU grace period, about 10 ms when every CPU is compiling. A warm helper
//! (`discomy-sandbox --warm`) makes and joins its cgroups as soon as it starts, then waits for
//! its run's options on stdin; the worker keeps one ready per slot and starts a replacement in
//! the background each time it takes one, so that the compile's own path holds no migration
//! and no start of the helper binary.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

use tempfile::NamedTempFile;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tracing::debug;

use crate::sandbox::{Limits, SandboxError, nul_joined, spawn_helper};

/// Helpers waiting for a run, all started with the same limits.
pub struct WarmPool {
    helper: PathBuf,
    limits: Limits,
    size: usize,
    ready: Mutex<Vec<Warm>>,
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool")
            .field("helper", &self.helper)
            .field("size", &self.size)
            .field("ready", &self.ready.lock().map(|r| r.len()).unwrap_or(0))
            .finish()
    }
}

/// One waiting helper and the status file it was given.
pub(crate) struct Warm {
    child: Child,
    status: NamedTempFile,
}

impl Warm {
    /// Hands the helper its run's options; `None` when it has gone (the caller starts a fresh
    /// one instead).
    pub(crate) async fn start(mut self, unit: &[OsString]) -> Option<(Child, NamedTempFile)> {
        let options = nul_joined(unit.iter().map(|a| a.as_bytes()));
        let mut stdin = self.child.stdin.take()?;
        if let Err(err) = stdin.write_all(&options).await {
            debug!(%err, "warm sandbox helper gone; starting a fresh one");
            return None;
        }
        drop(stdin);
        Some((self.child, self.status))
    }
}

impl WarmPool {
    /// A pool of `size` helpers for runs under `limits` (the helper's own cgroups). Call
    /// [`WarmPool::fill`] from within the runtime to start them.
    pub fn new(helper: PathBuf, limits: Limits, size: usize) -> WarmPool {
        WarmPool { helper, limits, size, ready: Mutex::new(Vec::new()) }
    }

    /// Starts helpers until `size` are waiting. A helper that cannot be started is logged and
    /// left out: runs then start their own.
    pub fn fill(&self) {
        loop {
            let waiting = self.ready.lock().map(|r| r.len()).unwrap_or(self.size);
            if waiting >= self.size {
                return;
            }
            match self.spawn() {
                Ok(warm) => match self.ready.lock() {
                    Ok(mut ready) => ready.push(warm),
                    Err(_) => return,
                },
                Err(err) => {
                    debug!(%err, helper = %self.helper.display(), "cannot start a warm sandbox helper");
                    return;
                }
            }
        }
    }

    fn spawn(&self) -> Result<Warm, SandboxError> {
        let warm = vec!["--warm".into()];
        let (child, status) = spawn_helper(&self.helper, &self.limits, &[], warm, Stdio::piped())?;
        Ok(Warm { child, status })
    }

    /// How many helpers are waiting now.
    pub fn ready(&self) -> usize {
        self.ready.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// A waiting helper for a run with these settings, if one is ready and still alive.
    pub(crate) fn take(
        &self,
        helper: &Path,
        limits: &Limits,
        cgroup_parents: &[PathBuf],
    ) -> Option<Warm> {
        if helper != self.helper || *limits != self.limits || !cgroup_parents.is_empty() {
            return None;
        }
        let mut ready = self.ready.lock().ok()?;
        while let Some(mut warm) = ready.pop() {
            if matches!(warm.child.try_wait(), Ok(None)) {
                return Some(warm);
            }
            // It exited while waiting (a set-up failure): its replacement is started by fill.
        }
        None
    }
}
