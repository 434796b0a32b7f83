//! The worker role: accepts units over TCP and compiles them with an identical compiler.
//!
//! One task per connection; a connection carries any number of requests in turn. A semaphore
//! bounds concurrent compiles to the slot count, another bounds connections. Every failure that
//! is not the compiler's own verdict is answered with a [`Response::Refused`] so the client
//! falls back, and the worker keeps serving.

pub mod argcheck;
pub mod distcc;
pub mod exec;
mod metrics;
pub mod start;
pub mod unit;
pub mod workdir;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use discomy_protocol::asyncio::{recv, send, server_handshake};
use discomy_protocol::fleet::FleetRole;
use discomy_protocol::plumbing::admission::{Admission, Limits, PayloadBudget, Peer, Ticket};
use discomy_protocol::stats::{UnitTime, WorkerStats};
use discomy_protocol::{AuthConfig, ProtocolError, RefusalKind, Request, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::store::sources::SourceStore;
use crate::store::tools::ToolStore;
use crate::store::upload;
use crate::worker::distcc::DistccConfig;
use crate::worker::exec::Runner;

/// Most simultaneous client connections ([`Admission`]: idle ones are closed to make room).
pub const MAX_CONNECTIONS: usize = 256;
/// Most simultaneous connections from one address.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 128;
/// Time allowed for one request frame once its first byte arrived.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed for a handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle connection is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long shutdown waits for running units.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Concurrent compiles.
    pub slots: usize,
    /// Farm token.
    pub auth: AuthConfig,
    /// How compilers are run (sandboxed, or directly on the host).
    pub runner: Runner,
    /// Name reported in results.
    pub node_name: String,
    /// Where unit directories are created (private to this worker: [`workdir`]).
    pub work_dir: PathBuf,
    /// Units compiling now; read by the coordinator reporter (`coord::node`).
    pub running: Arc<std::sync::atomic::AtomicUsize>,
    /// Serve Prometheus metrics at `http://ADDR/metrics`.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// What the worker's listeners share (the native one and the distcc one).
pub(crate) struct State {
    pub(crate) config: WorkerConfig,
    pub(crate) store: ToolStore,
    pub(crate) sources: SourceStore,
    /// This worker's share of the object cache's farm tier.
    pub(crate) farm: crate::store::cache_tier::FarmStore,
    pub(crate) slots: Semaphore,
    /// Memory for decompressed request payloads ([`unit::payload_budget_mib`]).
    pub(crate) payload: PayloadBudget,
    /// One unprivileged uid per slot, so per-user process limits never mix two units.
    uids: std::sync::Mutex<Vec<u32>>,
    /// distcc jobs by result (`discomy stats --worker`).
    pub(crate) distcc_results: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// The most recent units' compile times (`discomy stats --worker`).
    pub(crate) recent_units: std::sync::Mutex<std::collections::VecDeque<UnitTime>>,
    /// Counts for `/metrics`.
    pub(crate) metrics: metrics::WorkerMetrics,
}

/// Size bound of the worker's store of source-mode file contents.
pub const SOURCE_STORE_BYTES: u64 = 2 << 30;

impl State {
    /// Counts a distcc job's result.
    pub(crate) fn count_distcc(&self, result: &str) {
        if let Ok(mut m) = self.distcc_results.lock() {
            *m.entry(result.to_string()).or_insert(0) += 1;
        }
    }

    /// Records a unit's compile time. Bounded in count and, since a client names its source
    /// freely, in the length of each name.
    pub(crate) fn note_unit(&self, source: &str, elapsed: std::time::Duration) {
        use discomy_protocol::sources::{MAX_SOURCE_PATH, truncated};
        let source = truncated(source, MAX_SOURCE_PATH).to_owned();
        self.metrics.compile_seconds.observe(elapsed.as_secs_f64());
        let mut units = self.recent_units.lock().unwrap_or_else(|e| e.into_inner());
        if units.len() >= WorkerStats::RECENT_UNITS {
            units.pop_front();
        }
        units.push_back(UnitTime { source, ms: elapsed.as_secs_f64() * 1e3 });
    }

    /// Takes a slot's uid for one unit.
    pub(crate) fn uid(&self) -> UidLease<'_> {
        UidLease(self, self.uids.lock().unwrap_or_else(|e| e.into_inner()).pop())
    }
}

/// First uid handed to sandboxed units (one per slot) when the worker runs as root.
pub const SANDBOX_UID_BASE: u32 = 64000;

/// Takes a slot's uid for the duration of one unit.
pub(crate) struct UidLease<'a>(&'a State, pub(crate) Option<u32>);

impl Drop for UidLease<'_> {
    fn drop(&mut self) {
        if let Some(uid) = self.1 {
            self.0.uids.lock().unwrap_or_else(|e| e.into_inner()).push(uid);
        }
    }
}

