//! Build-host counters: what each compiler call became, as `discomy-cc` reports it to its agent
//! ([`crate::Request::Report`]), and the agent's totals since it started
//! ([`crate::Request::Stats`], printed by `discomy stats`).
//!
//! [`UnitCounts`] is shared by `discomy run`'s summary and `discomy stats`: its field names
//! (`units`, `remote`, `local`, `fallback`, `cache_hits`, `failed`, `local_reasons`,
//! `fallback_reasons`) and the reason keys ([`Reason::key`]) are a stable interface: packagers
//! read them to see why units stayed local.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How one compiler call was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A compile unit whose object came from the farm.
    Remote,
    /// A compile unit compiled locally by policy (see its [`Reason`]).
    Local,
    /// A distributable unit the farm did not deliver, compiled locally (see its [`Reason`]).
    Fallback,
    /// A compile unit served from the object cache.
    Cache,
    /// Not a compile unit at all (a link, `-E`, `--version`): run as asked, counted apart.
    NotUnit,
}

impl Outcome {
    /// The word used in `discomy run`'s per-call stats file.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Remote => "remote",
            Outcome::Local => "local",
            Outcome::Fallback => "fallback",
            Outcome::Cache => "cache",
            Outcome::NotUnit => "other",
        }
    }
}

impl Outcome {
    /// The outcome named by [`Outcome::as_str`].
    pub fn from_word(word: &str) -> Option<Outcome> {
        [Outcome::Remote, Outcome::Local, Outcome::Fallback, Outcome::Cache, Outcome::NotUnit]
            .into_iter()
            .find(|o| o.as_str() == word)
    }
}

/// One line of `discomy run`'s per-call stats file, which every `discomy-cc` call appends to:
/// `<outcome>\t<exit_code>\t<source>\t<reason>\n`, with a leading `ltrans\t` for an LTRANS
/// unit (one partition of an LTO link; counted apart from compile units).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsLine {
    /// An LTRANS unit, not a compile unit.
    pub ltrans: bool,
    /// How the call was served.
    pub outcome: Outcome,
    /// The compiler's exit status.
    pub exit_code: i32,
    /// The source file (tabs and newlines replaced by spaces).
    pub source: String,
    /// Why it was not remote.
    pub reason: Reason,
}

impl StatsLine {
    /// The line, newline included.
    pub fn format(&self) -> String {
        format!(
            "{}{}\t{}\t{}\t{}\n",
            if self.ltrans { "ltrans\t" } else { "" },
            self.outcome.as_str(),
            self.exit_code,
            self.source.replace(['\t', '\n'], " "),
            self.reason.key()
        )
    }

    /// Parses one line (without its newline); `None` when it is not one.
    pub fn parse(line: &str) -> Option<StatsLine> {
        let (ltrans, line) = match line.strip_prefix("ltrans\t") {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let mut fields = line.split('\t');
        let outcome = Outcome::from_word(fields.next()?)?;
        let exit_code = fields.next()?.parse().ok()?;
        let source = fields.next()?.to_string();
        let reason = Reason::from_key(fields.next()?)?;
        fields.next().is_none().then_some(StatsLine { ltrans, outcome, exit_code, source, reason })
    }
}

/// Defines [`Reason`], its stable keys and the list of every reason from one table, so no
/// variant can lack a key or be missing from [`Reason::ALL`].
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = $key:literal,)*) => {
        /// Why a call did not go to the farm (or [`Reason::None`] when it did).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The stable key of this reason in `discomy stats --json` and the run summary.
            pub fn key(self) -> &'static str {
                match self {
                    $(Reason::$variant => $key,)*
                }
            }
        }
    };
}

