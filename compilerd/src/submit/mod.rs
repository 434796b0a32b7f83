//! `discomy submit` and `discomy jobs`: package builds sent to the coordinator's build queue, and
//! what became of them, through [`crate::coord::api::ApiClient`]. This module turns a user's
//! files into a [`SubmitRequest`] (a source RPM; a spec and its sources; a dist-git repository at
//! a ref) and renders jobs as text; the binary prints. [`tokens`] is `discomy tokens` (tenant
//! tokens, for admins).

pub mod tokens;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use discomy_protocol::ops::{
    BatchRequest, JobDetail, JobSource, JobState, JobView, SubmitRequest, Target,
    is_plain_file_name,
};

use crate::coord::api::{ApiClient, ApiClientError};

use discomy_protocol::specdeps as spec;

/// Why a submission could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The coordinator refused or could not be reached.
    #[error(transparent)]
    Api(#[from] ApiClientError),
    /// The files given do not make a job.
    #[error("{0}")]
    Input(String),
    /// Cloning or reading a dist-git repository failed.
    #[error("{0}")]
    Git(String),
}

/// What to build.
#[derive(Debug, Clone)]
pub enum What {
    /// A `.src.rpm`.
    Srpm(PathBuf),
    /// A `.spec` and the files it names.
    Spec {
        /// The spec.
        spec: PathBuf,
        /// Its sources and patches.
        sources: Vec<PathBuf>,
    },
    /// A dist-git repository (any URL `git clone` takes) at a branch, tag or commit: its one
    /// top-level `.spec`, and every other top-level file as a source.
    DistGit {
        /// The repository.
        url: String,
        /// The ref.
        git_ref: String,
    },
}

/// A submission's settings besides what to build.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where.
    pub target: Target,
    /// Higher first.
    pub priority: i32,
    /// Batch name.
    pub batch: Option<String>,
    /// Who submits.
    pub submitter: String,
    /// Timeout of one attempt.
    pub timeout_secs: Option<u64>,
}

/// Uploads what `what` needs and queues the job; returns its id.
pub fn submit(api: &ApiClient, what: &What, options: &Options) -> Result<u64, SubmitError> {
    let req = prepare(api, what, options)?;
    Ok(api.submit(&req)?.id)
}

/// Uploads what every package needs and queues them as one batch, in one transaction: each job
/// waits for the ones providing what it requires. Returns the ids in `whats`' order.
pub fn submit_batch(
    api: &ApiClient,
    batch: &str,
    whats: &[What],
    options: &Options,
) -> Result<Vec<u64>, SubmitError> {
    let options = Options { batch: Some(batch.to_owned()), ..options.clone() };
    let jobs = whats.iter().map(|w| prepare(api, w, &options)).collect::<Result<_, _>>()?;
    Ok(api.submit_batch(&BatchRequest { batch: batch.to_owned(), jobs })?.ids)
}

/// Uploads what `what` needs and makes its request (with what its spec requires and provides).
fn prepare(api: &ApiClient, what: &What, options: &Options) -> Result<SubmitRequest, SubmitError> {
    let clone;
    let (spec_or_srpm, sources) = match what {
        What::Srpm(path) => {
            if !path.to_string_lossy().ends_with(".src.rpm") {
                return Err(SubmitError::Input(format!("{}: not a .src.rpm", path.display())));
            }
            (path.clone(), Vec::new())
        }
        What::Spec { spec, sources } => (spec.clone(), sources.clone()),
        What::DistGit { url, git_ref } => {
            clone = tempfile::tempdir().map_err(|e| SubmitError::Git(format!("temp dir: {e}")))?;
            let (spec, sources) = checkout(url, git_ref, clone.path())?;
            (spec, sources)
        }
    };
    let (source, deps) = match what {
        What::Srpm(_) => {
            let deps = spec::spec_of_srpm(&spec_or_srpm).map(|t| spec::parse(&t));
            if deps.is_none() {
                tracing::warn!(
                    srpm = %spec_or_srpm.display(),
                    "could not read the spec inside (rpm2cpio, cpio): no build order in its batch"
                );
            }
            (JobSource::Srpm { srpm: api.put_blob(&spec_or_srpm)? }, deps.unwrap_or_default())
        }
        _ => {
            if !spec_or_srpm.to_string_lossy().ends_with(".spec") {
                let shown = spec_or_srpm.display();
                return Err(SubmitError::Input(format!("{shown}: not a .spec")));
            }
            let text = std::fs::read_to_string(&spec_or_srpm)
                .map_err(|e| SubmitError::Input(format!("{}: {e}", spec_or_srpm.display())))?;
            let spec = api.put_blob(&spec_or_srpm)?;
            let sources = sources.iter().map(|s| api.put_blob(s)).collect::<Result<_, _>>()?;
            (JobSource::Spec { spec, sources }, spec::parse(&text))
        }
    };
    let req = SubmitRequest {
        source,
        target: options.target.clone(),
        priority: options.priority,
        batch: options.batch.clone(),
        submitter: options.submitter.clone(),
        timeout_secs: options.timeout_secs,
        requires: deps.requires,
        provides: deps.provides,
    };
    Ok(req)
}

