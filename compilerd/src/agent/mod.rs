//! The agent role: serves wrappers on a Unix socket and forwards their units to workers.
//!
//! For each unit it asks the coordinator where it runs ([`placed`]), or, while no coordinator
//! answers, takes a slot among the workers remembered from it ([`remembered`]), or from the
//! host list's [`Pool`]; it reuses or opens a handshaken connection to that worker, and waits
//! for the answer. Transport failures put the worker in backoff and the unit is retried on
//! another one; when none is left the wrapper is told to compile locally.

pub mod pool;
pub mod remembered;
pub mod start;
pub mod verify;

mod metrics;
mod serve;
pub use serve::{
    DEFAULT_SOCKET_GROUP, MAX_WRAPPERS, MAX_WRAPPERS_PER_USER, SocketAccess, bind_socket, run,
};

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use discomy_protocol::asyncio::{client_handshake, recv_sized, send};
use discomy_protocol::coordinator::unit_key;
use discomy_protocol::fleet::FleetRole;
use discomy_protocol::stats::AgentStats;
use discomy_protocol::tls::FarmStream;
use discomy_protocol::{
    AuthConfig, CachedSources, CompileRequest, Digest, ProtocolError, RefusalKind, Request,
    Response, SourceCompileRequest,
};
use tracing::{debug, info, warn};

use crate::agent::pool::{Lease, Pool, Release};
use crate::coord::client::{CoordClient, Unplaced};
use crate::distcc::client as distcc_client;
use crate::hosts::{HostKind, HostSpec};
use crate::store::cache_tier;
use crate::store::sources::SourceStore;
use crate::store::tools::ToolStore;
use crate::store::upload;
use placed::forward_placed;

mod placed;

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Workers to use.
    pub hosts: Vec<HostSpec>,
    /// Farm token presented to workers.
    pub auth: AuthConfig,
    /// Connect plus handshake limit per worker.
    pub connect_timeout: Duration,
    /// Limit for one unit's round trip on a worker.
    pub compile_timeout: Duration,
    /// How long a failed worker is left alone.
    pub backoff: Duration,
    /// How long a unit may wait for a free slot before it is compiled locally.
    pub queue_timeout: Duration,
    /// Workers tried per unit before giving up.
    pub max_attempts: usize,
    /// Where toolchains uploaded by wrappers are kept.
    pub store_dir: PathBuf,
    /// Size bound of that store.
    pub store_bytes: u64,
    /// Coordinator to ask for placements (the host list is then the fallback).
    pub coordinator: Option<crate::coord::discover::CoordinatorAddr>,
    /// This host's id, as a submitter.
    pub host_id: String,
    /// Fraction of remote units also compiled locally and compared, after each node's first
    /// ones ([`verify`]).
    pub verify_rate: f64,
    /// Matching verdicts a node needs before it is only sampled (0: no probation).
    pub verify_first: u32,
    /// Who may use the socket.
    pub socket_access: SocketAccess,
    /// Serve Prometheus metrics at `http://ADDR/metrics`.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl AgentConfig {
    /// Defaults for `hosts`: distcc's 4 s connect limit and 60 s backoff.
    pub fn new(hosts: Vec<HostSpec>) -> AgentConfig {
        AgentConfig {
            hosts,
            auth: AuthConfig::none(),
            connect_timeout: Duration::from_secs(4),
            compile_timeout: Duration::from_secs(600),
            backoff: Duration::from_secs(60),
            queue_timeout: Duration::from_secs(600),
            max_attempts: 3,
            store_dir: discomy_wrapper::identity::cache_dir().join("agent-store"),
            store_bytes: 4 << 30,
            coordinator: None,
            host_id: crate::coord::discover::host_id(),
            verify_rate: 0.01,
            verify_first: verify::FIRST_UNITS,
            socket_access: SocketAccess::Everyone,
            metrics_listen: None,
        }
    }
}

