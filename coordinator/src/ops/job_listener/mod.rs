//! job_listener: webhooks from GitHub, Gitea/Forgejo and GitLab at `POST /api/v1/hooks/FORGE`.
//! Each delivery is checked as its forge documents it ([`forge`]): a known repository
//! (`[[ops.repos]]` of the coordinator's configuration), its secret (HMAC-SHA256 or GitLab's
//! token, compared in constant time), a delivery id never seen before, a body under 1 MiB and
//! well-formed JSON; anything else is refused with a clear status and a log line, and nothing is
//! queued. A push or an opened/updated pull (merge) request is then built: the commit is
//! fetched, its `.discomy.toml` read ([`pipeline`]), and every package it names queued as one
//! batch per target, built in dependency order like any batch.
//!
//! These routes do not take the farm token: forges prove themselves with the hook's secret.

pub mod forge;
pub mod pipeline;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use discomy_protocol::ops::{BatchRequest, BlobRef, CheckKind, JobSource, SubmitRequest, Target};
use serde::Deserialize;

use self::forge::{Event, Forge, HookError};
use self::pipeline::{GitCache, OnFailure, PipelineError};
use super::ci_notify::{WATCH, Watch};
use super::{Ops, OpsError, now};

/// The largest webhook body accepted.
pub const MAX_HOOK_BYTES: usize = 1 << 20;

/// `[[ops.repos]]`: a repository whose hooks are accepted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// As the forge names it: `owner/name` (GitHub, Gitea), `group/project` (GitLab).
    pub name: String,
    /// Its forge.
    pub forge: Forge,
    /// A file holding the hook's secret (one line).
    pub secret_file: PathBuf,
    /// Where the coordinator fetches commits (any URL git takes). Required: a payload's own
    /// clone URL is never fetched.
    pub clone_url: String,
    /// The forge's API for commit statuses (`https://api.github.com`,
    /// `https://gitea.example/api/v1`, `https://gitlab.example/api/v4`); no statuses without it.
    #[serde(default)]
    pub status_api: Option<String>,
    /// A file holding the token the statuses are posted with.
    #[serde(default)]
    pub status_token_file: Option<PathBuf>,
}

/// A repository with its secrets, read at start.
#[derive(Debug, Clone)]
pub struct Repo {
    config: RepoConfig,
    secret: Vec<u8>,
    status_token: Option<String>,
}

