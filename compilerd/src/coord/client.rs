//! The agent's link to the coordinator: one persistent, pipelined connection (reconnected in the
//! background), placements matched to questions by tag, job reports sent without waiting, and
//! hedges (second placements for units whose node stalled) handed to the unit that waits on it.
//!
//! When the coordinator is away every question answers `None` at once and the agent falls back
//! to its host list, or to local compiles.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::CoordError;
use discomy_protocol::asyncio::{client_handshake, recv, send};
use discomy_protocol::coordinator::{
    CoordRequest, CoordResponse, JobDone, PlaceRequest, Placement,
};
use discomy_protocol::{AuthConfig, CompileRequest};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::coord::discover::CoordinatorAddr;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Placement>>>>;

/// A handle on the coordinator connection.
pub struct CoordClient {
    tx: Mutex<Option<mpsc::UnboundedSender<CoordRequest>>>,
    pending: Pending,
    /// Units running a placement, by tag: where a hedge for them goes.
    hedges: Pending,
    tags: AtomicU64,
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
        });
        let me = client.clone();
        tokio::spawn(async move { me.keep_connected(addr, host, auth, shutdown).await });
        client
    }

    async fn keep_connected(
        self: Arc<Self>,
        addr: CoordinatorAddr,
        host: String,
        auth: AuthConfig,
        shutdown: CancellationToken,
    ) {
        let mut warned = false;
        while !shutdown.is_cancelled() {
            let Some(target) = addr.resolve(&shutdown).await else {
                // Nothing advertised (yet): look again a little later.
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(3)) => {}
                }
                continue;
            };
            match self.session(&target, &host, &auth, &shutdown).await {
                Ok(()) => warned = false,
                Err(err) if !warned => {
                    warn!(coordinator = %target, %err, "coordinator unavailable; using the host list");
                    warned = true;
                }
                Err(_) => {}
            }
            *self.tx.lock().unwrap_or_else(|e| e.into_inner()) = None;
            self.pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
            self.hedges.lock().unwrap_or_else(|e| e.into_inner()).clear();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn session(
        &self,
        target: &str,
        host: &str,
        auth: &AuthConfig,
        shutdown: &CancellationToken,
    ) -> Result<(), CoordError> {
        let protocol = |source| CoordError::Protocol { addr: target.to_string(), source };
        let stream = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(target))
            .await
            .map_err(|_| CoordError::Timeout(target.to_string()))?
            .map_err(|source| CoordError::Connect { addr: target.to_string(), source })?;
        let _ = stream.set_nodelay(true);
        let mut conn = client_handshake(stream, auth).await.map_err(protocol)?;
        send(&mut conn, &CoordRequest::AgentLogin { host: host.to_string() })
            .await
            .map_err(protocol)?;
        match recv::<_, CoordResponse>(&mut conn).await.map_err(protocol)? {
            CoordResponse::Welcome { farm, .. } => {
                info!(coordinator = %target, %farm, "agent joined the farm")
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
        let (tx, mut rx) = mpsc::unbounded_channel();
        *self.tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
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
                    other => tracing::debug!(?other, "ignored a coordinator message"),
                },
            }
        }
    }

    /// Asks where a unit of `toolchain` (`bytes_in` shipped, `work` bytes of its own source,
    /// `unit` its cost-history key) should run. `None`: no coordinator now, or no answer within `wait`.
    pub async fn place(
        &self,
        toolchain: discomy_protocol::Digest,
        bytes_in: u64,
        work: u64,
        unit: u64,
        wait: Duration,
    ) -> Option<Placed<'_>> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        let tag = self.tags.fetch_add(1, Ordering::Relaxed);
        let (otx, orx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(tag, otx);
        // Watched from the start: a hedge can only follow the placement, on the same connection.
        let (htx, hedge) = oneshot::channel();
        self.hedges.lock().unwrap_or_else(|e| e.into_inner()).insert(tag, htx);
        let ask = PlaceRequest { tag, toolchain, bytes_in, work, priority: 0, unit };
        let placed = match tx.send(CoordRequest::Place(ask)) {
            Ok(()) => tokio::time::timeout(wait, orx).await.ok().and_then(Result::ok),
            Err(_) => None,
        };
        match placed {
            Some(placement) => Some(Placed { placement, hedge, client: self }),
            None => {
                self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&tag);
                self.hedges.lock().unwrap_or_else(|e| e.into_inner()).remove(&tag);
                None
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