reasons! {
    /// Nothing to explain (remote units, cache hits).
    None = "none",
    /// Linking (no `-c` or `-S`); not a compile unit.
    Link = "link",
    /// `-E`, `-M`, `-MM`: preprocessing only; not a compile unit.
    Preprocess = "preprocess",
    /// No input file (`--version`, `-dumpversion`, …); not a compile unit.
    NoInput = "no_input",
    /// An option without its value, left to the compiler to report; not a compile unit.
    Malformed = "malformed",
    /// An autoconf test program (`conftest.c`).
    Conftest = "conftest",
    /// Several sources, or sources mixed with other inputs, in one call.
    SeveralSources = "several_sources",
    /// Not a C or C++ source (assembler, `-x` of another language).
    Language = "language",
    /// An option discomy knows and keeps local (profiles, dumps, `-save-temps`, `-B`, …).
    RefusedArgument = "refused_argument",
    /// An option discomy does not know.
    UnsupportedFlag = "unsupported_flag",
    /// `-march=native` and friends: the build host's CPU.
    NativeCpu = "native_cpu",
    /// Source from standard input, output to standard output, or a response file.
    StandardStreams = "standard_streams",
    /// Informational options (`--help`, `-print-…`) next to a compile.
    Informational = "informational",
    /// `DISCOMY_DISABLE` is set.
    Disabled = "disabled",
    /// (Fallback) No agent listens on the socket.
    NoAgent = "no_agent",
    /// (Fallback) The agent had no worker for it (none configured, all busy past the queue
    /// limit, all failed).
    NoWorker = "no_worker",
    /// (Fallback) Workers refused it (arguments, toolchain, internal errors).
    FarmRefused = "farm_refused",
    /// (Fallback) The remote compile (or the local preprocessing step) printed diagnostics or
    /// failed: the local compiler reports them.
    Diagnostics = "diagnostics",
    /// (Fallback) The compiler's toolchain could not be collected or shipped.
    Toolchain = "toolchain",
    /// (Fallback) The agent connection broke or answered out of turn.
    AgentError = "agent_error",
    /// (Fallback) The unit depends on something only the build host has (`__TIMESTAMP__`, an
    /// unusable working directory, unsafe paths).
    HostOnly = "host_only",
    /// (Fallback) The result could not be written.
    Output = "output",
    /// (Fallback) The farm's object differed from a local compile of the same unit
    /// (verification): the local object is used and the node is quarantined.
    VerifyMismatch = "verify_mismatch",
}

impl Reason {
    /// The reason of a [`Reason::key`].
    pub fn from_key(key: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.key() == key)
    }
}

/// One compiler call, as the wrapper reports it when it is done. Since version 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitReport {
    /// How it was served.
    pub outcome: Outcome,
    /// Why it was not remote.
    pub reason: Reason,
    /// The compiler's exit status (0 for a success).
    pub exit_code: i32,
}

/// A remote unit compiled locally as well and compared ([`crate::Request::Verified`]). Since
/// version 8.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// The node that compiled it, as the agent named it ([`crate::CompileResult::node`]).
    pub node: String,
    /// Whether the two objects are the same (byte for byte; LTO objects modulo gcc's random
    /// section-name suffix).
    pub matched: bool,
    /// The unit's source, for the agent's log.
    pub source: String,
}

/// What verification found since the agent started. Since version 8.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyCounts {
    /// Remote units the agent asked wrappers to verify.
    pub requested: u64,
    /// Verdicts received.
    pub checked: u64,
    /// Of those, objects that differed from the local compile.
    pub mismatched: u64,
    /// Nodes quarantined after a mismatch (never used again), sorted.
    pub quarantined: Vec<String>,
}

/// What compile units became: the counts of `discomy run`'s summary and of `discomy stats`,
/// under the same names. Since version 6.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitCounts {
    /// Compile calls (one source with `-c`/`-S`).
    pub units: u64,
    /// Units whose object came from the farm.
    pub remote: u64,
    /// Units compiled locally by policy.
    pub local: u64,
    /// Distributable units compiled locally because the farm did not deliver.
    pub fallback: u64,
    /// Units served from the object cache.
    pub cache_hits: u64,
    /// Units whose compile failed (non-zero status).
    pub failed: u64,
    /// `local` by reason key.
    #[serde(default)]
    pub local_reasons: BTreeMap<String, u64>,
    /// `fallback` by reason key.
    #[serde(default)]
    pub fallback_reasons: BTreeMap<String, u64>,
}

impl UnitCounts {
    /// Adds one compile unit (calls that are not units are the caller's to count).
    pub fn record(&mut self, outcome: Outcome, reason: Reason, exit_code: i32) {
        let bump = |map: &mut BTreeMap<String, u64>| {
            *map.entry(reason.key().to_string()).or_insert(0) += 1;
        };
        if outcome == Outcome::NotUnit {
            return;
        }
        self.units += 1;
        if exit_code != 0 {
            self.failed += 1;
        }
        match outcome {
            Outcome::Remote => self.remote += 1,
            Outcome::Cache => self.cache_hits += 1,
            Outcome::Local => {
                self.local += 1;
                bump(&mut self.local_reasons);
            }
            Outcome::Fallback => {
                self.fallback += 1;
                bump(&mut self.fallback_reasons);
            }
            Outcome::NotUnit => {}
        }
    }
}

