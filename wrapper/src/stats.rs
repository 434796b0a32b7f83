//! Per-call outcome lines for `discomy run`'s summary.
//!
//! When `DISCOMY_STATS_FILE` is set, each compile call appends one line
//! `<outcome>\t<exit_code>\t<source>\n` with a single `write(2)` on an `O_APPEND` file, so
//! concurrent wrappers never interleave within a line.

use std::io::Write;

/// Environment variable naming the stats file.
pub const ENV_STATS_FILE: &str = "DISCOMY_STATS_FILE";

/// How a compile call was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The object came from the farm.
    Remote,
    /// Compiled locally by policy (not distributable, or distribution disabled).
    Local,
    /// Distributable, but the farm did not deliver: compiled locally.
    Fallback,
    /// Served from the object cache.
    Cache,
}

impl Outcome {
    /// The word used in the stats file.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Remote => "remote",
            Outcome::Local => "local",
            Outcome::Fallback => "fallback",
            Outcome::Cache => "cache",
        }
    }
}

/// Appends one line, if a stats file is configured. Failures are ignored: stats never break a build.
pub fn record(outcome: Outcome, exit_code: i32, source: &str) {
    let Some(path) = std::env::var_os(ENV_STATS_FILE) else { return };
    let line =
        format!("{}\t{exit_code}\t{}\n", outcome.as_str(), source.replace(['\t', '\n'], " "));
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = file.write_all(line.as_bytes());
    }
}
