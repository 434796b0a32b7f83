//! The agent role: serves wrappers on a Unix socket and forwards their units to workers.
//!
//! For each unit it takes a slot from the [`Pool`], reuses or opens a handshaken connection to
//! that worker, and waits for the answer. Transport failures put the worker in backoff and the
//! unit is retried on another one; when none is left the wrapper is told to compile locally.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use discomy_protocol::asyncio::{client_handshake, recv, send, server_handshake};
use discomy_protocol::{
    AuthConfig, CompileRequest, PeerKind, ProtocolError, RefusalKind, Request, Response,
};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::hosts::HostSpec;
use crate::pool::{Lease, Pool, Release};
use crate::toolchains::seed_local_compilers;
use crate::toolstore::ToolStore;
use crate::upload;

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
        }
    }
}

struct State {
    config: AgentConfig,
    pool: Pool,
    store: ToolStore,
}

/// Binds the agent socket at `path`, replacing a stale one, readable and writable by all local
/// users (mock builds run as another user; the directory's permissions are the gate).
pub fn bind_socket(path: &std::path::Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("an agent is already listening on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Serves wrappers until `shutdown` is cancelled.
///
/// The socket is bound only once the store is seeded, so a connectable socket means a ready
/// agent (readiness checks in `discomy run` and the tests rely on that).
pub async fn run(
    socket_path: PathBuf,
    config: AgentConfig,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let pool = Pool::new(config.hosts.clone(), config.backoff);
    let store = ToolStore::open(&config.store_dir, config.store_bytes, false)
        .map_err(|e| io::Error::other(e.to_string()))?;
    // Wrappers running this host's own compilers then need no upload.
    seed_local_compilers(&store, std::env::var_os("PATH").unwrap_or_default()).await;
    let listener = bind_socket(&socket_path).map_err(|e| {
        io::Error::new(e.kind(), format!("failed to listen on {}: {e}", socket_path.display()))
    })?;
    info!(socket = %socket_path.display(), hosts = config.hosts.len(), "agent listening");
    let state = Arc::new(State { config, pool, store });
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let state = state.clone();
                let shutdown = shutdown.clone();
                tracker.spawn(async move { serve_wrapper(stream, state, shutdown).await });
            }
            Err(err) => {
                warn!(%err, "failed to accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
    for (host, compiled, failed) in state.pool.counters() {
        info!(%host, compiled, failed, "worker totals");
    }
    let _ = std::fs::remove_file(&socket_path);
    info!("agent stopped");
    Ok(())
}

async fn serve_wrapper(stream: UnixStream, state: Arc<State>, shutdown: CancellationToken) {
    let auth = AuthConfig::none();
    let handshake = server_handshake(stream, &auth, PeerKind::Unix);
    let mut conn = match tokio::time::timeout(Duration::from_secs(10), handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(ProtocolError::Closed)) => return,
        Ok(Err(err)) => {
            warn!(%err, "wrapper handshake refused");
            return;
        }
        Err(_) => {
            warn!("wrapper handshake timed out");
            return;
        }
    };
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = recv::<_, Request>(&mut conn) => r,
        };
        let response = match request {
            Err(ProtocolError::Closed) => return,
            Err(err) => {
                warn!(%err, "bad request from wrapper; closing");
                let msg = format!("malformed request: {err}");
                let _ = send(&mut conn, &Response::refused(RefusalKind::BadRequest, msg)).await;
                return;
            }
            Ok(Request::Ping) => Response::Pong,
            Ok(Request::Compile(req)) if !state.store.is_installed(&req.compiler.identity) => {
                Response::refused(
                    RefusalKind::NeedToolchain,
                    format!("this agent does not hold toolchain {} yet", req.compiler.identity),
                )
            }
            Ok(Request::Compile(req)) => tokio::select! {
                _ = shutdown.cancelled() => Response::refused(RefusalKind::Unavailable, "agent is shutting down"),
                r = forward(&state, &req) => r,
            },
            Ok(req @ (Request::CacheGet(_) | Request::CachePut(_))) => {
                let hosts = &state.config.hosts;
                crate::cache_tier::serve_agent(hosts, &state.config.auth, &req)
                    .await
                    .unwrap_or(Response::CacheMiss)
            }
            Ok(other) => match upload::serve(&state.store, &other).await {
                Some(response) => response,
                None => Response::refused(RefusalKind::BadRequest, "unexpected request"),
            },
        };
        if send(&mut conn, &response).await.is_err() {
            return;
        }
    }
}