/// A toolchain a node installed since it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// Its manifest's name (`gcc 14.2.0`).
    pub name: String,
    /// Its digest (the compiler identity), hex.
    pub digest: String,
    /// Bytes of its files. Since version 7.
    pub bytes: u64,
    /// How long the install took (tree built and checked), in milliseconds. Since version 7.
    pub ms: u64,
    /// When it finished, in milliseconds since the Unix epoch. Since version 7.
    pub at_unix_ms: u64,
}

/// A toolchain a node pushed to a peer that asked for it. Since version 7.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pushed {
    /// Its digest, hex.
    pub digest: String,
    /// From the first `InstallToolchain` to the peer's `Installed`, blobs sent on the way, in
    /// milliseconds.
    pub ms: u64,
    /// When the peer had it, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// What a node's toolchain store did since the node started: workers include it in
/// [`WorkerStats`], agents in [`AgentStats`]. Bounded whatever peers send. Since version 6.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreActivity {
    /// Toolchains installed (seeded ones included).
    pub installs: u64,
    /// The most recent installs, oldest first (at most [`StoreActivity::RECENT_INSTALLS`]).
    pub installed: Vec<Installed>,
    /// Blobs received from peers.
    pub blobs_received: u64,
    /// Of those, blobs this node had received before: a toolchain that travelled twice.
    pub blobs_received_again: u64,
    /// Bytes of the blobs received (uncompressed). Since version 7.
    pub blob_bytes_received: u64,
    /// Toolchains pushed to peers that asked for them.
    pub toolchains_pushed: u64,
    /// The most recent pushes, oldest first (at most [`StoreActivity::RECENT_INSTALLS`]).
    /// Since version 7.
    pub pushed: Vec<Pushed>,
}

impl StoreActivity {
    /// How many recent installs are listed.
    pub const RECENT_INSTALLS: usize = 64;

    /// Counts an install.
    pub fn note_install(&mut self, installed: Installed) {
        self.installs += 1;
        self.installed.push(installed);
        if self.installed.len() > Self::RECENT_INSTALLS {
            self.installed.remove(0);
        }
    }

    /// Counts a push.
    pub fn note_push(&mut self, pushed: Pushed) {
        self.toolchains_pushed += 1;
        self.pushed.push(pushed);
        if self.pushed.len() > Self::RECENT_INSTALLS {
            self.pushed.remove(0);
        }
    }
}

/// Milliseconds since the Unix epoch, now (0 before it).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A worker's counters since it started ([`crate::Response::WorkerStats`]). Since version 6.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Its toolchain store.
    pub store: StoreActivity,
    /// Jobs from real distcc clients by result, in distccd's words (`COMPILE_OK`,
    /// `COMPILE_ERROR`, `REJ_BAD_REQ`, `REJ_ACCESS`, `REJ_PUMP` for pump mode).
    pub distcc: BTreeMap<String, u64>,
    /// The most recent units this worker compiled, oldest first (at most
    /// [`WorkerStats::RECENT_UNITS`]). Since version 7.
    pub recent_units: Vec<UnitTime>,
}

impl WorkerStats {
    /// How many recent units are listed.
    pub const RECENT_UNITS: usize = 1024;
}

/// One unit a worker compiled: how long its compiler ran there. Since version 7.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitTime {
    /// The source's name as the build gave it.
    pub source: String,
    /// The compiler's run on the worker (the sandbox included), in milliseconds.
    pub ms: f64,
}

/// An agent's counters since it started. Since version 6.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStats {
    /// The compile units.
    pub counts: UnitCounts,
    /// Its toolchain store.
    pub store: StoreActivity,
    /// Whether it is logged in to a coordinator now (placements come from it).
    pub coordinator_joined: bool,
    /// Workers and distccd hosts put in backoff after a failed exchange.
    pub backoffs: u64,
    /// Calls that were not compile units (links, `-E`, …) by reason key.
    pub other_calls: BTreeMap<String, u64>,
    /// Seconds since the agent started.
    pub uptime_s: f64,
    /// Verification of remote results. Since version 8.
    pub verification: VerifyCounts,
    /// The remembered farm. Not part of [`crate::Response::Stats`] (its layout is unchanged):
    /// asked apart with [`crate::Request::RememberedFarm`] and filled in by the reader.
    #[serde(skip)]
    pub remembered_farm: RememberedFarmStats,
    /// LTRANS units: the partitions of LTO links sent to the farm. Not part of
    /// [`crate::Response::Stats`] (its layout is unchanged): asked apart with
    /// [`crate::Request::LtransStats`] and filled in by the reader.
    #[serde(skip)]
    pub ltrans: LtransCounts,
}