impl Repo {
    /// Its forge.
    pub fn forge(&self) -> Forge {
        self.config.forge
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Where and with what commit statuses are posted, when they are.
    pub fn status_api(&self) -> Option<(&str, &str)> {
        Some((self.config.status_api.as_deref()?, self.status_token.as_deref()?))
    }
}

/// Reads every repository's secrets.
pub fn load(repos: &[RepoConfig]) -> Result<Vec<Repo>, String> {
    use discomy_protocol::plumbing::secret::read_token_file;
    repos
        .iter()
        .map(|config| {
            let secret = read_token_file(&config.secret_file)
                .map_err(|e| format!("repository {}: {e}", config.name))?;
            let status_token = match (&config.status_api, &config.status_token_file) {
                (Some(_), Some(file)) => Some(
                    read_token_file(file)
                        .map_err(|e| format!("repository {}: {e}", config.name))?,
                ),
                (None, None) => None,
                _ => {
                    return Err(format!(
                        "repository {}: status_api and status_token_file go together",
                        config.name
                    ));
                }
            };
            Ok(Repo { config: config.clone(), secret: secret.into_bytes(), status_token })
        })
        .collect()
}

/// The listener's routes (outside the farm-token check).
pub fn routes() -> Router<Arc<Ops>> {
    Router::new()
        .route("/api/v1/hooks/{forge}", post(hook))
        .layer(DefaultBodyLimit::max(MAX_HOOK_BYTES))
}

fn refuse(status: StatusCode, forge: &str, why: impl std::fmt::Display) -> Response {
    tracing::warn!(forge, %status, "webhook refused: {why}");
    let body = discomy_protocol::ops::ApiError { error: why.to_string() };
    (status, Json(body)).into_response()
}

impl From<HookError> for StatusCode {
    fn from(e: HookError) -> StatusCode {
        match e {
            HookError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            HookError::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// One delivery, counted by forge and answer for `/metrics`.
async fn hook(
    State(ops): State<Arc<Ops>>,
    Path(forge_name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let forge = Forge::parse(&forge_name).map_or("unknown", |f| f.as_str());
    // (Bodies over the size limit are refused before this handler runs: not counted.)
    let response = handle(Arc::clone(&ops), forge_name, headers, body).await;
    ops.counters.webhook(forge, response.status().as_u16());
    response
}

async fn handle(ops: Arc<Ops>, forge_name: String, headers: HeaderMap, body: Bytes) -> Response {
    let Some(forge) = Forge::parse(&forge_name) else {
        return refuse(StatusCode::NOT_FOUND, &forge_name, "no such forge (github, gitea, gitlab)");
    };
    let name = forge.as_str();
    let payload: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, name, format!("malformed JSON: {e}")),
    };
    let repository = match forge::repository(forge, &payload) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, name, e),
    };
    let Some(repo) =
        ops.repos.iter().find(|r| r.config.forge == forge && r.config.name == repository)
    else {
        return refuse(StatusCode::NOT_FOUND, name, format!("unknown repository {repository:?}"));
    };
    if let Err(e) = forge::verify(forge, &headers, &body, &repo.secret) {
        return refuse(e.clone().into(), name, e);
    }
    let delivery = match forge::delivery_id(forge, &headers) {
        Ok(d) => d,
        Err(e) => return refuse(e.clone().into(), name, e),
    };
    let event = match forge::event(forge, &headers, &payload) {
        Ok(e) => e,
        Err(e) => return refuse(e.clone().into(), name, e),
    };
    let first = {
        let delivery = delivery.clone();
        ops.db(move |db, _| db.record_delivery(forge.as_str(), &delivery, now())).await
    };
    match first {
        Ok(true) => {}
        Ok(false) => {
            return refuse(StatusCode::CONFLICT, name, format!("delivery {delivery} seen before"));
        }
        Err(e) => return e.into_response(),
    }
    let (git_ref, sha, what) = match event {
        Event::Ping => {
            return (StatusCode::OK, Json(serde_json::json!({"pong": true}))).into_response();
        }
        Event::Ignored(why) => {
            tracing::info!(forge = name, %repository, %delivery, "webhook ignored: {why}");
            return (StatusCode::ACCEPTED, Json(serde_json::json!({"ignored": why})))
                .into_response();
        }
        Event::Push { git_ref, sha } => (git_ref.clone(), sha, format!("push to {git_ref}")),
        Event::Change { number, git_ref, sha } => (git_ref, sha, format!("request {number}")),
    };
    let repo = repo.clone();
    let project_id = payload["project"]["id"].as_u64();
    let queued = {
        let ops2 = Arc::clone(&ops);
        let (repo, git_ref, sha) = (repo.clone(), git_ref.clone(), sha.clone());
        tokio::task::spawn_blocking(move || prepare(&ops2, &repo, &git_ref, &sha))
            .await
            .map_err(|e| OpsError::Corrupt(format!("webhook task: {e}")))
    };
    let batches = match queued {
        Ok(Ok(batches)) => batches,
        Ok(Err(e)) => {
            let status = match e {
                Prepared::Pipeline(PipelineError::Git(_)) => StatusCode::BAD_GATEWAY,
                Prepared::Pipeline(_) => StatusCode::UNPROCESSABLE_ENTITY,
                Prepared::Ops(e) => return e.into_response(),
            };
            return refuse(status, name, e);
        }
        Err(e) => return e.into_response(),
    };
    let mut ids = Vec::new();
    for batch in batches {
        let name_of = batch.batch.clone();
        let batch_target = batch.jobs.first().map(|j| j.target.clone());
        let context = match batch.jobs.first() {
            Some(job) => format!("discomy/{}-{}", job.target.chroot, job.target.arch),
            None => "discomy".to_owned(),
        };
        let result = ops
            .db(move |db, ops| {
                db.submit_batch(&batch, &ops.config.queue, &|b| ops.blobs.has(b), now())
            })
            .await;
        match result {
            Ok((batch_ids, events)) => {
                ops.publish(events);
                tracing::info!(forge = name, %repository, %delivery, %what, batch = %name_of,
                    jobs = batch_ids.len(), "webhook queued a batch");
                if let Some(job) = batch_target.as_ref() {
                    if let Err(e) = ops.batch_queued(&name_of, job, &batch_ids).await {
                        return e.into_response();
                    }
                }
                if repo.status_api().is_some() {
                    let watch = Watch {
                        forge,
                        repo: repository.clone(),
                        project_id,
                        sha: sha.clone(),
                        git_ref: git_ref.clone(),
                        context,
                        target_url: format!("{}/api/v1/jobs?batch={name_of}", ops.public_url()),
                        jobs: batch_ids.clone(),
                        sent: None,
                    };
                    let payload = serde_json::to_string(&watch).unwrap_or_default();
                    let added = ops.db(move |db, _| db.outbox_add(WATCH, &payload, now())).await;
                    if let Err(e) = added {
                        return e.into_response();
                    }
                }
                ids.extend(batch_ids);
            }
            Err(e) => return e.into_response(),
        }
    }
    (StatusCode::ACCEPTED, Json(serde_json::json!({"queued": ids}))).into_response()
}

/// Why a pushed commit could not be turned into jobs.
#[derive(Debug, thiserror::Error)]
enum Prepared {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Ops(#[from] OpsError),
}

/// Fetches the commit, reads its pipeline, stores every package's files as blobs, and makes one
/// batch per target. Blocking.
fn prepare(
    ops: &Ops,
    repo: &Repo,
    git_ref: &str,
    sha: &str,
) -> Result<Vec<BatchRequest>, Prepared> {
    let key = blake3::hash(repo.config.name.as_bytes()).to_hex();
    let cache = GitCache::open(&ops.config.state_dir.join("git").join(&key.as_str()[..16]))?;
    cache.fetch(&repo.config.clone_url, git_ref, sha)?;
    let pipeline = cache.pipeline(sha)?;
    let scratch = tempfile::tempdir_in(ops.blobs.scratch()).map_err(OpsError::from)?;
    let mut jobs = Vec::new();
    for (i, pkg) in pipeline.packages.iter().enumerate() {
        let into = scratch.path().join(i.to_string());
        std::fs::create_dir_all(&into).map_err(OpsError::from)?;
        let files = cache.package(sha, &pkg.dir, &into, ops.config.max_upload_bytes)?;
        let spec_text = std::fs::read_to_string(&files[0].path).map_err(OpsError::from)?;
        let deps = discomy_protocol::specdeps::parse(&spec_text);
        let mut blobs = Vec::new();
        for file in &files {
            let (blake3, size) = ops.blobs.adopt(&file.path, ops.config.max_upload_bytes)?;
            blobs.push(BlobRef { name: file.name.clone(), blake3, size });
        }
        let spec = blobs.remove(0);
        jobs.push((JobSource::Spec { spec, sources: blobs }, deps));
    }
    let short = &sha[..12];
    let label: String = repo
        .config
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
        .collect();
    // Checks wait for every package of the batch (they require all it provides) and get their
    // RPMs; abidiff also gets the published build of the same packages.
    let built: Vec<String> = jobs.iter().flat_map(|(_, d)| d.provides.clone()).collect();
    let submitter = format!("{}:{label}", repo.config.forge.as_str());
    let mut batches = Vec::new();
    for target in &pipeline.targets {
        let mut requests: Vec<SubmitRequest> = jobs
            .iter()
            .map(|(source, deps)| SubmitRequest {
                source: source.clone(),
                target: target.clone(),
                priority: pipeline.priority,
                batch: None,
                submitter: submitter.clone(),
                timeout_secs: None,
                requires: deps.requires.clone(),
                provides: deps.provides.clone(),
            })
            .collect();
        for check in &pipeline.checks {
            let baseline = match check.kind {
                CheckKind::Abidiff => published_baseline(ops, target, &built)?,
                CheckKind::Rpmlint => Vec::new(),
            };
            requests.push(SubmitRequest {
                source: JobSource::Check {
                    check: check.kind,
                    warn_only: check.on_failure == OnFailure::Warn,
                    baseline,
                },
                target: target.clone(),
                priority: pipeline.priority,
                batch: None,
                submitter: submitter.clone(),
                timeout_secs: None,
                requires: built.clone(),
                provides: Vec::new(),
            });
        }
        batches.push(BatchRequest {
            batch: format!("{label}@{short}.{}-{}", target.chroot, target.arch),
            jobs: requests,
        });
    }
    Ok(batches)
}

/// The newest published binary RPM of each package in `names`, from the target's repository,
/// stored as blobs (abidiff's baseline). Nothing when nothing is published.
fn published_baseline(
    ops: &Ops,
    target: &Target,
    names: &[String],
) -> Result<Vec<BlobRef>, Prepared> {
    let Some(publish) = &ops.config.publish else { return Ok(Vec::new()) };
    let dir =
        publish.repos_root.join(format!("{}-{}", target.chroot, target.arch)).join("Packages");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
    let mut newest: std::collections::BTreeMap<String, String> = Default::default();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        let Some(stem) = file.strip_suffix(".rpm").filter(|_| is_file) else { continue };
        // NAME-VERSION-RELEASE.ARCH
        let Some((nvr, _arch)) = stem.rsplit_once('.') else { continue };
        let mut parts = nvr.rsplitn(3, '-');
        let (_release, _version, name) = (parts.next(), parts.next(), parts.next());
        let Some(name) = name.filter(|n| names.iter().any(|w| w == n)) else { continue };
        let slot = newest.entry(name.to_owned()).or_default();
        if file > *slot {
            *slot = file;
        }
    }
    let mut blobs = Vec::new();
    for file in newest.into_values() {
        let copy = ops.blobs.scratch().join(format!("baseline-{file}"));
        std::fs::copy(dir.join(&file), &copy).map_err(OpsError::from)?;
        let (blake3, size) = ops.blobs.adopt(&copy, ops.config.max_upload_bytes)?;
        blobs.push(BlobRef { name: file, blake3, size });
    }
    Ok(blobs)
}
