//! The operations API: package build jobs, their queue and the builders that run them. JSON over
//! HTTP on the coordinator's API listener (`--api-listen`), every request carrying the farm token
//! as `Authorization: Bearer TOKEN` (without a token configured, loopback clients only).
//!
//! ```text
//! client  → PUT  /api/v1/blobs/HEX               (a source file, content-addressed by blake3)
//!         → POST /api/v1/jobs                     SubmitRequest   ← SubmitResponse
//!         → POST /api/v1/batches                  BatchRequest    ← BatchResponse
//!         → GET  /api/v1/jobs[?state=&batch=]                     ← Vec<JobView>
//!         → GET  /api/v1/jobs/ID                                  ← JobDetail (with its events)
//!         → POST /api/v1/jobs/ID/cancel | /retry                  ← JobView
//!         → POST /api/v1/jobs/ID/priority         PriorityRequest ← JobView (a waiting job)
//!         → GET  /api/v1/jobs/ID/log[?attempt=N]                  ← the build log (text)
//!         → GET  /api/v1/events?after=SEQ                         ← Vec<JobEvent>
//!         → GET  /api/v1/blobs/HEX                                ← a source or an artefact
//! builder → POST /api/v1/builders/report          BuilderReport   ← BuilderAnswer
//!         → POST /api/v1/jobs/ID/log?attempt=N&offset=O           (log bytes, appended)
//!         → PUT  /api/v1/jobs/ID/artifacts?attempt=N&name=F&blake3=HEX&size=S  (an RPM or log)
//!         → POST /api/v1/jobs/ID/finish           FinishRequest   ← JobView
//! admin   → POST|GET /api/v1/tokens, DELETE /api/v1/tokens/ID  (tenant tokens, see below)
//! ```
//!
//! Who may call what: the farm token may call everything (the lab's and the bootstrap
//! credential); a tenant token ([`TokenInfo`]) only what its scopes allow: any token reads
//! (`GET`), `submit` uploads sources and submits, `admin` cancels, retries, reprioritises and
//! manages tokens; builders' endpoints take the farm token only.
//!
//! A builder's report is also its heartbeat and its request for work: the coordinator answers
//! with at most one new [`Assignment`] (the green light, given from the builder's free capacity)
//! and the jobs it must stop. Everything a builder sends for a job names the attempt it runs, and
//! only the job's current attempt is accepted, so a job never completes twice.
//!
//! API version 1 (the `v1` of the paths; the framed protocol's version does not change). Fields
//! are added with `#[serde(default)]`, never removed.

use serde::{Deserialize, Serialize};

mod tokens;
pub use tokens::{
    MAX_LIVE_TOKENS, MAX_TOKEN_NAME, TOKEN_PREFIX, TOKEN_SECRET_HEX, TokenCreateRequest,
    TokenCreated, TokenInfo, TokenScope, parse_token,
};

/// The API's path prefix.
pub const API_PREFIX: &str = "/api/v1";
/// The API listener's usual port (the farm protocol's [`crate::coordinator::DEFAULT_PORT`] + 1).
pub const DEFAULT_API_PORT: u16 = 3635;

/// Where a job is in its life. `Waiting → Scheduled → Running → Succeeded | Failed | Cancelled`;
/// an infrastructure failure sends a running job back to `Waiting` (a new attempt, after a
/// backoff); `retry` sends a failed or cancelled one back to `Waiting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Queued, waiting for a builder (and for its backoff, after an infrastructure failure).
    Waiting,
    /// Given to a builder, which has not yet said it started.
    Scheduled,
    /// A builder runs it.
    Running,
    /// Built; its artefacts are recorded.
    Succeeded,
    /// Failed for good (a build failure, a timeout, or too many infrastructure failures).
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [JobState; 6] = [
        JobState::Waiting,
        JobState::Scheduled,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The state's name, as in JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the job has ended (nothing runs it, nothing will unless retried).
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

/// Where a job builds: a chroot name the builders know (`rocky-9`, …) and an architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The chroot, as builders name it in their configuration.
    pub chroot: String,
    /// The architecture (`x86_64`, `aarch64`, …).
    pub arch: String,
}

/// A file held by the coordinator, named by its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// The file's name (a plain name: no `/`, not `.` or `..`).
    pub name: String,
    /// blake3 of its content, 64 lowercase hex digits.
    pub blake3: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What a job builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobSource {
    /// A source RPM: `rpmbuild --rebuild`.
    Srpm {
        /// The `.src.rpm`.
        srpm: BlobRef,
    },
    /// A spec and the files it names (tarballs, patches): `rpmbuild -ba`.
    Spec {
        /// The `.spec`.
        spec: BlobRef,
        /// Its sources, put in `SOURCES/`.
        sources: Vec<BlobRef>,
    },
    /// A check of the binary RPMs its batch built (they come as the assignment's `deps`): the
    /// job waits for them like any job of the batch, and its log is the check's report.
    Check {
        /// Which check.
        check: CheckKind,
        /// A failed check only warns: the job succeeds, its report says what was found.
        #[serde(default)]
        warn_only: bool,
        /// For `abidiff`: the previously published RPMs of the same packages.
        #[serde(default)]
        baseline: Vec<BlobRef>,
    },
}

