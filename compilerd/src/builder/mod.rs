//! The builder role (`discomy-compilerd builder --config FILE`): whole package builds in chroots
//! for the coordinator's build queue.
//!
//! - [`config`]: the TOML configuration, checked at start.
//! - [`run`]: the report loop (heartbeat, green lights, `stop`), one thread per assignment.
//! - [`attempt`]: one assignment's HTTP side: downloads, log streaming, uploads, `finish`, each
//!   retried while the coordinator is away.
//! - [`job`]: one build, local: inputs on disk → rpmbuild in a chroot → outcome, log, RPMs.
//! - [`cgroup`]: each build's cgroup (v2 or v1) with its memory and CPU limits.
//! - [`metrics`]: `/metrics` (builds by result and duration, reports).

pub mod attempt;
pub mod cgroup;
pub mod config;
pub mod job;
pub mod metrics;
pub mod run;

use std::sync::atomic::{AtomicU64, Ordering};

pub use config::{Config, ConfigError};
pub use run::{BuilderError, run};

static CGROUP_FAILURES: AtomicU64 = AtomicU64::new(0);

/// How many builds ran without a cgroup of their own because none could be made.
pub fn cgroup_failures() -> u64 {
    CGROUP_FAILURES.load(Ordering::Relaxed)
}

/// Counts a build without a cgroup; warns the first time.
fn note_cgroup_failure(err: &cgroup::CgroupError) {
    if CGROUP_FAILURES.fetch_add(1, Ordering::Relaxed) == 0 {
        tracing::warn!("builds run without their own cgroup (no memory or CPU limits): {err}");
    }
}
