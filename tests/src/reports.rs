//! What discomy reports about a run: the wrapper's stats file ([`StatLine`]), the summary of
//! `discomy run --summary-json` ([`Summary`]), and the JSON of `discomy stats` for a worker or
//! an agent.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use discomy_protocol::stats::UnitCounts;

use crate::{bin, clean_command};

/// One line of a `DISCOMY_STATS_FILE`, as the wrapper writes it (`protocol::stats::StatsLine`),
/// with the outcome and reason as their words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatLine {
    /// `remote`, `local`, `fallback` or `cache`.
    pub outcome: String,
    /// The wrapper's exit code.
    pub exit_code: i32,
    /// The source file (may be empty, e.g. for links).
    pub source: String,
    /// Why it was not remote (`discomy stats`' reason keys; `none` for remote and cache).
    pub reason: String,
}

impl StatLine {
    /// Whether this invocation compiled a C or C++ source.
    pub fn is_compile(&self) -> bool {
        [".c", ".cc", ".cpp", ".cxx", ".C"].iter().any(|ext| self.source.ends_with(ext))
    }
}

/// Parses a stats file with the wrapper's own parser; a line it cannot read fails the test.
/// Missing file → no lines.
pub fn read_stats(path: &Path) -> Vec<StatLine> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let parsed = discomy_protocol::stats::StatsLine::parse(line)
                .unwrap_or_else(|| panic!("malformed stats line in {}: {line:?}", path.display()));
            StatLine {
                outcome: parsed.outcome.as_str().to_owned(),
                exit_code: parsed.exit_code,
                source: parsed.source,
                reason: parsed.reason.key().to_owned(),
            }
        })
        .collect()
}

/// Outcome → count.
pub fn outcome_counts(lines: &[StatLine]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for l in lines {
        *out.entry(l.outcome.clone()).or_insert(0) += 1;
    }
    out
}

/// What `discomy run --summary-json` reports: the unit counts (read through `Deref`, as
/// `summary.remote`), and the whole JSON for messages.
#[derive(Debug, Clone)]
pub struct Summary {
    /// `units`, `remote`, `local`, `fallback`, `cache_hits`, `failed` and the reasons.
    pub counts: UnitCounts,
    /// The whole JSON, for messages.
    pub raw: String,
}

impl std::ops::Deref for Summary {
    type Target = UnitCounts;
    fn deref(&self) -> &UnitCounts {
        &self.counts
    }
}

/// Reads a summary file; panics clearly on a missing file or field.
pub fn read_summary(path: &Path) -> Summary {
    let raw = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("summary {} not written: {e}", path.display()));
    let counts = serde_json::from_str(&raw).unwrap_or_else(|e| {
        panic!("summary {} lacks the unit counts ({e}): {raw}", path.display())
    });
    Summary { counts, raw }
}

/// `discomy ARGS… --json`, parsed; fails the test when it fails or prints no JSON.
fn discomy_json(args: &[&OsStr]) -> serde_json::Value {
    let out = clean_command(bin("discomy")).args(args).arg("--json").output().expect("run discomy");
    assert!(
        out.status.success(),
        "discomy {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("discomy {args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

/// `discomy stats --worker ADDR --json`: a worker's counters (`store`: installs, blobs received,
/// toolchains pushed; `distcc`: jobs by result).
pub fn worker_stats(addr: &SocketAddr) -> serde_json::Value {
    let addr = addr.to_string();
    discomy_json(&["stats".as_ref(), "--worker".as_ref(), addr.as_ref()])
}

/// `discomy stats --json` of the agent listening on `socket`.
pub fn agent_stats(socket: &Path) -> serde_json::Value {
    discomy_json(&["stats".as_ref(), "--socket".as_ref(), socket.as_os_str()])
}