/// The checks a batch can run after its builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// `rpmlint` on the new RPMs (sanitisation).
    Rpmlint,
    /// `abipkgdiff` (abigail-tools) of each new package's shared libraries against its
    /// previously published build.
    Abidiff,
}

impl CheckKind {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Rpmlint => "rpmlint",
            CheckKind::Abidiff => "abidiff",
        }
    }
}

impl JobSource {
    /// Every file the job needs.
    pub fn blobs(&self) -> Vec<&BlobRef> {
        match self {
            JobSource::Srpm { srpm } => vec![srpm],
            JobSource::Spec { spec, sources } => std::iter::once(spec).chain(sources).collect(),
            JobSource::Check { baseline, .. } => baseline.iter().collect(),
        }
    }
}

/// `POST /api/v1/jobs`: a new job. Its blobs must have been uploaded first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// What to build.
    pub source: JobSource,
    /// Where.
    pub target: Target,
    /// Higher runs first; 0 by default.
    #[serde(default)]
    pub priority: i32,
    /// A batch name groups jobs (`discomy jobs list --batch`).
    #[serde(default)]
    pub batch: Option<String>,
    /// Who submits (fair share is between submitters).
    pub submitter: String,
    /// Wall-clock limit of one attempt, in seconds; the coordinator's default when absent.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// What the package needs to build (its `BuildRequires` names, versions dropped). Within a
    /// batch, the job waits for the jobs that provide one of them, and builds with their RPMs.
    #[serde(default)]
    pub requires: Vec<String>,
    /// What its RPMs will provide (the package and subpackage names, its `Provides`).
    #[serde(default)]
    pub provides: Vec<String>,
}

/// `POST /api/v1/batches`: jobs queued together, in one transaction: each waits for the ones
/// that provide what it requires, and a dependency cycle refuses the whole batch, naming it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRequest {
    /// The batch's name (every job's `batch`).
    pub batch: String,
    /// Its jobs.
    pub jobs: Vec<SubmitRequest>,
}

/// The answer to a batch: the jobs' ids, in the request's order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchResponse {
    /// The ids.
    pub ids: Vec<u64>,
}

/// The answer to a submission.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitResponse {
    /// The new job's id.
    pub id: u64,
}

/// Why a job failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// rpmbuild failed: the package's own fault. Never retried on its own.
    Build,
    /// The builder, its disk or the farm failed; retried with backoff, up to a limit.
    Infrastructure,
    /// The attempt ran past the job's timeout.
    Timeout,
    /// The job's input was refused (a missing source, an oversized upload, an unknown chroot).
    Refused,
    /// A job of its batch that provides what it requires failed or was cancelled.
    Dependency,
}

impl FailureKind {
    /// The kind's name, as in JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Build => "build",
            FailureKind::Infrastructure => "infrastructure",
            FailureKind::Timeout => "timeout",
            FailureKind::Refused => "refused",
            FailureKind::Dependency => "dependency",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<FailureKind> {
        [
            FailureKind::Build,
            FailureKind::Infrastructure,
            FailureKind::Timeout,
            FailureKind::Refused,
            FailureKind::Dependency,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }
}

/// A failure and its explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Its kind.
    pub kind: FailureKind,
    /// What happened, for people.
    pub message: String,
}

/// A job as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    /// Its id.
    pub id: u64,
    /// The package's name (from the source file's name).
    pub name: String,
    /// Its state.
    pub state: JobState,
    /// Its priority.
    pub priority: i32,
    /// Who submitted it.
    pub submitter: String,
    /// Its batch.
    pub batch: Option<String>,
    /// Where it builds.
    pub target: Target,
    /// What it builds.
    pub source: JobSource,
    /// Attempts so far (a claim by a builder starts one).
    pub attempt: u32,
    /// Infrastructure failures so far.
    pub infra_failures: u32,
    /// The builder of the current (or last) attempt.
    pub builder: Option<String>,
    /// Unix seconds.
    pub created_at: f64,
    /// Unix seconds of the last change.
    pub updated_at: f64,
    /// Not claimed before this (Unix seconds): a retry's backoff.
    pub not_before: f64,
    /// Timeout of one attempt, in seconds.
    pub timeout_secs: u64,
    /// Why it failed, when it did.
    pub failure: Option<Failure>,
    /// What the current attempt produced (RPMs, the build log).
    pub artifacts: Vec<BlobRef>,
    /// What it needs to build.
    #[serde(default)]
    pub requires: Vec<String>,
    /// What it provides.
    #[serde(default)]
    pub provides: Vec<String>,
    /// The jobs of its batch it waits for (or waited for): they provide what it requires.
    #[serde(default)]
    pub waits_for: Vec<u64>,
}