struct State {
    config: AgentConfig,
    pool: Pool,
    store: ToolStore,
    sources: SourceStore,
    /// This host's compilers by name: a unit goes to a distccd host only when its compiler is one
    /// of these (distccd runs its own compiler of that name).
    local_compilers: BTreeMap<String, Digest>,
    coord: Option<Arc<CoordClient>>,
    /// The pool of workers remembered from the coordinator, and what was placed there.
    remembered: remembered::Remembered,
    /// Idle connections to the workers holding cache keys.
    cache_conns: Arc<crate::store::cache_tier::IdleConns>,
    /// What wrappers reported (`discomy stats`).
    stats: std::sync::Mutex<AgentStats>,
    /// Memory for decompressed payloads from wrappers (the smallest budget: one of the largest).
    payload: discomy_protocol::plumbing::admission::PayloadBudget,
    /// Verification of remote results.
    verifier: verify::Verifier,
    started: std::time::Instant,
    /// Counts for `/metrics`.
    metrics: metrics::AgentMetrics,
}

impl State {
    /// Counts a host put in backoff (`discomy stats`' `backoffs`).
    fn count_backoff(&self) {
        if let Ok(mut stats) = self.stats.lock() {
            stats.backoffs += 1;
        }
    }
}

/// One unit on its way to a worker.
struct Unit {
    /// Its toolchain, pushed to a worker that lacks it.
    toolchain: Digest,
    /// Its source's name, for logs.
    source: String,
    /// The request sent to workers.
    request: Request,
    /// Bytes the worker receives (for the coordinator's placement).
    bytes_in: u64,
    /// Size of the unit's own source, the coordinator's measure of its work.
    work: u64,
    /// The unit's key in the coordinator's cost history.
    key: u64,
    /// The unit's object-cache key, when the wrapper asks the farm tier with the unit
    /// ([`Request::CompileSourcesCached`]).
    cache_key: Option<Digest>,
}

/// A source-mode unit: its files must be here before a worker can ask for them.
async fn compile_sources(
    state: &State,
    req: SourceCompileRequest,
    cache_key: Option<Digest>,
) -> Response {
    if !state.store.is_installed(&req.compiler.identity) {
        return Response::refused(
            RefusalKind::NeedToolchain,
            format!("this agent does not hold toolchain {} yet", req.compiler.identity),
        );
    }
    let missing = state.sources.missing(&req.files);
    if !missing.is_empty() {
        return Response::MissingBlobs(missing);
    }
    let unit = Unit {
        toolchain: req.compiler.identity,
        source: req.source_name.clone(),
        bytes_in: req.files.iter().map(|f| f.size).sum(),
        // The unit's own source comes first in its file list.
        work: req.files.first().map_or(0, |f| f.size),
        key: unit_key(&req.compiler.identity, &req.source_name, &req.args),
        request: Request::CompileSources(req),
        cache_key,
    };
    forward(state, &unit).await
}

/// The farm tier's entry for `key`, asked of the worker that owns it.
async fn farm_lookup(state: &State, key: Digest) -> Option<Response> {
    let request = Request::CacheGet(key);
    let hosts = &state.config.hosts;
    match cache_tier::serve_agent(hosts, &state.config.auth, &state.cache_conns, &request).await {
        Some(hit @ Response::CacheHit(_)) => Some(hit),
        _ => None,
    }
}

/// What to send to the worker of `spec` for `unit`: asks the farm tier's owner of the unit's key
/// first (once per unit) unless that worker is the owner, which looks the key up itself; then
/// [`keyed_request`]. `Err` carries the farm tier's entry.
async fn request_for<'u>(
    state: &State,
    unit: &'u Unit,
    spec: &HostSpec,
    farm_asked: &mut bool,
) -> Result<Cow<'u, Request>, Response> {
    let (owner, address) = (key_owner(state, unit), spec.address());
    if let Some(key) = unit.cache_key
        && owner.as_ref().is_some_and(|o| *o != address)
        && !std::mem::replace(farm_asked, true)
        && let Some(hit) = farm_lookup(state, key).await
    {
        return Err(hit);
    }
    Ok(keyed_request(unit, owner, &address))
}

