//! The operations API: axum routes over [`super::Ops`], as `discomy_protocol::ops` documents
//! them. Every request proves the farm token or a tenant token (`Authorization: Bearer`, compared
//! in constant time through blake3); without a farm token configured, loopback clients need none.
//! What each route needs is [`super::tokens::need`]; the caller reaches handlers as an
//! [`Extension`] of [`Caller`]. JSON bodies are capped at 1 MiB; uploads stream to the blob store
//! under its own limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use discomy_protocol::ops::{
    ApiError, BatchRequest, BatchResponse, BlobRef, BuilderReport, FinishRequest, JobDetail,
    JobState, SubmitRequest, SubmitResponse, TOKEN_PREFIX, TokenCreateRequest, TokenCreated,
    TokenInfo, is_blake3_hex, is_plain_file_name,
};
use serde::Deserialize;

use super::tokens::{self, Caller};
use super::{Ops, OpsError, now};

/// JSON bodies larger than this are refused.
const MAX_JSON_BYTES: usize = 1 << 20;

/// The API's routes.
pub fn router(ops: Arc<Ops>) -> Router {
    let uploads = Router::new()
        .route("/api/v1/blobs/{hex}", put(put_blob))
        .route("/api/v1/jobs/{id}/artifacts", put(put_artifact))
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .route("/api/v1/blobs/{hex}", get(get_blob))
        .route("/api/v1/jobs", post(submit).get(list))
        .route("/api/v1/batches", post(submit_batch))
        .route("/api/v1/jobs/{id}", get(show))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/jobs/{id}/retry", post(retry))
        .route("/api/v1/jobs/{id}/priority", post(set_priority))
        .route("/api/v1/jobs/{id}/log", get(read_log).post(append_log))
        .route("/api/v1/jobs/{id}/finish", post(finish))
        .route("/api/v1/builders/report", post(report))
        .route("/api/v1/events", get(events))
        .route("/api/v1/tokens", post(create_token).get(list_tokens))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
        .merge(uploads)
        .layer(middleware::from_fn_with_state(Arc::clone(&ops), authenticate))
        // Forges prove themselves with their hook's secret, not a token.
        .merge(super::job_listener::routes())
        .with_state(ops)
}