/// One stored state change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobEvent {
    /// Increases by one per event, farm-wide: `GET /api/v1/events?after=SEQ` pages with it.
    pub seq: u64,
    /// The job.
    pub job: u64,
    /// Unix seconds.
    pub at: f64,
    /// The state before (`None` for the submission, and for a change that leaves the job where
    /// it is: a new priority).
    pub from: Option<JobState>,
    /// The state after.
    pub to: JobState,
    /// The attempt it concerns.
    pub attempt: u32,
    /// The builder, when one is involved.
    pub builder: Option<String>,
    /// Why, for people.
    pub detail: String,
}

/// `GET /api/v1/jobs/ID`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobDetail {
    /// The job.
    pub job: JobView,
    /// Its history, oldest first.
    pub events: Vec<JobEvent>,
}

/// A job attempt a builder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The job.
    pub job: u64,
    /// The attempt.
    pub attempt: u32,
    /// Whether the build has started (the chroot is up); `false` while it downloads sources.
    pub started: bool,
}

/// `POST /api/v1/builders/report`: a builder's capacity and the attempts it holds, every few
/// seconds. It is also the heartbeat that keeps those attempts leased to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuilderReport {
    /// The builder's name, unique in the farm.
    pub builder: String,
    /// How many builds it runs at once.
    pub slots: u32,
    /// Memory it can give builds, in bytes.
    pub memory_bytes: u64,
    /// Free space in its work directory, in bytes.
    pub disk_free_bytes: u64,
    /// Architectures it builds for.
    pub arches: Vec<String>,
    /// Chroots it has.
    pub chroots: Vec<String>,
    /// What it runs now.
    pub held: Vec<Held>,
    /// Whether it wants a new job (false while it shuts down).
    #[serde(default = "yes")]
    pub wants_work: bool,
}

fn yes() -> bool {
    true
}

/// A job given to a builder: its green light.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    /// The job.
    pub job: u64,
    /// The attempt this builder runs; every later request names it.
    pub attempt: u32,
    /// The package's name.
    pub name: String,
    /// What to build (download each blob with `GET /api/v1/blobs/HEX`).
    pub source: JobSource,
    /// Where.
    pub target: Target,
    /// Wall-clock limit of the attempt.
    pub timeout_secs: u64,
    /// Binary RPMs built earlier in the batch that this job requires (and what they require in
    /// turn): installed in the chroot before the build, like a Koji chain build's repository.
    #[serde(default)]
    pub deps: Vec<BlobRef>,
}

/// The coordinator's answer to a [`BuilderReport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuilderAnswer {
    /// A new job, when the builder has room and one is waiting for its chroots.
    pub assignment: Option<Assignment>,
    /// Attempts the builder holds that it must stop (cancelled, timed out, or no longer its own).
    pub stop: Vec<Held>,
    /// Report again within this many seconds, or lose the leases.
    pub report_every_secs: f64,
}

/// How an attempt ended, as its builder says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// rpmbuild succeeded and every artefact was uploaded.
    Succeeded,
    /// It did not.
    Failed(Failure),
}

/// `POST /api/v1/jobs/ID/priority`: a waiting job's new priority (higher runs first).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PriorityRequest {
    /// The new priority.
    pub priority: i32,
}

/// `POST /api/v1/jobs/ID/finish`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinishRequest {
    /// The builder.
    pub builder: String,
    /// The attempt that ended.
    pub attempt: u32,
    /// How.
    pub outcome: Outcome,
}

/// An error body of the API (any status but 2xx).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// What was wrong, for people.
    pub error: String,
}

/// `text` with everything but unreserved characters (`A-Za-z0-9-._~`) percent-encoded: a path
/// segment or a query value of the API.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether `name` is acceptable as a file name from a peer: a plain name of at most 255 bytes,
/// printable ASCII, no `/`, not `.` or `..`, not starting with `-`.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\')
}

/// Whether `hex` is a blake3 digest as the API writes it: 64 lowercase hex digits.
pub fn is_blake3_hex(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_refuse_paths() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert!(is_plain_file_name("lua-5.4.4-1.el9.x86_64.rpm"));
        for bad in ["", ".", "..", "a/b", "../x", "-rf", "a b", "\u{e9}"] {
            assert!(!is_plain_file_name(bad), "{bad:?}");
        }
        assert!(is_blake3_hex(&"ab".repeat(32)));
        assert!(!is_blake3_hex(&"AB".repeat(32)));
        assert!(!is_blake3_hex("ab"));
    }

    #[test]
    fn sources_list_every_blob() {
        let b = |n: &str| BlobRef { name: n.into(), blake3: "0".repeat(64), size: 1 };
        let spec =
            JobSource::Spec { spec: b("a.spec"), sources: vec![b("a.tar.gz"), b("p.patch")] };
        let names: Vec<&str> = spec.blobs().iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["a.spec", "a.tar.gz", "p.patch"]);
    }
}