/// Serves until `shutdown` is cancelled, then lets running units finish (up to a grace period);
/// with `distcc`, also serves real distcc clients there (same slots, sandbox and allow-list).
pub async fn run(
    listener: TcpListener,
    distcc: Option<(TcpListener, DistccConfig)>,
    config: WorkerConfig,
    store: ToolStore,
    shutdown: CancellationToken,
) -> io::Result<()> {
    info!(addr = %listener.local_addr()?, slots = config.slots, toolchains = store.installed().len(), "worker listening");
    let slots = config.slots.max(1);
    let uids = (0..slots as u32).map(|i| SANDBOX_UID_BASE + i).collect();
    let sources_dir = store.dir().join("sources");
    let sources = SourceStore::open(&sources_dir, SOURCE_STORE_BYTES)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let farm = crate::store::cache_tier::FarmStore::open(store.dir());
    let state = Arc::new(State {
        slots: Semaphore::new(slots),
        payload: PayloadBudget::new(unit::payload_budget_mib(slots)),
        config,
        store,
        sources,
        farm,
        uids: std::sync::Mutex::new(uids),
        distcc_results: std::sync::Mutex::default(),
        recent_units: std::sync::Mutex::default(),
        metrics: metrics::WorkerMetrics::default(),
    });
    let tracker = TaskTracker::new();
    if let Some(addr) = state.config.metrics_listen {
        let listener = discomy_protocol::plumbing::metrics::bind(addr).await?;
        let rendered = state.clone();
        let render = Arc::new(move || metrics::render(&rendered));
        let serve = discomy_protocol::plumbing::metrics::serve(listener, render, shutdown.clone());
        tracker.spawn(serve);
    }
    if let Some((listener, distcc)) = distcc {
        let (state, shutdown, t) = (state.clone(), shutdown.clone(), tracker.clone());
        tracker.spawn(distcc::run(listener, distcc, state, shutdown, t));
    }
    accept_each(&listener, "native", &shutdown, &tracker, |stream, peer, ticket| {
        serve_connection(stream, peer, ticket, state.clone(), shutdown.clone())
    })
    .await;
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        warn!("shutdown grace period over; cancelling remaining units");
    }
    info!("worker stopped");
    Ok(())
}

/// Accepts connections on `listener` until `shutdown`, each served by `serve` on `tracker` with
/// its admission [`Ticket`]: at most [`MAX_CONNECTIONS`] at once and
/// [`MAX_CONNECTIONS_PER_ADDRESS`] per address, the longest-idle one closed to make room; a
/// connection is refused only when all in its way are busy.
pub(crate) async fn accept_each<F, Fut>(
    listener: &TcpListener,
    what: &str,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, Ticket) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let limits = Limits { total: MAX_CONNECTIONS, per_peer: MAX_CONNECTIONS_PER_ADDRESS };
    let admission = Admission::new(limits);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                warn!(%err, listener = what, "failed to accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(ticket) = admission.admit(Peer::Ip(peer.ip())) else {
            warn!(%peer, listener = what, "too many busy connections; closing");
            continue;
        };
        tracker.spawn(serve(stream, peer, ticket));
    }
}