/// Places one unit, retrying on other workers after transport failures.
async fn forward(state: &State, req: &CompileRequest) -> Response {
    if state.pool.is_empty() {
        return Response::refused(RefusalKind::NoWorker, "no workers configured");
    }
    let request = Request::Compile(req.clone());
    let mut tried = Vec::new();
    let mut last_reason = String::from("no worker available");
    for _ in 0..state.config.max_attempts {
        let Some(lease) = state.pool.acquire(&tried, state.config.queue_timeout).await else {
            break;
        };
        let host = lease.host;
        tried.push(host);
        let exchanged = match exchange(state, lease, &request).await {
            Ok((Response::Refused(r), mut conn)) if r.kind == RefusalKind::NeedToolchain => {
                push_and_retry(state, &mut conn, req, &request).await.map(|resp| (resp, conn))
            }
            other => other,
        };
        match exchanged {
            Ok((response, conn)) => match response {
                Response::Compiled(result) => {
                    state.pool.release(host, Release::Ok(conn));
                    return Response::Compiled(result);
                }
                Response::Refused(refusal) => {
                    state.pool.release(host, Release::Declined(Some(conn)));
                    match refusal.kind {
                        RefusalKind::NoToolchain | RefusalKind::Unavailable => {
                            last_reason = refusal.message;
                        }
                        _ => return Response::Refused(refusal),
                    }
                }
                other => {
                    state.pool.release(host, Release::Failed);
                    last_reason = format!("worker answered out of turn: {other:?}");
                }
            },
            Err(reason) => {
                warn!(source = %req.source_name, %reason, "worker failed; backing off from it");
                state.pool.release(host, Release::Failed);
                last_reason = reason;
            }
        }
    }
    Response::refused(RefusalKind::NoWorker, last_reason)
}

type WorkerConn = discomy_protocol::asyncio::Conn<TcpStream>;

/// One request/response on a worker. A reused connection that turns out closed is replaced by a
/// fresh one once, without blaming the worker.
async fn exchange(
    state: &State,
    lease: Lease,
    request: &Request,
) -> Result<(Response, WorkerConn), String> {
    if let Some(mut conn) = lease.conn {
        match round_trip(state, &mut conn, request).await {
            Ok(response) => return Ok((response, conn)),
            Err(err) => debug!(host = %lease.spec, %err, "idle connection was stale; reconnecting"),
        }
    }
    let mut conn = connect(state, &lease.spec).await?;
    let response = round_trip(state, &mut conn, request)
        .await
        .map_err(|e| format!("{}: {e}", lease.spec.address()))?;
    Ok((response, conn))
}

/// Sends the unit's toolchain to a worker that asked for it, then the unit again.
async fn push_and_retry(
    state: &State,
    conn: &mut WorkerConn,
    req: &CompileRequest,
    request: &Request,
) -> Result<Response, String> {
    let manifest = state
        .store
        .manifest(&req.compiler.identity)
        .ok_or_else(|| format!("toolchain {} is not in the agent store", req.compiler.identity))?;
    let started = std::time::Instant::now();
    upload::push(conn, &state.store, &manifest).await?;
    info!(toolchain = %req.compiler.identity, ms = started.elapsed().as_millis() as u64, "toolchain sent to worker");
    round_trip(state, conn, request).await.map_err(|e| e.to_string())
}

async fn round_trip(
    state: &State,
    conn: &mut WorkerConn,
    request: &Request,
) -> Result<Response, ProtocolError> {
    send(conn, request).await?;
    match tokio::time::timeout(state.config.compile_timeout, recv(conn)).await {
        Ok(result) => result,
        Err(_) => Err(ProtocolError::Timeout),
    }
}

async fn connect(state: &State, spec: &HostSpec) -> Result<WorkerConn, String> {
    let addr = spec.address();
    let attempt = async {
        let stream = TcpStream::connect(&addr).await.map_err(ProtocolError::Io)?;
        let _ = stream.set_nodelay(true);
        client_handshake(stream, &state.config.auth).await
    };
    match tokio::time::timeout(state.config.connect_timeout, attempt).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) => Err(format!("{addr}: {err}")),
        Err(_) => Err(format!("{addr}: connect timed out")),
    }
}