/// Clones `url` at `git_ref` into `dir`; returns its spec and the other top-level files.
fn checkout(url: &str, git_ref: &str, dir: &Path) -> Result<(PathBuf, Vec<PathBuf>), SubmitError> {
    if url.starts_with('-') || git_ref.starts_with('-') {
        return Err(SubmitError::Git("a URL or ref may not start with '-'".into()));
    }
    let git = |args: &[&str]| -> Result<(), SubmitError> {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .map_err(|e| SubmitError::Git(format!("git: {e}")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(SubmitError::Git(format!(
                "git {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    git(&["init", "-q", "."])?;
    git(&["fetch", "-q", "--depth", "1", "--", url, git_ref])?;
    git(&["-c", "advice.detachedHead=false", "checkout", "-q", "FETCH_HEAD"])?;
    package_dir(dir).map_err(|e| match e {
        SubmitError::Input(why) => SubmitError::Input(format!("{url} at {git_ref}: {why}")),
        other => other,
    })
}

/// A package directory (a dist-git checkout's shape): its one top-level `.spec`, and every other
/// top-level regular file (hidden ones aside) as a source.
pub fn package_dir(dir: &Path) -> Result<(PathBuf, Vec<PathBuf>), SubmitError> {
    let io = |e: std::io::Error| SubmitError::Input(format!("{}: {e}", dir.display()));
    let mut specs = Vec::new();
    let mut sources = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(io)?;
    for entry in entries {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().map_err(io)?;
        if !kind.is_file() || name.starts_with('.') || !is_plain_file_name(&name) {
            continue;
        }
        if name.ends_with(".spec") {
            specs.push(entry.path());
        } else {
            sources.push(entry.path());
        }
    }
    sources.sort();
    match specs.as_slice() {
        [spec] => Ok((spec.clone(), sources)),
        [] => Err(SubmitError::Input(format!("{} has no top-level .spec", dir.display()))),
        _ => Err(SubmitError::Input(format!("{} has several .spec files", dir.display()))),
    }
}

/// Polls job `id` until it ends or `timeout` passes; returns it.
pub fn wait(api: &ApiClient, id: u64, timeout: Duration) -> Result<JobView, SubmitError> {
    let started = Instant::now();
    loop {
        let job = api.job(id)?.job;
        if job.state.is_final() || started.elapsed() >= timeout {
            return Ok(job);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Downloads the job's artefacts into `dir`.
pub fn download(api: &ApiClient, job: &JobView, dir: &Path) -> Result<Vec<PathBuf>, SubmitError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| SubmitError::Input(format!("{}: {e}", dir.display())))?;
    let mut paths = Vec::new();
    for blob in &job.artifacts {
        if !is_plain_file_name(&blob.name) {
            return Err(SubmitError::Input(format!("artefact name {:?} refused", blob.name)));
        }
        let path = dir.join(&blob.name);
        api.get_blob(blob, &path)?;
        paths.push(path);
    }
    Ok(paths)
}

fn when(unix: f64) -> String {
    let secs = unix as u64;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}Z")
}

/// `discomy jobs list`: one line per job.
pub fn render_list(jobs: &[JobView]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>6}  {:<10} {:>4}  {:<28} {:<16} {:<12} {:<10} BUILDER",
        "ID", "STATE", "PRIO", "NAME", "TARGET", "SUBMITTER", "BATCH"
    );
    for j in jobs {
        let _ = writeln!(
            out,
            "{:>6}  {:<10} {:>4}  {:<28} {:<16} {:<12} {:<10} {}",
            j.id,
            j.state.as_str(),
            j.priority,
            j.name,
            format!("{}/{}", j.target.chroot, j.target.arch),
            j.submitter,
            j.batch.as_deref().unwrap_or("-"),
            j.builder.as_deref().unwrap_or("-"),
        );
    }
    out
}

/// `discomy jobs show`: the job, its artefacts and its history.
pub fn render_detail(d: &JobDetail) -> String {
    let j = &d.job;
    let mut out = String::new();
    let _ = writeln!(out, "job {}: {} ({})", j.id, j.name, j.state.as_str());
    let _ = writeln!(out, "  target     {}/{}", j.target.chroot, j.target.arch);
    let _ = writeln!(out, "  submitter  {}  priority {}", j.submitter, j.priority);
    if let Some(batch) = &j.batch {
        let _ = writeln!(out, "  batch      {batch}");
    }
    let _ =
        writeln!(out, "  attempt    {} (infrastructure failures: {})", j.attempt, j.infra_failures);
    if let Some(f) = &j.failure {
        let _ = writeln!(out, "  failure    {}: {}", f.kind.as_str(), f.message);
    }
    for a in &j.artifacts {
        let _ = writeln!(out, "  artefact   {} ({} bytes, blake3 {})", a.name, a.size, a.blake3);
    }
    let _ = writeln!(out, "history:");
    for e in &d.events {
        let from = e.from.map_or("-", JobState::as_str);
        let _ = writeln!(
            out,
            "  {}  {:>9} → {:<9}  attempt {}  {}",
            when(e.at),
            from,
            e.to.as_str(),
            e.attempt,
            e.detail
        );
    }
    out
}
