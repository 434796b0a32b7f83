//! The coordinator daemon: accepts nodes, agents and status queries over TCP, keeps nodes'
//! liveness (a node silent for `node_timeout` or whose connection drops is out of the farm),
//! and answers placements from the policy.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use discomy_protocol::asyncio::{
    Conn, client_handshake, recv, recv_ready, send, send_all, server_handshake,
};
use discomy_protocol::coordinator::{CoordRequest, CoordResponse, NodeLogin};
use discomy_protocol::fleet::FleetRole;
use discomy_protocol::plumbing::admission::{Admission, Limits, Peer, Ticket};
use discomy_protocol::tls::{FarmStream, Transport};
use discomy_protocol::{AuthConfig, ProtocolError, Request, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::core::{AgentTx, Core};
use crate::policy::{Clock, JobSpec, JobStats, LoadReport, NodeSpec, PolicyConfig, Scheduler};

/// Daemon settings.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The farm's name (several farms on one network stay apart by it).
    pub farm: String,
    /// Farm token: nodes, agents and status clients must prove it.
    pub auth: AuthConfig,
    /// A node that has not reported for this long is out of the farm.
    pub node_timeout: Duration,
    /// Limit for connecting back to a node's advertised address.
    pub verify_timeout: Duration,
    /// Where quarantined worker addresses are kept across restarts (none: in memory only).
    pub quarantine_file: Option<std::path::PathBuf>,
    /// The working fleet (farm CA, certificates, mutual TLS on the listener); none: a
    /// plain-token lab farm.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

impl CoordinatorConfig {
    /// Defaults for a farm: nodes report every second and are out after 2.5 s of silence.
    pub fn new(farm: impl Into<String>, auth: AuthConfig) -> CoordinatorConfig {
        CoordinatorConfig {
            farm: farm.into(),
            auth,
            node_timeout: Duration::from_millis(2500),
            verify_timeout: Duration::from_secs(3),
            quarantine_file: None,
            fleet: None,
        }
    }

    /// How the listener and the connect-back checks carry their links.
    pub fn transport(&self) -> Transport {
        self.fleet.as_ref().map(|f| f.transport()).unwrap_or_default()
    }
}

struct Shared {
    config: CoordinatorConfig,
    core: Mutex<Core>,
    /// Node id → its connection's kill switch (liveness and duplicate logins).
    kick: Mutex<HashMap<u64, CancellationToken>>,
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Most connections at once ([`Admission`]: ones that have not logged in yet are closed to
/// make room).
pub const MAX_CONNECTIONS: usize = 8192;
/// Longest worker address a quarantine may name (`[IPv6%zone]:port` fits with room).
pub const MAX_ADDRESS_LEN: usize = 256;

/// Most connections at once from one address (one host runs a worker and an agent, plus
/// `discomy status` queries).
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 64;

/// The quarantined addresses kept in `file` (a JSON list), bounded; none when it is missing or
/// unreadable.
fn load_quarantine(file: &std::path::Path) -> Vec<String> {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(file) else { return Vec::new() };
    let mut text = String::new();
    if f.take(1 << 20).read_to_string(&mut text).is_err() {
        return Vec::new();
    }
    let list: Vec<String> = serde_json::from_str(&text).unwrap_or_else(|err| {
        warn!(%err, file = %file.display(), "the quarantine file is not a JSON list; ignored");
        Vec::new()
    });
    list.into_iter()
        .filter(|a| !a.is_empty() && a.len() <= MAX_ADDRESS_LEN)
        .take(crate::core::MAX_QUARANTINED)
        .collect()
}

/// Writes the quarantined addresses to `file`, atomically and durably.
fn save_quarantine(file: &std::path::Path, list: &[String]) -> io::Result<()> {
    let text = serde_json::to_vec_pretty(list).map_err(io::Error::other)?;
    discomy_protocol::plumbing::write_atomically(file, &text)
}

/// The farm's state, shared by the daemon ([`serve_farm`]) and what watches it in the same
/// process (the web UI, `/metrics`, the icemon listener).
#[derive(Clone)]
pub struct FarmHandle(Arc<Shared>);

impl FarmHandle {
    /// An empty farm (quarantined addresses loaded from the configuration's file).
    pub fn new(config: CoordinatorConfig) -> FarmHandle {
        let mut core = Core::new(config.farm.clone(), Scheduler::new(PolicyConfig::default()));
        if let Some(file) = &config.quarantine_file {
            let kept = load_quarantine(file);
            if !kept.is_empty() {
                info!(count = kept.len(), file = %file.display(), "quarantined workers stay out");
            }
            for address in kept {
                core.quarantine(&address);
            }
        }
        let kick = Mutex::new(HashMap::new());
        FarmHandle(Arc::new(Shared { config, core: Mutex::new(core), kick }))
    }

    /// The farm as `discomy status` shows it.
    pub fn status(&self) -> discomy_protocol::coordinator::FarmStatus {
        self.0.core().status()
    }

    /// The coordinator's counts since it started.
    pub fn counters(&self) -> crate::core::FarmCounters {
        self.0.core().counters.clone()
    }

    /// Live events from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::core::FarmEvent> {
        self.0.core().subscribe()
    }

    /// The working fleet, when the coordinator runs with one (`--fleet-dir`).
    pub fn fleet(&self) -> Option<&Arc<crate::fleet::Fleet>> {
        self.0.config.fleet.as_ref()
    }
}

/// Serves until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    config: CoordinatorConfig,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_farm(listener, FarmHandle::new(config), shutdown).await
}

/// Serves `farm` on `listener` until `shutdown` is cancelled.
pub async fn serve_farm(
    listener: TcpListener,
    farm: FarmHandle,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let shared = farm.0;
    info!(addr = %listener.local_addr()?, farm = %shared.config.farm, "coordinator listening");
    let tracker = TaskTracker::new();
    tracker.spawn(reap(shared.clone(), shutdown.clone()));
    let limits = Limits { total: MAX_CONNECTIONS, per_peer: MAX_CONNECTIONS_PER_ADDRESS };
    let admission = Admission::new(limits);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(ticket) = admission.admit(Peer::Ip(peer.ip())) else {
                    warn!(%peer, "too many connections from busy peers; closing");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                tracker.spawn(async move { serve(stream, peer, ticket, shared, shutdown).await });
            }
            Err(err) => {
                warn!(%err, "failed to accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    info!("coordinator stopped");
    Ok(())
}

/// Puts silent nodes out of the farm.
async fn reap(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let timeout = u64::try_from(shared.config.node_timeout.as_millis()).unwrap_or(u64::MAX);
        let silent = {
            let mut core = shared.core();
            let now = core.clock.now();
            let silent = core.sched.silent_since(now.saturating_sub(timeout));
            for id in &silent {
                core.node_gone(*id);
            }
            // Also when nothing else happens: stalled nodes are looked for in dispatch.
            core.dispatch();
            silent
        };
        for id in silent {
            warn!(node = id, "node stopped reporting; out of the farm");
            if let Some(k) = shared.kick.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
                k.cancel();
            }
        }
    }
}

/// Serves one connection. Until it has logged in it may be closed to make room for another
/// (an idle or half-open connection costs its peer nothing); a logged-in node, agent or
/// status query is never evicted, so a flood beyond the limits is refused instead.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let transport = shared.config.transport();
    let kind = transport.peer_kind(peer);
    let handshake = async {
        let stream = transport.accept(stream).await.map_err(ProtocolError::Io)?;
        server_handshake(stream, &shared.config.auth, kind).await
    };
    let handshake = tokio::select! {
        _ = ticket.evicted() => return,
        h = tokio::time::timeout(Duration::from_secs(10), handshake) => h,
    };
    let mut conn = match handshake {
        Ok(Ok(conn)) => conn,
        Ok(Err(ProtocolError::Closed)) => return,
        Ok(Err(err)) => {
            warn!(%peer, %err, "refused a peer");
            return;
        }
        Err(_) => return,
    };
    let cert = conn.get_ref().peer_cert();
    let first = tokio::select! {
        _ = ticket.evicted() => return,
        f = tokio::time::timeout(Duration::from_secs(10), recv::<_, CoordRequest>(&mut conn)) => f,
    };
    let _logged_in = ticket.busy();
    let first = match first {
        Ok(Ok(first)) => first,
        _ => return,
    };
    let fleet = shared.config.fleet.clone();
    if let Err(reason) = crate::fleet::serve::admit(fleet.as_deref(), cert.as_ref(), &first) {
        warn!(%peer, %reason, "refused a request");
        let _ = send(&mut conn, &CoordResponse::Refused { reason }).await;
        return;
    }
    // A revoked certificate's connections end within the revocation.
    let revoked = match (&fleet, &cert) {
        (Some(fleet), Some(cert)) => fleet.session(cert),
        _ => CancellationToken::new(),
    };
    let _ended = revoked.clone().drop_guard();
    let session = async {
        match first {
            CoordRequest::NodeLogin(login) => serve_node(conn, peer, login, shared, shutdown).await,
            CoordRequest::AgentLogin { host } => serve_agent(conn, host, shared, shutdown).await,
            CoordRequest::Status => {
                let status = shared.core().status();
                let _ = send(&mut conn, &CoordResponse::Status(status)).await;
            }
            CoordRequest::WatchRevoked => {
                if let Some(fleet) = &fleet {
                    crate::fleet::serve::watch(fleet, &mut conn, &shutdown).await;
                }
            }
            msg @ (CoordRequest::Join(_)
            | CoordRequest::JoinPoll { .. }
            | CoordRequest::Renew { .. }
            | CoordRequest::Fleet(_)) => {
                if let Some(fleet) = &fleet {
                    let _ = crate::fleet::serve::answer(fleet, &mut conn, peer, cert.as_ref(), msg)
                        .await;
                }
            }
            other => {
                let reason = format!("expected a login, got {other:?}");
                let _ = send(&mut conn, &CoordResponse::Refused { reason }).await;
            }
        }
    };
    tokio::select! {
        _ = revoked.cancelled() => info!(%peer, "closed a revoked peer's connection"),
        _ = session => {}
    }
}