/// The worker owning `unit`'s farm-tier key (`host:port`), when it has one.
fn key_owner(state: &State, unit: &Unit) -> Option<String> {
    unit.cache_key
        .and_then(|key| cache_tier::owner(&state.config.hosts, &key).map(HostSpec::address))
}

/// The request for `unit` on the worker at `address`: a unit with a farm-tier key owned by a
/// worker (`owner`, [`key_owner`]) goes with the key, and with that owner when it is another
/// worker, so the compiling worker stores the entry it makes there (workers alone write the
/// farm tier). Only the keyed form is a new request: the unit's own is lent, not copied, on
/// every attempt.
fn keyed_request<'u>(unit: &'u Unit, owner: Option<String>, address: &str) -> Cow<'u, Request> {
    let (Some(key), Some(owner), Request::CompileSources(req)) =
        (unit.cache_key, owner, &unit.request)
    else {
        return Cow::Borrowed(&unit.request);
    };
    let store_at = (owner != address).then_some(owner);
    Cow::Owned(Request::CompileSourcesCached(CachedSources { key, unit: req.clone(), store_at }))
}

/// Places one unit, retrying on other workers after transport failures: where the coordinator
/// places it; while no coordinator answers, on the workers remembered from it
/// ([`remembered`]); then on the host list.
async fn forward(state: &State, unit: &Unit) -> Response {
    let mut farm_asked = false;
    if let Some(coord) = &state.coord {
        // Placed by the coordinator: the agent asks the farm tier first.
        if let Some(key) = unit.cache_key {
            farm_asked = true;
            if let Some(hit) = farm_lookup(state, key).await {
                return hit;
            }
        }
        match forward_placed(state, coord, unit).await {
            Ok(response) => return response,
            Err(Unplaced::Away) => {
                if let Some(response) = remembered::forward(state, coord, unit).await {
                    return response;
                }
            }
            Err(Unplaced::Late) => {}
        }
    }
    if state.pool.is_empty() {
        return Response::refused(RefusalKind::NoWorker, "no workers configured");
    }
    // distccd hosts take preprocessed units only (source mode needs a discomy worker).
    let compile_req = match &unit.request {
        Request::Compile(req) => Some(req),
        _ => None,
    };
    let mut tried = Vec::new();
    if !compile_req.is_some_and(|req| distcc_eligible(state, req)) {
        tried.extend(
            state
                .config
                .hosts
                .iter()
                .enumerate()
                .filter(|(_, h)| h.kind != HostKind::Native)
                .map(|(i, _)| i),
        );
    }
    let ran = run_on_pool(state, &state.pool, unit, tried, &mut farm_asked).await;
    let last_reason = match ran.outcome {
        Ok(response) => return response,
        Err(reason) => reason,
    };
    // No worker took the unit: the farm tier may still hold it.
    if let Some(key) = unit.cache_key.filter(|_| !farm_asked)
        && let Some(hit) = farm_lookup(state, key).await
    {
        return hit;
    }
    Response::refused(RefusalKind::NoWorker, last_reason)
}

/// What [`run_on_pool`] came to.
struct Ran {
    /// A worker's answer, or why none took the unit.
    outcome: Result<Response, String>,
    /// Slots taken on the way (0: no host was usable).
    leases: usize,
}

