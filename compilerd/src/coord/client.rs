//! The agent's link to the coordinator: one persistent, pipelined connection (reconnected in the
//! background), placements matched to questions by tag, job reports sent without waiting, and
//! hedges (second placements for units whose node stalled) handed to the unit that waits on it.
//!
//! The link also keeps the agent's [`FarmMemory`] (the coordinator's farm view, asked at login
//! and every [`VIEW_EVERY`], and the workers of its placements). When the coordinator is away
//! every question answers [`Unplaced::Away`] at once and the agent places units on the workers
//! it remembers, then its host list, then local compiles; meanwhile the link tries the farm's
//! coordinators again (the next one of a list first) and goes back to the first that answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use super::CoordError;
use discomy_protocol::asyncio::{client_handshake, recv, send};
use discomy_protocol::coordinator::{
    CoordRequest, CoordResponse, JobDone, PlaceRequest, Placement,
};
use discomy_protocol::fleet::FleetRole;
use discomy_protocol::{AuthConfig, CompileRequest};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::coord::discover::CoordinatorAddr;
use crate::coord::memory::FarmMemory;

/// How often the agent asks its coordinator for the farm view it remembers.
pub const VIEW_EVERY: Duration = Duration::from_secs(5);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Placement>>>>;

/// A handle on the coordinator connection.
pub struct CoordClient {
    tx: Mutex<Option<mpsc::UnboundedSender<CoordRequest>>>,
    pending: Pending,
    /// Units running a placement, by tag: where a hedge for them goes.
    hedges: Pending,
    tags: AtomicU64,
    /// The workers of the farm, remembered for when no coordinator answers.
    memory: FarmMemory,
    /// The coordinator of the session now, and of the last session.
    current: Mutex<Option<String>>,
    last: Mutex<Option<String>>,
    /// Sessions that ended, and sessions opened with another coordinator than the last one.
    lost: AtomicU64,
    failovers: AtomicU64,
}

/// Why a unit got no placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unplaced {
    /// No coordinator session now (none reachable, or it ended while the unit waited).
    Away,
    /// The coordinator did not answer within the wait (for the agent's placement also:
    /// it has no node for the unit, or every placement failed).
    Late,
}

/// A unit's placement, and where a hedge of it arrives while it runs. Dropping it stops the
/// watch (a hedge arriving later is reported back as not run).
pub struct Placed<'a> {
    /// Where the unit runs.
    pub placement: Placement,
    /// A second placement, if the coordinator finds the first node stalled.
    pub hedge: oneshot::Receiver<Placement>,
    client: &'a CoordClient,
}

impl Drop for Placed<'_> {
    fn drop(&mut self) {
        self.client.hedges.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.placement.tag);
    }
}

impl CoordClient {
    /// Whether a session with the coordinator is up (logged in, placements possible).
    pub fn joined(&self) -> bool {
        self.tx.lock().map(|tx| tx.is_some()).unwrap_or(false)
    }

    /// The workers remembered from the coordinators' farm views and placements.
    pub fn memory(&self) -> &FarmMemory {
        &self.memory
    }