/// Connects to a node's advertised address as an agent would, and pings its worker.
async fn verify_address(
    address: &str,
    transport: &Transport,
    auth: &AuthConfig,
    limit: Duration,
) -> Result<(), String> {
    let attempt = async {
        let stream =
            transport.connect(address, FleetRole::Worker).await.map_err(|e| e.to_string())?;
        let mut conn = client_handshake(stream, auth).await.map_err(|e| e.to_string())?;
        send(&mut conn, &Request::Ping).await.map_err(|e| e.to_string())?;
        match recv::<_, Response>(&mut conn).await.map_err(|e| e.to_string())? {
            Response::Pong => Ok(()),
            other => Err(format!("answered {other:?} to a ping")),
        }
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(result) => result,
        Err(_) => Err("timed out".into()),
    }
}

async fn serve_node(
    mut conn: Conn<FarmStream>,
    peer: SocketAddr,
    login: NodeLogin,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let transport = shared.config.transport();
    if let Err(why) = verify_address(
        &login.address,
        &transport,
        &shared.config.auth,
        shared.config.verify_timeout,
    )
    .await
    {
        let reason = format!(
            "the coordinator cannot reach this node's worker at {} (seen from {peer}): {why}; \
             advertise an address reachable from the coordinator (--advertise)",
            login.address
        );
        warn!(host = %login.host, %reason, "node refused");
        let _ = send(&mut conn, &CoordResponse::Refused { reason }).await;
        return;
    }
    if shared.core().is_quarantined(&login.address) {
        let reason = format!(
            "the worker at {} is quarantined: an agent's verification found it returning an \
             object that differs from a local compile",
            login.address
        );
        warn!(host = %login.host, %reason, "node refused");
        let _ = send(&mut conn, &CoordResponse::Refused { reason }).await;
        return;
    }
    let kick = CancellationToken::new();
    let id = {
        let mut core = shared.core();
        // A node re-logging in at the same address replaces its old entry.
        let stale = core.nodes_at(&login.address);
        let mut kicks = shared.kick.lock().unwrap_or_else(|e| e.into_inner());
        for old in stale {
            core.node_gone(old);
            if let Some(k) = kicks.remove(&old) {
                k.cancel();
            }
        }
        let id = core.next_id();
        kicks.insert(id, kick.clone());
        let spec = NodeSpec {
            name: login.address.clone(),
            host: login.host.clone(),
            slots: login.slots,
            cores: login.cores,
            memory_mb: login.memory_mb,
            toolchains: login.toolchains.iter().map(|d| d.0).collect(),
        };
        core.add_node(id, spec, login.address.clone());
        id
    };
    info!(node = id, host = %login.host, address = %login.address, slots = login.slots, "node joined");
    let farm = shared.config.farm.clone();
    let (mut revoked, serials) = crate::fleet::serve::revocations(shared.config.fleet.as_deref());
    let mut welcome = vec![CoordResponse::Welcome { farm, id }];
    if !serials.is_empty() {
        welcome.push(CoordResponse::Revoked { serials });
    }
    if send_all(&mut conn, &welcome).await.is_ok() {
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = kick.cancelled() => break,
                serials = crate::fleet::serve::next_revocation(&mut revoked) => {
                    if send(&mut conn, &CoordResponse::Revoked { serials }).await.is_err() {
                        break;
                    }
                    continue;
                }
                m = recv::<_, CoordRequest>(&mut conn) => m,
            };
            match msg {
                Ok(CoordRequest::Load(l)) => {
                    let mut core = shared.core();
                    let now = core.clock.now();
                    let load = LoadReport {
                        foreign_load: l.foreign_load,
                        running: l.running,
                        free_mem_mb: l.free_mem_mb,
                        free_disk_mb: l.free_disk_mb,
                    };
                    // A report that changes nothing the plan uses only proves the node alive.
                    if core.sched.report_load(id, load, now) {
                        core.dispatch();
                    }
                }
                Ok(CoordRequest::ToolchainAdded(d)) => {
                    let mut core = shared.core();
                    core.sched.add_toolchain(id, d.0);
                    core.dispatch();
                }
                Ok(other) => debug!(node = id, ?other, "ignored a message from a node"),
                Err(err) => {
                    debug!(node = id, %err, "node connection ended");
                    break;
                }
            }
        }
    }
    shared.kick.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    shared.core().node_gone(id);
    info!(node = id, host = %login.host, "node left");
}

