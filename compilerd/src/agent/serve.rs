//! The agent's wrapper side: its socket, the accept loop with its admission limits, and one
//! wrapper connection's requests (units, reports, verdicts, stats, cache and uploads), each
//! handed to the placement code in [`super`].

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use discomy_protocol::asyncio::{recv, send, server_handshake};
use discomy_protocol::coordinator::unit_key;
use discomy_protocol::plumbing::admission::{Admission, Limits, Peer, Ticket};
use discomy_protocol::{
    AuthConfig, CachedSources, PeerKind, ProtocolError, RefusalKind, Request, Response,
};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::pool::Pool;
use super::{AgentConfig, State, Unit, compile_sources, forward, verify};
use crate::coord::client::CoordClient;
use crate::store::seed::seed_local_compilers_named;
use crate::store::sources::SourceStore;
use crate::store::tools::ToolStore;
use crate::store::upload;

/// Most wrapper connections at once ([`Admission`]: idle ones are closed to make room).
pub const MAX_WRAPPERS: usize = 4096;
/// Most wrapper connections at once from one local user.
pub const MAX_WRAPPERS_PER_USER: usize = 2048;

/// Who may connect to the agent's socket (submit units, read and offer cache entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketAccess {
    /// Members of this group (and root): the socket is `root:GROUP` (owner: the agent's user),
    /// mode 0660.
    Group(u32),
    /// Every local user (mode 0666): for a host where every user may build.
    Everyone,
}

/// The group the agent socket belongs to unless `--socket-group` says otherwise.
pub const DEFAULT_SOCKET_GROUP: &str = "discomy";

impl SocketAccess {
    /// `--socket-group NAME` (`everyone`: mode 0666); without it, the `discomy` group when the
    /// host has one, else every user (the agent logs a warning).
    pub fn from_option(group: Option<&str>) -> Result<SocketAccess, String> {
        match group {
            Some("everyone") => Ok(SocketAccess::Everyone),
            Some(name) => match local_group(name) {
                Some(gid) => Ok(SocketAccess::Group(gid)),
                None => Err(format!("--socket-group {name}: no such group in /etc/group")),
            },
            None => match local_group(DEFAULT_SOCKET_GROUP) {
                Some(gid) => Ok(SocketAccess::Group(gid)),
                None => {
                    tracing::warn!(
                        "no `{DEFAULT_SOCKET_GROUP}` group on this host: every local user may use \
                         the agent socket (create the group, or pass --socket-group)"
                    );
                    Ok(SocketAccess::Everyone)
                }
            },
        }
    }
}