    /// The coordinator of the session now (`IP:PORT`), if any.
    pub fn current(&self) -> Option<String> {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sessions that ended (the coordinator went away), and sessions opened with another
    /// coordinator than the last one (failovers).
    pub fn session_counts(&self) -> (u64, u64) {
        (self.lost.load(Ordering::Relaxed), self.failovers.load(Ordering::Relaxed))
    }

    /// Starts the background connection to `addr` as submitter `host`.
    pub fn spawn(
        addr: CoordinatorAddr,
        host: String,
        auth: AuthConfig,
        shutdown: CancellationToken,
    ) -> Arc<CoordClient> {
        let client = Arc::new(CoordClient {
            tx: Mutex::new(None),
            pending: Arc::new(Mutex::new(HashMap::new())),
            hedges: Arc::new(Mutex::new(HashMap::new())),
            tags: AtomicU64::new(1),
            memory: FarmMemory::default(),
            current: Mutex::new(None),
            last: Mutex::new(None),
            lost: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
        });
        let me = client.clone();
        tokio::spawn(async move { me.keep_connected(addr, host, auth, shutdown).await });
        client
    }

    /// Keeps a session with one of the farm's coordinators. After a session ends, the
    /// coordinator after the one that went away is tried first (the same one again when there is
    /// only one); a round in which none answers is followed by a short pause, and another round.
    async fn keep_connected(
        self: Arc<Self>,
        addr: CoordinatorAddr,
        host: String,
        auth: AuthConfig,
        shutdown: CancellationToken,
    ) {
        let mut warned = false;
        let mut first = 0usize;
        while !shutdown.is_cancelled() {
            let targets = addr.resolve_all(&shutdown).await;
            if targets.is_empty() {
                // Nothing advertised (yet): look again a little later.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(3)) => {}
                }
                continue;
            }
            let mut lost_one = false;
            for k in 0..targets.len() {
                let index = (first + k) % targets.len();
                let target = &targets[index];
                let mut joined = false;
                let result = self.session(target, &host, &auth, &shutdown, &mut joined).await;
                *self.tx.lock().unwrap_or_else(|e| e.into_inner()) = None;
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
                self.hedges.lock().unwrap_or_else(|e| e.into_inner()).clear();
                if shutdown.is_cancelled() {
                    return;
                }
                if joined {
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        coordinator = %target,
                        remembered = self.memory.len(),
                        "lost the coordinator; placing units on the remembered workers until one answers"
                    );
                    warned = true;
                    first = (index + 1) % targets.len();
                    lost_one = true;
                    break;
                }
                if let Err(err) = result
                    && !warned
                {
                    warn!(
                        coordinator = %target,
                        %err,
                        remembered = self.memory.len(),
                        "coordinator unavailable; using the remembered workers, then the host list"
                    );
                    warned = targets.len() == 1;
                }
            }
            if lost_one {
                // Straight to the farm's other coordinators.
                continue;
            }
            warned = true;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// One session: login, then placements, reports and farm views until the connection ends.
    /// `joined` is set once the coordinator welcomed the agent.
    async fn session(
        &self,
        target: &str,
        host: &str,
        auth: &AuthConfig,
        shutdown: &CancellationToken,
        joined: &mut bool,
    ) -> Result<(), CoordError> {
        let protocol = |source| CoordError::Protocol { addr: target.to_string(), source };
        let stream = tokio::time::timeout(
            Duration::from_secs(3),
            crate::fleet::connect(target, FleetRole::Coordinator),
        )
        .await
        .map_err(|_| CoordError::Timeout(target.to_string()))?
        .map_err(|source| CoordError::Connect { addr: target.to_string(), source })?;
        let mut conn = client_handshake(stream, auth).await.map_err(protocol)?;
        send(&mut conn, &CoordRequest::AgentLogin { host: host.to_string() })
            .await
            .map_err(protocol)?;
        let welcome =
            tokio::time::timeout(Duration::from_secs(10), recv::<_, CoordResponse>(&mut conn))
                .await
                .map_err(|_| CoordError::Timeout(target.to_string()))?;
        match welcome.map_err(protocol)? {
            CoordResponse::Welcome { farm, .. } => {
                info!(coordinator = %target, %farm, "agent joined the farm");
                self.memory.joined_farm(&farm);
            }
            CoordResponse::Refused { reason } => {
                return Err(CoordError::Refused { addr: target.to_string(), reason });
            }
            other => {
                return Err(CoordError::Unexpected {
                    addr: target.to_string(),
                    answer: format!("{other:?}"),
                });
            }
        }
        *joined = true;
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if last.as_deref().is_some_and(|l| l != target) {
                self.failovers.fetch_add(1, Ordering::Relaxed);
                info!(coordinator = %target, previous = last.as_deref().unwrap_or(""), "failed over to another coordinator of the farm");
            }
            *last = Some(target.to_string());
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(target.to_string());
        // The farm view first, then every few seconds: what the agent remembers.
        send(&mut conn, &CoordRequest::Status).await.map_err(protocol)?;
        let mut view = tokio::time::interval_at((Instant::now() + VIEW_EVERY).into(), VIEW_EVERY);
        view.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (tx, mut rx) = mpsc::unbounded_channel();
        *self.tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = view.tick() => {
                    send(&mut conn, &CoordRequest::Status).await.map_err(protocol)?;
                }
                out = rx.recv() => {
                    let Some(out) = out else { return Ok(()) };
                    // Everything queued goes out in one write.
                    use futures_util::SinkExt;
                    let mut next = Some(out);
                    while let Some(msg) = next {
                        let body = discomy_protocol::frame::encode(&msg).map_err(protocol)?;
                        conn.feed(bytes::Bytes::from(body)).await.map_err(|e| protocol(e.into()))?;
                        next = rx.try_recv().ok();
                    }
                    SinkExt::<bytes::Bytes>::flush(&mut conn).await.map_err(|e| protocol(e.into()))?;
                }
                msg = recv::<_, CoordResponse>(&mut conn) => match msg.map_err(protocol)? {
                    CoordResponse::Placed(p) => {
                        if let Some(worker) = &p.worker {
                            self.memory.learn_placement(worker);
                        }
                        let waiter = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&p.tag);
                        if let Some(w) = waiter
                            && let Err(p) = w.send(p)
                        {
                            // The unit stopped waiting: give the slot back.
                            self.done(JobDone { job: p.job, ok: false, wall_ms: 0, cpu_ms: 0, bytes_out: 0 });
                        }
                    }
                    CoordResponse::Hedge(p) => {
                        let waiter = self.hedges.lock().unwrap_or_else(|e| e.into_inner()).remove(&p.tag);
                        let undelivered = match waiter {
                            Some(w) => w.send(p).err(),
                            None => Some(p),
                        };
                        if let Some(p) = undelivered {
                            // The unit has its answer already: the twin is not run.
                            self.done(JobDone { job: p.job, ok: false, wall_ms: 0, cpu_ms: 0, bytes_out: 0 });
                        }
                    }
                    CoordResponse::Status(status) => self.memory.learn_status(&status),
                    CoordResponse::Revoked { serials } => crate::fleet::learn_revoked(serials),
                    other => tracing::debug!(?other, "ignored a coordinator message"),
                },
            }
        }
    }

    /// Asks where a unit of `toolchain` (`bytes_in` shipped, `work` bytes of its own source,
    /// `unit` its cost-history key) should run. [`Unplaced::Away`]: no coordinator now (or the
    /// session ended while the unit waited); [`Unplaced::Late`]: no answer within `wait`.
    pub async fn place(
        &self,
        toolchain: discomy_protocol::Digest,
        bytes_in: u64,
        work: u64,
        unit: u64,
        wait: Duration,
    ) -> Result<Placed<'_>, Unplaced> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone().ok_or(Unplaced::Away)?;
        let tag = self.tags.fetch_add(1, Ordering::Relaxed);
        let (otx, orx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(tag, otx);
        // Watched from the start: a hedge can only follow the placement, on the same connection.
        let (htx, hedge) = oneshot::channel();
        self.hedges.lock().unwrap_or_else(|e| e.into_inner()).insert(tag, htx);
        let ask = PlaceRequest { tag, toolchain, bytes_in, work, priority: 0, unit };
        let placed = match tx.send(CoordRequest::Place(ask)) {
            // A dropped sender: the session ended and its waiters were cleared.
            Ok(()) => match tokio::time::timeout(wait, orx).await {
                Ok(Ok(placement)) => Ok(placement),
                Ok(Err(_)) => Err(Unplaced::Away),
                Err(_) => Err(Unplaced::Late),
            },
            Err(_) => Err(Unplaced::Away),
        };
        match placed {
            Ok(placement) => Ok(Placed { placement, hedge, client: self }),
            Err(why) => {
                self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&tag);
                self.hedges.lock().unwrap_or_else(|e| e.into_inner()).remove(&tag);
                Err(why)
            }
        }
    }

    /// Tells the coordinator that verification caught the worker at `node` returning a wrong
    /// object (no answer awaited): it drops the node farm-wide.
    pub fn quarantine(&self, node: String, reason: String) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(CoordRequest::Quarantine { node, reason });
        }
    }

    /// Reports a finished placement (no answer awaited).
    pub fn done(&self, done: JobDone) {
        if done.job == 0 {
            return;
        }
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(CoordRequest::Done(done));
        }
    }
}

/// The unit's work estimate: bytes after the main file's own line markers (headers dominate a
/// preprocessed unit's size but not its compile time). `None` when the payload does not open.
pub fn main_file_bytes(req: &CompileRequest) -> Option<u64> {
    let raw = req.unit.decompress(discomy_protocol::payload::MAX_RAW_LEN).ok()?;
    let mut main: Option<&[u8]> = None;
    let mut in_main = false;
    let mut bytes = 0u64;
    for line in raw.split(|b| *b == b'\n') {
        if let Some(rest) = line.strip_prefix(b"# ") {
            // `# N "file" flags`: the first file named is the main file.
            let name = rest.split(|b| *b == b'"').nth(1);
            if let Some(name) = name {
                let main = *main.get_or_insert(name);
                in_main = name == main;
                continue;
            }
        }
        if in_main {
            bytes += line.len() as u64 + 1;
        }
    }
    Some(bytes)
}