/// Runs a unit on the hosts of `pool` (not those in `tried`), up to `max_attempts` of them:
/// transport failures and internal refusals back a host off and move the unit on.
async fn run_on_pool(
    state: &State,
    pool: &Pool,
    unit: &Unit,
    mut tried: Vec<usize>,
    farm_asked: &mut bool,
) -> Ran {
    let compile_req = match &unit.request {
        Request::Compile(req) => Some(req),
        _ => None,
    };
    let mut last_reason = String::from("no worker available");
    let mut leases = 0;
    for _ in 0..state.config.max_attempts {
        let Some(lease) = pool.acquire(&tried, state.config.queue_timeout).await else {
            break;
        };
        leases += 1;
        let answer = move |response| Ran { outcome: Ok(response), leases };
        let host = lease.host;
        tried.push(host);
        if let (HostKind::Distcc { lzo }, Some(req)) = (lease.spec.kind, compile_req) {
            let cfg = &state.config;
            match distcc_client::compile(
                &lease.spec,
                lzo,
                req,
                cfg.connect_timeout,
                cfg.compile_timeout,
            )
            .await
            {
                Ok(mut response) => {
                    pool.release(host, Release::Finished);
                    verify::stamp_node(&mut response, &lease.spec.address());
                    return answer(response);
                }
                Err(reason) => {
                    warn!(source = %unit.source, %reason, "distccd failed; backing off from it");
                    pool.release(host, Release::Failed);
                    state.count_backoff();
                    last_reason = reason.to_string();
                }
            }
            continue;
        }
        let request = match request_for(state, unit, &lease.spec, farm_asked).await {
            Ok(request) => request,
            Err(hit) => {
                pool.release(host, Release::Declined(lease.conn));
                return answer(hit);
            }
        };
        let address = lease.spec.address();
        let exchanged = match exchange(state, lease, &request).await {
            Ok((answer, mut conn)) => supply(state, &mut conn, unit, &request, answer)
                .await
                .map(|answer| (answer.response, conn)),
            Err(e) => Err(e),
        };
        match exchanged {
            Ok((mut response, conn)) => match response {
                Response::Compiled(_) | Response::CompiledSources(_) | Response::CacheHit(_) => {
                    pool.release(host, Release::Ok(conn));
                    verify::stamp_node(&mut response, &address);
                    return answer(response);
                }
                // A worker failing inside (a full disk, a broken sandbox) would refuse every
                // unit at once and look idle: it is backed off and the unit moves on.
                Response::Refused(refusal) if refusal.kind == RefusalKind::Internal => {
                    warn!(source = %unit.source, %address, reason = %refusal.message, "worker failed internally; backing off from it");
                    pool.release(host, Release::Failed);
                    state.count_backoff();
                    last_reason = refusal.message;
                }
                Response::Refused(refusal) => {
                    pool.release(host, Release::Declined(Some(conn)));
                    match refusal.kind {
                        RefusalKind::NoToolchain | RefusalKind::Unavailable => {
                            last_reason = refusal.message;
                        }
                        _ => return answer(Response::Refused(refusal)),
                    }
                }
                other => {
                    pool.release(host, Release::Failed);
                    last_reason = format!("worker answered out of turn: {other:?}");
                }
            },
            Err(reason) => {
                warn!(source = %unit.source, %reason, "worker failed; backing off from it");
                pool.release(host, Release::Failed);
                state.count_backoff();
                last_reason = reason.to_string();
            }
        }
    }
    Ran { outcome: Err(last_reason), leases }
}

/// Whether a unit may go to a distccd host, which runs its own compiler of the same name and
/// cannot check identity: only when the client's compiler is this host's compiler of that name,
/// and no `SOURCE_DATE_EPOCH` must travel with it (distcc has no way to send it).
fn distcc_eligible(state: &State, req: &CompileRequest) -> bool {
    let name = req.compiler.name.rsplit('/').next().unwrap_or(&req.compiler.name);
    req.source_date_epoch.is_none()
        && state.local_compilers.get(name) == Some(&req.compiler.identity)
}

type WorkerConn = discomy_protocol::asyncio::Conn<FarmStream>;

