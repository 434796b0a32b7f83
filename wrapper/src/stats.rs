//! What each compiler call became, told to whoever counts it.
//!
//! - The agent: one [`Request::Report`] frame per call, on the connection the call already has
//!   or on a fresh one (a missing agent costs one failed `connect`). A long-running agent's totals
//!   are `discomy stats`.
//! - `discomy run`: when `DISCOMY_STATS_FILE` is set, each compile unit appends one line
//!   `<outcome>\t<exit_code>\t<source>\t<reason>\n` with a single `write(2)` on an `O_APPEND`
//!   file, so concurrent wrappers never interleave within a line.
//!
//! Failures are ignored: counting never breaks a build.

use std::io::Write;

use discomy_protocol::Request;
use discomy_protocol::frame::write_frame;
pub use discomy_protocol::stats::{Outcome, Reason, StatsLine, UnitReport};

use crate::client::AgentClient;

/// Environment variable naming the stats file.
pub const ENV_STATS_FILE: &str = "DISCOMY_STATS_FILE";
/// How long a call without an agent connection waits for one to send its report.
const REPORT_CONNECT_LIMIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Records one call: the stats file line (compile units only) and the agent's report, on
/// `agent` when the call holds a connection already.
pub fn record(
    outcome: Outcome,
    reason: Reason,
    exit_code: i32,
    source: &str,
    agent: Option<&mut AgentClient>,
) {
    if outcome != Outcome::NotUnit {
        append_line(outcome, reason, exit_code, source);
    }
    let report = Request::Report(UnitReport { outcome, reason, exit_code });
    match agent {
        Some(agent) => {
            let _ = write_frame(agent.stream(), &report);
        }
        None => {
            // Links, `-E` and local compiles report on a connection of their own: a wedged
            // agent may cost them this short limit, never more.
            let socket = crate::client::socket_path();
            if let Ok(mut agent) = AgentClient::connect_within(&socket, REPORT_CONNECT_LIMIT) {
                let _ = write_frame(agent.stream(), &report);
            }
        }
    }
}

fn append_line(outcome: Outcome, reason: Reason, exit_code: i32, source: &str) {
    write_line(StatsLine { ltrans: false, outcome, exit_code, source: source.to_string(), reason });
}

/// Records one LTRANS unit (a partition of an LTO link): the stats file line only, marked as
/// such. The agent counts the LTRANS units it is asked to send itself
/// ([`discomy_protocol::stats::LtransCounts`]); they are not compile units.
pub fn record_ltrans(outcome: Outcome, reason: Reason, exit_code: i32, source: &str) {
    write_line(StatsLine { ltrans: true, outcome, exit_code, source: source.to_string(), reason });
}

fn write_line(line: StatsLine) {
    let Some(path) = std::env::var_os(ENV_STATS_FILE) else { return };
    let line = line.format();
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = file.write_all(line.as_bytes());
    }
}

/// Why a distributable call is compiled locally after all: the counted reason and the detail
/// logged.
#[derive(Debug, Clone)]
pub struct Fallback {
    /// The counted reason.
    pub reason: Reason,
    /// What happened.
    pub detail: String,
}

impl Fallback {
    /// A fallback with its detail.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Fallback {
        Fallback { reason, detail: detail.into() }
    }

    /// A refusal from the agent or a worker.
    pub fn refused(refusal: &discomy_protocol::Refusal) -> Fallback {
        use discomy_protocol::RefusalKind as K;
        let reason = match refusal.kind {
            K::NoWorker | K::Unavailable => Reason::NoWorker,
            K::NoToolchain | K::NeedToolchain => Reason::Toolchain,
            K::BadArguments | K::CompilerFailed | K::BadRequest | K::Internal => {
                Reason::FarmRefused
            }
        };
        Fallback::new(reason, format!("farm refused ({:?}): {}", refusal.kind, refusal.message))
    }
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.detail, self.reason.key())
    }
}