/// The id of a group of `/etc/group`. Read directly rather than through NSS: the socket's group
/// is a local one, and some NSS modules (systemd's) crash in a process like this one.
fn local_group(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// Binds the agent socket at `path`, replacing a stale one, open to the users `access` names
/// (mock builds run as another user: add it to the group).
pub fn bind_socket(path: &std::path::Path, access: SocketAccess) -> io::Result<UnixListener> {
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
    let mode = match access {
        SocketAccess::Group(gid) => {
            std::os::unix::fs::lchown(path, None, Some(gid))?;
            0o660
        }
        SocketAccess::Everyone => 0o666,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
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
    let local_compilers =
        seed_local_compilers_named(&store, std::env::var_os("PATH").unwrap_or_default(), &[]).await;
    let listener = bind_socket(&socket_path, config.socket_access).map_err(|e| {
        io::Error::new(e.kind(), format!("failed to listen on {}: {e}", socket_path.display()))
    })?;
    info!(socket = %socket_path.display(), hosts = config.hosts.len(), "agent listening");
    let sources = SourceStore::open(&config.store_dir.join("sources"), config.store_bytes / 4)
        .map_err(|e| io::Error::other(e.to_string()))?;
    let coord = config.coordinator.clone().map(|addr| {
        CoordClient::spawn(addr, config.host_id.clone(), config.auth.clone(), shutdown.clone())
    });
    let verifier = verify::Verifier::new(config.verify_rate, config.verify_first, &socket_path);
    let state = Arc::new(State {
        verifier,
        config,
        pool,
        store,
        sources,
        local_compilers,
        coord,
        remembered: super::remembered::Remembered::default(),
        cache_conns: Arc::default(),
        stats: std::sync::Mutex::default(),
        payload: discomy_protocol::plumbing::admission::PayloadBudget::new(0),
        started: std::time::Instant::now(),
        metrics: super::metrics::AgentMetrics::default(),
    });
    let tracker = TaskTracker::new();
    if let Some(addr) = state.config.metrics_listen {
        let listener = discomy_protocol::plumbing::metrics::bind(addr).await?;
        let rendered = state.clone();
        let render = Arc::new(move || super::metrics::render(&rendered));
        let serve = discomy_protocol::plumbing::metrics::serve(listener, render, shutdown.clone());
        tracker.spawn(serve);
    }
    let limits = Limits { total: MAX_WRAPPERS, per_peer: MAX_WRAPPERS_PER_USER };
    let admission = Admission::new(limits);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let peer = stream.peer_cred().map_or(Peer::Unknown, |c| Peer::Uid(c.uid()));
                let Some(ticket) = admission.admit(peer) else {
                    warn!(?peer, "too many busy wrapper connections; closing");
                    continue;
                };
                let state = state.clone();
                let shutdown = shutdown.clone();
                tracker.spawn(async move { serve_wrapper(stream, ticket, state, shutdown).await });
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

/// Serves one wrapper connection: idle (closed when room is needed) during its handshake and
/// while it waits for a request, busy from a request's first byte to its answer.
async fn serve_wrapper(
    stream: UnixStream,
    ticket: Ticket,
    state: Arc<State>,
    shutdown: CancellationToken,
) {
    let auth = AuthConfig::none();
    let handshake = server_handshake(stream, &auth, PeerKind::Unix);
    let handshake = tokio::select! {
        _ = ticket.evicted() => return,
        h = tokio::time::timeout(Duration::from_secs(10), handshake) => h,
    };
    let mut conn = match handshake {
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
        if conn.read_buffer().is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticket.evicted() => return,
                r = conn.get_ref().readable() => if r.is_err() { return },
            }
        }
        let _busy = ticket.busy();
        let request = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = recv::<_, Request>(&mut conn) => r,
        };
        // Room for a payload (a unit the agent reads for its size estimate, a blob, a source
        // file, a cache entry) before anything is decompressed, as on a worker.
        let len = request.as_ref().ok().and_then(Request::payload_raw_len);
        let _room = match state.payload.room_for(len).await {
            Ok(room) => room,
            Err(refusal) => {
                let _ = send(&mut conn, &refusal).await;
                return;
            }
        };
        let unit = request.as_ref().is_ok_and(|r| {
            matches!(
                r,
                Request::Compile(_) | Request::CompileSources(_) | Request::CompileSourcesCached(_)
            )
        });
        let lookup = request
            .as_ref()
            .is_ok_and(|r| matches!(r, Request::CacheGet(_) | Request::CompileSourcesCached(_)));
        let began = std::time::Instant::now();
        let response = match request {
            Err(ProtocolError::Closed) => return,
            // A wrapper leaves once its last frame is sent (the farm tier's store is not waited
            // for): its socket may close with our answer unread.
            Err(ProtocolError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => return,
            Err(err) => {
                warn!(%err, "bad request from wrapper; closing");
                let msg = format!("malformed request: {err}");
                let _ = send(&mut conn, &Response::refused(RefusalKind::BadRequest, msg)).await;
                return;
            }
            Ok(Request::Ping) => Response::Pong,
            Ok(Request::Report(report)) => {
                if let Ok(mut stats) = state.stats.lock() {
                    stats.record(&report);
                }
                continue;
            }
            Ok(Request::Stats) => {
                let mut stats = state.stats.lock().map(|s| s.clone()).unwrap_or_default();
                stats.uptime_s = state.started.elapsed().as_secs_f64();
                stats.store = state.store.activity();
                stats.coordinator_joined = state.coord.as_ref().is_some_and(|c| c.joined());
                stats.verification = state.verifier.counts();
                Response::Stats(stats)
            }
            Ok(Request::RememberedFarm) => {
                Response::RememberedFarm(state.remembered.stats(state.coord.as_deref()))
            }
            Ok(Request::LtransStats) => Response::LtransStats(
                state.stats.lock().map(|s| s.ltrans.clone()).unwrap_or_default(),
            ),
            Ok(Request::Verified(verdict)) => {
                if let Some(node) = state.verifier.verdict(&verdict) {
                    state.pool.quarantine(&node);
                    state.remembered.quarantine(&node);
                    if let Some(coord) = &state.coord {
                        let source = discomy_protocol::sources::truncated(&verdict.source, 256);
                        let reason =
                            format!("its object for {source} differs from a local compile");
                        coord.quarantine(node, reason);
                    }
                }
                continue;
            }
            Ok(Request::Compile(req)) if !state.store.is_installed(&req.compiler.identity) => {
                Response::refused(
                    RefusalKind::NeedToolchain,
                    format!("this agent does not hold toolchain {} yet", req.compiler.identity),
                )
            }
            Ok(Request::Compile(req)) => {
                let unit = Unit {
                    toolchain: req.compiler.identity,
                    source: req.source_name.clone(),
                    bytes_in: req.unit.raw_len,
                    work: crate::coord::client::main_file_bytes(&req).unwrap_or(0),
                    key: unit_key(&req.compiler.identity, &req.source_name, &req.args),
                    request: Request::Compile(req),
                    cache_key: None,
                };
                tokio::select! {
                    _ = shutdown.cancelled() => Response::refused(RefusalKind::Unavailable, "agent is shutting down"),
                    r = forward(&state, &unit) => state.verifier.mark(r),
                }
            }
            Ok(Request::CompileSources(req)) => {
                let ltrans = is_ltrans(&req);
                let response = tokio::select! {
                    _ = shutdown.cancelled() => Response::refused(RefusalKind::Unavailable, "agent is shutting down"),
                    r = compile_sources(&state, req, None) => state.verifier.mark(r),
                };
                if ltrans {
                    count_ltrans(&state, &response);
                }
                response
            }
            // The wrapper's key routes the unit; `store_at` is the agent's to decide.
            Ok(Request::CompileSourcesCached(CachedSources { key, unit, .. })) => {
                tokio::select! {
                    _ = shutdown.cancelled() => Response::refused(RefusalKind::Unavailable, "agent is shutting down"),
                    r = compile_sources(&state, unit, Some(key)) => state.verifier.mark(r),
                }
            }
            // Decompressing and writing a source blob is blocking work: off the runtime threads,
            // so one large upload does not stall every other connection of the agent.
            Ok(Request::PutSource(payload)) => {
                let st = state.clone();
                match tokio::task::spawn_blocking(move || st.sources.put(&payload)).await {
                    Ok(Ok(digest)) => Response::Stored(digest),
                    Ok(Err(err)) => Response::refused(RefusalKind::BadRequest, err.to_string()),
                    Err(err) => Response::refused(RefusalKind::Internal, err.to_string()),
                }
            }
            // Only the worker that compiled a unit stores its entry in the farm tier.
            Ok(Request::CachePut(_)) => Response::refused(
                RefusalKind::BadRequest,
                "the farm tier is written by the workers that compile, not through an agent",
            ),
            Ok(req @ Request::CacheGet(_)) => {
                let hosts = &state.config.hosts;
                crate::store::cache_tier::serve_agent(
                    hosts,
                    &state.config.auth,
                    &state.cache_conns,
                    &req,
                )
                .await
                .unwrap_or(Response::CacheMiss)
            }
            Ok(other) => match upload::serve(&state.store, &other).await {
                Some(response) => response,
                None => Response::refused(RefusalKind::BadRequest, "unexpected request"),
            },
        };
        if unit {
            state.metrics.unit_answered(&response, began.elapsed().as_secs_f64());
        }
        if lookup {
            state.metrics.farm_lookup(matches!(response, Response::CacheHit(_)));
        }
        if send(&mut conn, &response).await.is_err() {
            return;
        }
    }
}

/// Whether a source-mode unit is an LTRANS unit (a partition of an LTO link).
fn is_ltrans(req: &discomy_protocol::SourceCompileRequest) -> bool {
    req.args.iter().any(|a| a == "-fltrans")
}

/// Counts an LTRANS unit's answer (one answered with missing files or a missing toolchain is
/// asked again, and counted then): remote when the farm compiled it cleanly, which is when the
/// wrapper uses it.
fn count_ltrans(state: &State, response: &Response) {
    match response {
        Response::MissingBlobs(_) => return,
        Response::Refused(r) if r.kind == RefusalKind::NeedToolchain => return,
        _ => {}
    }
    let remote = matches!(
        response,
        Response::Compiled(r)
            if r.exit_code == 0 && r.stdout.is_empty() && r.stderr.is_empty() && r.output.is_some()
    );
    if let Ok(mut stats) = state.stats.lock() {
        stats.ltrans.record(remote);
    }
}