async fn serve_agent(
    mut conn: Conn<FarmStream>,
    host: String,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = shared.core().next_id();
    let farm = shared.config.farm.clone();
    if send(&mut conn, &CoordResponse::Welcome { farm, id }).await.is_err() {
        return;
    }
    debug!(agent = id, %host, "agent joined");
    let (mut revoked, serials) = crate::fleet::serve::revocations(shared.config.fleet.as_deref());
    let mut inbox: Vec<CoordRequest> = Vec::new();
    let mut outbox: Vec<CoordResponse> = Vec::new();
    if !serials.is_empty() {
        outbox.push(CoordResponse::Revoked { serials });
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            serials = crate::fleet::serve::next_revocation(&mut revoked) => {
                outbox.push(CoordResponse::Revoked { serials });
            }
            out = rx.recv() => match out {
                Some(out) => outbox.push(out),
                None => break,
            },
            msg = recv::<_, CoordRequest>(&mut conn) => match msg {
                Ok(msg) => inbox.push(msg),
                Err(_) => break,
            },
        }
        // Every request already read is handled under one lock and one dispatch, and every
        // answer ready goes out in one write.
        let mut closed = false;
        while inbox.len() < MAX_BATCH {
            match recv_ready::<_, CoordRequest>(&mut conn) {
                Some(Ok(msg)) => inbox.push(msg),
                Some(Err(_)) => {
                    closed = true;
                    break;
                }
                None => break,
            }
        }
        if !inbox.is_empty() {
            let mut core = shared.core();
            for msg in inbox.drain(..) {
                let quarantine_file = shared.config.quarantine_file.as_deref();
                handle_agent_request(&mut core, &shared.kick, quarantine_file, id, &host, msg, &tx);
            }
            core.dispatch();
        }
        while let Ok(more) = rx.try_recv() {
            outbox.push(more);
        }
        if !outbox.is_empty() {
            if send_all(&mut conn, &outbox).await.is_err() {
                break;
            }
            outbox.clear();
        }
        if closed {
            break;
        }
    }
    shared.core().agent_gone(id);
    debug!(agent = id, %host, "agent left");
}