impl OpsError {
    /// The HTTP status that says it (the API's and the web UI's); a server-side failure is
    /// logged here.
    pub fn status(&self) -> StatusCode {
        match self {
            OpsError::NotFound(_) | OpsError::Missing(_) => StatusCode::NOT_FOUND,
            OpsError::BadRequest(_) => StatusCode::BAD_REQUEST,
            OpsError::Conflict(_) => StatusCode::CONFLICT,
            OpsError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            OpsError::Corrupt(_)
            | OpsError::Sqlite(_)
            | OpsError::Postgres(_)
            | OpsError::Io(_) => {
                tracing::error!(err = %self, "build queue");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for OpsError {
    fn into_response(self) -> Response {
        (self.status(), Json(ApiError { error: self.to_string() })).into_response()
    }
}

/// A blob's bytes, streamed, with its length (`GET /api/v1/blobs/HEX`, and the web UI's
/// downloads, which add their own headers).
pub(crate) async fn blob_response(ops: &Ops, hex: &str) -> Result<Response, OpsError> {
    checked_hex(hex)?;
    let file = match tokio::fs::File::open(ops.blobs.path(hex)).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(OpsError::Missing(format!("blob {hex}")));
        }
        Err(e) => return Err(e.into()),
    };
    let len = file.metadata().await?.len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok(([(header::CONTENT_LENGTH, len.to_string())], body).into_response())
}

/// Who calls (the farm token, a tenant token, loopback without a farm token) and whether the
/// route allows it: 401 for an unknown, revoked, expired or missing token, 403 for one without
/// the scope the route needs.
async fn authenticate(
    State(ops): State<Arc<Ops>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    mut request: Request,
    next: Next,
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let need = tokens::need(request.method(), request.uri().path());
    let verdict = match ops.caller(bearer, peer.ip().is_loopback()).await {
        Ok(verdict) => verdict.and_then(|caller| caller.allows(need).map(|()| caller)),
        Err(err) => return err.into_response(),
    };
    match verdict {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => {
            tracing::warn!(
                %peer,
                method = %request.method(),
                path = %request.uri().path(),
                why = refusal.message(),
                "API request refused"
            );
            (refusal.status(), Json(ApiError { error: refusal.message() })).into_response()
        }
    }
}

fn checked_hex(hex: &str) -> Result<(), OpsError> {
    if is_blake3_hex(hex) {
        Ok(())
    } else {
        Err(OpsError::BadRequest(format!("{hex:?} is not a blake3 digest")))
    }
}

#[derive(Deserialize)]
struct SizeQuery {
    size: Option<u64>,
}

async fn put_blob(
    State(ops): State<Arc<Ops>>,
    Path(hex): Path<String>,
    Query(q): Query<SizeQuery>,
    body: Body,
) -> Result<StatusCode, OpsError> {
    checked_hex(&hex)?;
    let size =
        ops.blobs.put(&hex, q.size, ops.config.max_upload_bytes, body.into_data_stream()).await?;
    tracing::debug!(%hex, size, "blob stored");
    Ok(StatusCode::CREATED)
}

async fn get_blob(
    State(ops): State<Arc<Ops>>,
    Path(hex): Path<String>,
) -> Result<Response, OpsError> {
    blob_response(&ops, &hex).await
}

async fn submit(
    State(ops): State<Arc<Ops>>,
    Json(req): Json<SubmitRequest>,
) -> Result<(StatusCode, Json<SubmitResponse>), OpsError> {
    let (id, events) = ops
        .db(move |db, ops| db.submit(&req, &ops.config.queue, &|b| ops.blobs.has(b), now()))
        .await?;
    ops.publish(events);
    Ok((StatusCode::CREATED, Json(SubmitResponse { id })))
}

async fn submit_batch(
    State(ops): State<Arc<Ops>>,
    Json(req): Json<BatchRequest>,
) -> Result<(StatusCode, Json<BatchResponse>), OpsError> {
    let (batch, target) = (req.batch.clone(), req.jobs.first().map(|j| j.target.clone()));
    let (ids, events) = ops
        .db(move |db, ops| db.submit_batch(&req, &ops.config.queue, &|b| ops.blobs.has(b), now()))
        .await?;
    ops.publish(events);
    if let Some(target) = target {
        ops.batch_queued(&batch, &target, &ids).await?;
    }
    Ok((StatusCode::CREATED, Json(BatchResponse { ids })))
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    batch: Option<String>,
}

async fn list(
    State(ops): State<Arc<Ops>>,
    Query(q): Query<ListQuery>,
) -> Result<Response, OpsError> {
    let state = match q.state.as_deref() {
        None => None,
        Some(name) => Some(
            JobState::parse(name)
                .ok_or_else(|| OpsError::BadRequest(format!("no job state {name:?}")))?,
        ),
    };
    let jobs = ops.db(move |db, _| db.list(state, q.batch.as_deref())).await?;
    Ok(Json(jobs).into_response())
}

async fn show(State(ops): State<Arc<Ops>>, Path(id): Path<u64>) -> Result<Response, OpsError> {
    let detail = ops
        .db(move |db, _| {
            Ok(JobDetail { job: db.job(id)?, events: db.events(Some(id), 0, 100_000)? })
        })
        .await?;
    Ok(Json(detail).into_response())
}

async fn cancel(
    State(ops): State<Arc<Ops>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> Result<Response, OpsError> {
    let who = caller.who("the API");
    let (job, events) = ops.db(move |db, _| db.cancel(id, &who, now())).await?;
    ops.publish(events);
    Ok(Json(job).into_response())
}

async fn retry(
    State(ops): State<Arc<Ops>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> Result<Response, OpsError> {
    let who = caller.who("the API");
    let (job, events) = ops.db(move |db, _| db.retry(id, &who, now())).await?;
    ops.publish(events);
    Ok(Json(job).into_response())
}

async fn set_priority(
    State(ops): State<Arc<Ops>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
    Json(req): Json<discomy_protocol::ops::PriorityRequest>,
) -> Result<Response, OpsError> {
    let who = caller.who("the API");
    let (job, events) = ops.db(move |db, _| db.set_priority(id, req.priority, &who, now())).await?;
    ops.publish(events);
    Ok(Json(job).into_response())
}

#[derive(Deserialize)]
struct LogQuery {
    attempt: Option<u32>,
    offset: Option<u64>,
}

async fn read_log(
    State(ops): State<Arc<Ops>>,
    Path(id): Path<u64>,
    Query(q): Query<LogQuery>,
) -> Result<Response, OpsError> {
    let bytes = ops
        .db(move |db, ops| {
            let attempt = match q.attempt {
                Some(a) => a,
                None => db.job(id)?.attempt,
            };
            ops.logs.read(id, attempt)
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response())
}

async fn append_log(
    State(ops): State<Arc<Ops>>,
    Path(id): Path<u64>,
    Query(q): Query<LogQuery>,
    body: axum::body::Bytes,
) -> Result<StatusCode, OpsError> {
    let (Some(attempt), Some(offset)) = (q.attempt, q.offset) else {
        return Err(OpsError::BadRequest("attempt and offset are required".into()));
    };
    ops.db(move |db, ops| {
        db.check_attempt(id, attempt)?;
        ops.logs.append(id, attempt, offset, &body)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ArtifactQuery {
    attempt: u32,
    name: String,
    blake3: String,
    size: u64,
}

async fn put_artifact(
    State(ops): State<Arc<Ops>>,
    Path(id): Path<u64>,
    Query(q): Query<ArtifactQuery>,
    body: Body,
) -> Result<StatusCode, OpsError> {
    checked_hex(&q.blake3)?;
    if !is_plain_file_name(&q.name) {
        return Err(OpsError::BadRequest(format!("{:?} is not a plain file name", q.name)));
    }
    let attempt = q.attempt;
    ops.db(move |db, _| db.check_attempt(id, attempt)).await?;
    let limit = ops.config.max_upload_bytes;
    let size = ops.blobs.put(&q.blake3, Some(q.size), limit, body.into_data_stream()).await?;
    let blob = BlobRef { name: q.name, blake3: q.blake3, size };
    ops.db(move |db, _| db.add_artifact(id, attempt, &blob)).await?;
    Ok(StatusCode::CREATED)
}

async fn finish(
    State(ops): State<Arc<Ops>>,
    Path(id): Path<u64>,
    Json(req): Json<FinishRequest>,
) -> Result<Response, OpsError> {
    let (job, events) =
        ops.db(move |db, ops| db.finish(id, &req, &ops.config.queue, now())).await?;
    ops.publish(events);
    Ok(Json(job).into_response())
}

/// A builder's report. One that wants work and gets none is held (long-polled) for up to half
/// a report period, and answered again as soon as anything changes in the queue: a job is given
/// out the moment it can run, not at the builder's next report.
async fn report(
    State(ops): State<Arc<Ops>>,
    Json(report): Json<BuilderReport>,
) -> Result<Response, OpsError> {
    let report = Arc::new(report);
    let ask = |report: Arc<BuilderReport>| {
        ops.db(move |db, ops| db.report(&report, &ops.config.queue, now()))
    };
    // Subscribed before asking, so a change between the answer and the wait is not missed.
    let changed = ops.work.notified();
    tokio::pin!(changed);
    changed.as_mut().enable();
    let (mut answer, events) = ask(Arc::clone(&report)).await?;
    ops.publish(events);
    let room = (report.held.len() as u64) < u64::from(report.slots);
    if answer.assignment.is_none() && report.wants_work && room && answer.stop.is_empty() {
        let hold = Duration::from_secs_f64(ops.config.queue.report_every_secs / 2.0);
        if tokio::time::timeout(hold, changed).await.is_ok() {
            let (again, events) = ask(Arc::clone(&report)).await?;
            ops.publish(events);
            answer = again;
        }
    }
    Ok(Json(answer).into_response())
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<u64>,
    job: Option<u64>,
    limit: Option<u32>,
}

async fn events(
    State(ops): State<Arc<Ops>>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, OpsError> {
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let events = ops.db(move |db, _| db.events(q.job, q.after.unwrap_or(0), limit)).await?;
    Ok(Json(events).into_response())
}

/// `POST /api/v1/tokens` (admin): a new tenant token, its text shown in this answer only.
async fn create_token(
    State(ops): State<Arc<Ops>>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<TokenCreateRequest>,
) -> Result<(StatusCode, Json<TokenCreated>), OpsError> {
    req.check().map_err(OpsError::BadRequest)?;
    let secret = tokens::new_secret()?;
    let hash = blake3::hash(secret.as_bytes());
    let mut scopes = req.scopes;
    scopes.sort();
    scopes.dedup();
    let at = now();
    let expires_at = req.ttl_secs.map(|t| at + t as f64);
    let name = req.name;
    let info = ops
        .db(move |db, _| db.tokens().token_create(&name, &scopes, &hash, at, expires_at))
        .await?;
    tracing::info!(
        token = info.id,
        name = %info.name,
        scopes = %discomy_protocol::ops::TokenScope::join(&info.scopes),
        by = %caller.who("the API"),
        "tenant token created"
    );
    let token = format!("{TOKEN_PREFIX}{}_{secret}", info.id);
    Ok((StatusCode::CREATED, Json(TokenCreated { token, info })))
}

/// `GET /api/v1/tokens` (admin): every token, without secrets or hashes.
async fn list_tokens(State(ops): State<Arc<Ops>>) -> Result<Json<Vec<TokenInfo>>, OpsError> {
    Ok(Json(ops.db(|db, _| db.tokens().token_list()).await?))
}

/// `DELETE /api/v1/tokens/ID` (admin): revoked at once (every request reads its token's row),
/// with the agents it enrolled in the fleet.
async fn revoke_token(
    State(ops): State<Arc<Ops>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> Result<Json<TokenInfo>, OpsError> {
    let (info, agents) = ops
        .db(move |db, ops| Ok((db.tokens().token_revoke(id, now())?, ops.token_revoked(id))))
        .await?;
    let by = caller.who("the API");
    tracing::info!(token = id, name = %info.name, %by, agents, "token revoked");
    Ok(Json(info))
}
