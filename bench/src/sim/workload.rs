//! The simulator's inputs: a job trace (per unit: compile CPU seconds, bytes in and out, submit
//! time; plus the final link that waits on every unit) and the builds replayed from it.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::Path;

/// The trace shipped with the bench, recorded from a real Lua 5.4 build.
pub const LUA_TRACE: &str = include_str!("../../traces/lua-5.4.json");

/// One compile unit of a trace.
#[derive(Debug, Clone, Deserialize)]
pub struct Unit {
    /// Source name.
    #[allow(dead_code)]
    pub name: String,
    /// Compiler CPU seconds on a speed-1.0 node.
    pub cpu_s: f64,
    /// Preprocessed unit size.
    pub bytes_in: u64,
    /// Bytes of the unit from its main file (the agent's work estimate); 0 if not recorded.
    #[serde(default)]
    pub source_bytes: u64,
    /// Object size.
    pub bytes_out: u64,
    /// Submit time, seconds from the build's start.
    #[serde(default)]
    pub submit_s: f64,
}

/// The link: runs on the submitter after every unit of its build.
#[derive(Debug, Clone, Deserialize)]
pub struct Link {
    /// CPU seconds on the submitter.
    pub cpu_s: f64,
}

/// A recorded build.
#[derive(Debug, Clone, Deserialize)]
pub struct Trace {
    /// Where it came from.
    pub name: String,
    /// Its units.
    pub units: Vec<Unit>,
    /// Its link step.
    pub link: Link,
}

impl Trace {
    /// The shipped trace, or one from a file.
    pub fn load(path: Option<&Path>) -> Result<Trace> {
        let text = match path {
            Some(p) => {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
            }
            None => LUA_TRACE.to_string(),
        };
        let trace: Trace = serde_json::from_str(&text).context("parsing the trace")?;
        anyhow::ensure!(!trace.units.is_empty(), "the trace has no units");
        anyhow::ensure!(
            trace.units.iter().all(|u| u.cpu_s.is_finite() && u.cpu_s >= 0.0 && u.submit_s >= 0.0),
            "the trace has negative or non-finite times"
        );
        Ok(trace)
    }
}

/// One replay of the trace by one submitter, starting at `start_s`.
#[derive(Debug, Clone)]
pub struct Build {
    /// The submitting host.
    pub submitter: String,
    /// Offset of the build's start.
    pub start_s: f64,
}

/// The default replay: three builds from two submitters, the third starting a second later.
pub fn default_builds() -> Vec<Build> {
    vec![
        Build { submitter: "dev-a".into(), start_s: 0.0 },
        Build { submitter: "dev-b".into(), start_s: 0.0 },
        Build { submitter: "dev-a".into(), start_s: 1.0 },
    ]
}