/// Serves one connection. It is idle (closed when room is needed) during its handshake and
/// whenever it waits for a request; from the first byte of a request to the answer it is busy.
/// The roles whose certificates may send a worker units and lookups.
const UNIT_ROLES: [FleetRole; 3] = [FleetRole::Agent, FleetRole::Coordinator, FleetRole::Admin];

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    state: Arc<State>,
    shutdown: CancellationToken,
) {
    let transport = crate::fleet::transport();
    let kind = transport.peer_kind(peer);
    let handshake = async {
        let stream = transport.accept(stream).await.map_err(ProtocolError::Io)?;
        // Under the fleet's TLS agents (units, cache lookups), the coordinator (its
        // connect-back ping) and the operator (`discomy stats --worker`) are served, and other
        // workers hand over farm-tier entries; builders ask nothing of a worker.
        let cert = stream.peer_cert();
        if let Some(cert) = &cert
            && !cert.has(FleetRole::Worker)
            && !UNIT_ROLES.iter().any(|r| cert.has(*r))
        {
            return Err(ProtocolError::Auth(format!(
                "{} holds no agent or worker certificate; a worker serves those only",
                cert.name
            )));
        }
        Ok((server_handshake(stream, &state.config.auth, kind).await?, cert))
    };
    let handshake = tokio::select! {
        _ = ticket.evicted() => return,
        h = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => h,
    };
    let (mut conn, cert) = match handshake {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(ProtocolError::Closed)) => return,
        Ok(Err(err)) => {
            warn!(%peer, %err, "handshake refused");
            return;
        }
        Err(_) => {
            warn!(%peer, "handshake timed out");
            return;
        }
    };
    // What the peer's certificate lets it ask: units and lookups (an agent, the coordinator, the
    // operator), farm-tier stores (a worker). Without the fleet's TLS every token holder is
    // every role (a lab farm).
    let (serves_units, from_worker) = cert
        .as_ref()
        .map_or((true, true), |c| (UNIT_ROLES.iter().any(|r| c.has(*r)), c.has(FleetRole::Worker)));
    // A revoked agent is dropped at its next request, also on a connection opened before.
    let peer_serial = cert.map(|c| c.serial);
    loop {
        if conn.read_buffer().is_empty() {
            let woke = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticket.evicted() => return,
                r = tokio::time::timeout(IDLE_TIMEOUT, conn.get_ref().tcp().readable()) => r,
            };
            if !matches!(woke, Ok(Ok(()))) {
                return;
            }
        }
        let _busy = ticket.busy();
        let request = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = tokio::time::timeout(FRAME_TIMEOUT, recv::<_, Request>(&mut conn)) => r,
        };
        let request = match request {
            Err(_) | Ok(Err(ProtocolError::Closed)) => return,
            Ok(Err(err)) => {
                warn!(%peer, %err, "bad request; closing connection");
                let msg = format!("malformed request: {err}");
                let _ = send(&mut conn, &Response::refused(RefusalKind::BadRequest, msg)).await;
                return;
            }
            Ok(Ok(request)) => request,
        };
        if peer_serial.as_deref().is_some_and(crate::fleet::is_revoked) {
            warn!(%peer, "the peer's certificate was revoked; closing its connection");
            let msg = "this agent's certificate was revoked".to_string();
            let _ = send(&mut conn, &Response::refused(RefusalKind::BadRequest, msg)).await;
            return;
        }
        if !serves_units && !matches!(request, Request::CachePut(_) | Request::Ping) {
            let msg = "a worker's certificate only hands farm-tier entries to a worker";
            let _ = send(&mut conn, &Response::refused(RefusalKind::BadRequest, msg)).await;
            continue;
        }
        // Room for the payload before anything is decompressed; a unit takes its room after its
        // slot ([`unit::compile`]), so a unit waiting for a slot holds none.
        let len = request.payload_raw_len().filter(|_| !matches!(request, Request::Compile(_)));
        let _room = match state.payload.room_for(len).await {
            Ok(room) => room,
            Err(refusal) => {
                let _ = send(&mut conn, &refusal).await;
                continue;
            }
        };
        let response = match request {
            Request::Ping => Response::Pong,
            Request::Stats => Response::WorkerStats(WorkerStats {
                store: state.store.activity(),
                distcc: state.distcc_results.lock().map(|m| m.clone()).unwrap_or_default(),
                recent_units: state
                    .recent_units
                    .lock()
                    .map(|u| u.iter().cloned().collect())
                    .unwrap_or_default(),
            }),
            Request::Compile(req) => unit::compile(req, &state, &shutdown).await,
            Request::CompileSources(req) => unit::compile_sources(req, &state, &shutdown).await,
            Request::CompileSourcesCached(cached) => {
                unit::compile_cached(cached, &state, &shutdown).await
            }
            Request::PutSource(payload) => {
                off_runtime(&state, move |st| st.sources.put(&payload).map_err(|e| e.to_string()))
                    .await
            }
            req @ (Request::CacheGet(_) | Request::CachePut(_)) => {
                state.farm.serve(&req, from_worker).await.unwrap_or(Response::CacheMiss)
            }
            Request::PutBlob(_) | Request::InstallToolchain(_)
                if !state.config.runner.accepts_uploads() =>
            {
                debug!(%peer, "upload refused: no sandbox");
                Response::refused(
                    RefusalKind::NoToolchain,
                    "this worker runs without a sandbox (--insecure-no-sandbox): it runs only its \
                     host's own compilers and accepts no uploaded toolchains",
                )
            }
            Request::PutBlob(payload) => {
                off_runtime(&state, move |st| {
                    st.store.put_blob(&payload).map_err(|e| e.to_string())
                })
                .await
            }
            other => upload::serve(&state.store, &other).await.unwrap_or_else(|| {
                Response::refused(RefusalKind::BadRequest, "unexpected request")
            }),
        };
        if let Err(err) = send(&mut conn, &response).await {
            debug!(%peer, %err, "failed to answer");
            return;
        }
    }
}

/// Stores a blob a peer sent (a toolchain file, a source-mode file), decompressing and writing
/// it off the runtime's threads (its room in the payload budget is already taken).
async fn off_runtime<F>(state: &Arc<State>, store: F) -> Response
where
    F: FnOnce(&State) -> Result<discomy_protocol::Digest, String> + Send + 'static,
{
    let st = state.clone();
    match tokio::task::spawn_blocking(move || store(&st)).await {
        Ok(Ok(digest)) => Response::Stored(digest),
        Ok(Err(why)) => Response::refused(RefusalKind::BadRequest, why),
        Err(err) => Response::refused(RefusalKind::Internal, err.to_string()),
    }
}