/// Requests handled per batch before answers go out.
const MAX_BATCH: usize = 1024;

/// One agent request; the caller dispatches after the batch.
fn handle_agent_request(
    core: &mut Core,
    kicks: &Mutex<HashMap<u64, CancellationToken>>,
    quarantine_file: Option<&std::path::Path>,
    agent: u64,
    host: &str,
    msg: CoordRequest,
    tx: &AgentTx,
) {
    match msg {
        CoordRequest::Place(p) => {
            let spec = JobSpec {
                submitter: host.to_string(),
                priority: p.priority,
                toolchain: p.toolchain.0,
                bytes_in: p.bytes_in,
                work: p.work,
                unit: p.unit,
            };
            core.place(agent, p.tag, spec, tx);
        }
        CoordRequest::Done(d) => {
            let stats =
                JobStats { ok: d.ok, wall_ms: d.wall_ms, cpu_ms: d.cpu_ms, bytes_out: d.bytes_out };
            core.done(agent, d.job, stats);
        }
        CoordRequest::Status => {
            let _ = tx.send(CoordResponse::Status(core.status()));
        }
        // An address is short; anything longer names no node and is not remembered.
        CoordRequest::Quarantine { node, .. } if node.len() > MAX_ADDRESS_LEN => {
            debug!(agent, len = node.len(), "ignored a quarantine of an overlong address");
        }
        CoordRequest::Quarantine { node, reason } => {
            let reason = discomy_protocol::sources::truncated(&reason, 512);
            warn!(agent, %host, %node, %reason, "node quarantined");
            let mut kicks = kicks.lock().unwrap_or_else(|e| e.into_inner());
            for id in core.quarantine(&node) {
                if let Some(kick) = kicks.remove(&id) {
                    kick.cancel();
                }
            }
            if let Some(file) = quarantine_file {
                if let Err(err) = save_quarantine(file, &core.quarantined()) {
                    warn!(%err, file = %file.display(), "the quarantine could not be saved");
                }
            }
        }
        other => debug!(agent, ?other, "ignored a message from an agent"),
    }
}