/// LTRANS units, counted apart from compile units: each is one partition of an LTO link (gcc's
/// `-fltrans` step, run by the link's `lto-wrapper`). In `discomy run`'s summary: every LTRANS
/// call of the build; in an agent's counters: the ones it was asked to send to the farm. The
/// field names are a stable interface (`ltrans` in `discomy stats --json` and the summary).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LtransCounts {
    /// LTRANS units.
    pub units: u64,
    /// Of those, units whose object came from the farm.
    pub remote: u64,
    /// Of those, units compiled locally because the farm did not deliver (or, in the summary,
    /// because none was asked: no agent, `DISCOMY_DISABLE`).
    pub fallback: u64,
}

impl LtransCounts {
    /// Adds one LTRANS unit.
    pub fn record(&mut self, remote: bool) {
        self.units += 1;
        if remote {
            self.remote += 1;
        } else {
            self.fallback += 1;
        }
    }
}

/// What an agent in a coordinated farm did without its coordinator: the workers it remembers
/// from the coordinator's farm view and placements, and the units it placed on them while no
/// coordinator answered. The field names are a stable interface (`discomy stats --json`,
/// `remembered_farm`). Since version 8 ([`crate::Request::RememberedFarm`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RememberedFarmStats {
    /// Workers remembered now.
    pub workers: u64,
    /// Units placed on a remembered worker while no coordinator answered.
    pub placed: u64,
    /// Of those, units a remembered worker compiled (its object came back).
    pub remote: u64,
    /// Times a session with a coordinator ended (the coordinator went away).
    pub coordinator_lost: u64,
    /// Sessions opened with a coordinator other than the one of the previous session (failover
    /// between the coordinators of one farm).
    pub failovers: u64,
    /// The coordinator the agent is logged in to now (`IP:PORT`), if any.
    pub coordinator: Option<String>,
}

impl AgentStats {
    /// Adds one report.
    pub fn record(&mut self, report: &UnitReport) {
        if report.outcome == Outcome::NotUnit {
            *self.other_calls.entry(report.reason.key().to_string()).or_insert(0) += 1;
        } else {
            self.counts.record(report.outcome, report.reason, report.exit_code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_lines_round_trip() {
        let line = StatsLine {
            ltrans: false,
            outcome: Outcome::Local,
            exit_code: 1,
            source: "a\tb.c".into(),
            reason: Reason::Conftest,
        };
        let text = line.format();
        assert_eq!(text, "local\t1\ta b.c\tconftest\n");
        let back = StatsLine::parse(text.trim_end()).expect("parses");
        assert_eq!(back, StatsLine { source: "a b.c".into(), ..line });
        assert_eq!(StatsLine::parse("remote\t0\ta.c"), None);
        let ltrans = StatsLine { ltrans: true, outcome: Outcome::Remote, ..back };
        assert_eq!(ltrans.format(), "ltrans\tremote\t1\ta b.c\tconftest\n");
        assert_eq!(StatsLine::parse(ltrans.format().trim_end()), Some(ltrans));
    }

    #[test]
    fn keys_are_unique_and_round_trip() {
        let keys: std::collections::BTreeSet<_> = Reason::ALL.iter().map(|r| r.key()).collect();
        assert_eq!(keys.len(), Reason::ALL.len());
        for r in Reason::ALL {
            assert_eq!(Reason::from_key(r.key()), Some(*r));
        }
    }

    #[test]
    fn reports_add_up_like_the_run_summary() {
        let mut s = AgentStats::default();
        let r = |outcome, reason, exit_code| UnitReport { outcome, reason, exit_code };
        s.record(&r(Outcome::Remote, Reason::None, 0));
        s.record(&r(Outcome::Local, Reason::Conftest, 1));
        s.record(&r(Outcome::Local, Reason::Conftest, 0));
        s.record(&r(Outcome::Fallback, Reason::NoWorker, 0));
        s.record(&r(Outcome::Cache, Reason::None, 0));
        s.record(&r(Outcome::NotUnit, Reason::Link, 0));
        let c = &s.counts;
        assert_eq!(
            (c.units, c.remote, c.local, c.fallback, c.cache_hits, c.failed),
            (5, 1, 2, 1, 1, 1)
        );
        assert_eq!(c.local_reasons.get("conftest"), Some(&2));
        assert_eq!(c.fallback_reasons.get("no_worker"), Some(&1));
        assert_eq!(s.other_calls.get("link"), Some(&1));
    }
}