/// Why a unit's exchange with a worker failed: the worker is backed off and the unit moves on.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Connecting, the handshake or the exchange failed.
    #[error("{addr}: {source}")]
    Connection {
        /// The worker.
        addr: String,
        /// The error.
        source: ProtocolError,
    },
    /// Connecting took too long.
    #[error("{addr}: connect timed out")]
    ConnectTimeout {
        /// The worker.
        addr: String,
    },
    /// Sending the worker what it lacked failed.
    #[error("{0}")]
    Upload(#[from] crate::store::upload::UploadError),
    /// The worker asked for a toolchain this agent no longer holds.
    #[error("toolchain {0} is not in the agent store")]
    MissingToolchain(Digest),
    /// The exchange on an established connection failed.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The coordinator placed the unit on something that is not one worker.
    #[error("placement without a usable worker: {0}")]
    Placement(String),
}

/// One request/response on a worker. A reused connection that turns out closed is replaced by a
/// fresh one once, without blaming the worker.
async fn exchange(
    state: &State,
    lease: Lease,
    request: &Request,
) -> Result<(Answer, WorkerConn), TransportError> {
    if let Some(mut conn) = lease.conn {
        match round_trip(state, &mut conn, request).await {
            Ok(answer) => return Ok((answer, conn)),
            Err(err) => debug!(host = %lease.spec, %err, "idle connection was stale; reconnecting"),
        }
    }
    let mut conn = connect(state, &lease.spec).await?;
    let answer = round_trip(state, &mut conn, request)
        .await
        .map_err(|source| TransportError::Connection { addr: lease.spec.address(), source })?;
    Ok((answer, conn))
}

/// Gives a worker what it asked for before it can compile the unit (its toolchain, source
/// files it lacks), asking again after each delivery; returns the worker's final answer.
async fn supply(
    state: &State,
    conn: &mut WorkerConn,
    unit: &Unit,
    request: &Request,
    mut answer: Answer,
) -> Result<Answer, TransportError> {
    for _ in 0..3 {
        match &answer.response {
            Response::Refused(r) if r.kind == RefusalKind::NeedToolchain => {
                let manifest = state
                    .store
                    .manifest(&unit.toolchain)
                    .ok_or(TransportError::MissingToolchain(unit.toolchain))?;
                let started = std::time::Instant::now();
                upload::push(conn, &state.store, &manifest).await?;
                info!(toolchain = %unit.toolchain, ms = started.elapsed().as_millis() as u64, "toolchain sent to worker");
            }
            Response::MissingBlobs(blobs) if matches!(unit.request, Request::CompileSources(_)) => {
                upload::push_sources(conn, &state.sources, blobs).await?;
            }
            _ => return Ok(answer),
        }
        answer = round_trip(state, conn, request).await?;
    }
    Ok(answer)
}

/// A worker's answer, and how long it took as this agent measured it: from the request handed
/// to the socket to the answer read, so the worker's time on the unit and the answer's transfer.
/// The coordinator learns node speeds from this, never from what a node says of itself (its
/// `compile_ms`), which a donor could make up to draw work.
pub(crate) struct Answer {
    pub(crate) response: Response,
    pub(crate) took: std::time::Duration,
}

async fn round_trip(
    state: &State,
    conn: &mut WorkerConn,
    request: &Request,
) -> Result<Answer, ProtocolError> {
    let sent = send(conn, request).await?;
    let asked = std::time::Instant::now();
    match tokio::time::timeout(state.config.compile_timeout, recv_sized(conn)).await {
        Ok(Ok((response, received))) => {
            state.metrics.exchanged(sent, received);
            Ok(Answer { response, took: asked.elapsed() })
        }
        Ok(Err(err)) => Err(err),
        Err(_) => Err(ProtocolError::Timeout),
    }
}

async fn connect(state: &State, spec: &HostSpec) -> Result<WorkerConn, TransportError> {
    let addr = spec.address();
    let attempt = async {
        let stream =
            crate::fleet::connect(&addr, FleetRole::Worker).await.map_err(ProtocolError::Io)?;
        client_handshake(stream, &state.config.auth).await
    };
    match tokio::time::timeout(state.config.connect_timeout, attempt).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(TransportError::Connection { addr, source }),
        Err(_) => Err(TransportError::ConnectTimeout { addr }),
    }
}
