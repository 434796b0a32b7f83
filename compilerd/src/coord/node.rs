//! A worker's membership in a coordinated farm: log in (host id, the address agents reach it
//! at, cores, slots, memory, toolchains), then report load every second; reconnect when the
//! coordinator goes away (a restarted coordinator sees its nodes again within a second or two).
//! Given several coordinators of one farm, the node is a member of each.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use discomy_protocol::asyncio::{client_handshake, recv, send};
use discomy_protocol::coordinator::{CoordRequest, CoordResponse, LoadReport, NodeLogin};
use discomy_protocol::fleet::FleetRole;
use discomy_protocol::{AuthConfig, Digest};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::coord::discover::CoordinatorAddr;

/// What the reporter needs to know about its worker.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Host id.
    pub host: String,
    /// The advertised address; `None`: the local address of the coordinator connection with
    /// `port` (what the coordinator can route back to).
    pub advertise: Option<String>,
    /// The worker's port.
    pub port: u16,
    /// Slots.
    pub slots: u32,
    /// The worker's toolchain store: what it holds is read at each login (the coordinator's
    /// affinity before any job ran there) and every second after (`ToolchainAdded`).
    pub store_dir: std::path::PathBuf,
    /// Units compiling now (the worker's gauge).
    pub running: Arc<AtomicUsize>,
    /// Where units are written (for the free-disk figure).
    pub work_dir: std::path::PathBuf,
}

/// Keeps the node logged in until `shutdown`: with several coordinators of one farm
/// (`--coordinator a,b`), logged in to every one, so that an agent failing over from one to
/// another finds the node there too.
pub async fn run(
    addr: CoordinatorAddr,
    info: NodeInfo,
    auth: AuthConfig,
    shutdown: CancellationToken,
) {
    if let CoordinatorAddr::Several(list) = addr {
        let each = list.into_iter().map(|one| {
            run_one(CoordinatorAddr::Explicit(one), info.clone(), auth.clone(), shutdown.clone())
        });
        futures_util::future::join_all(each).await;
        return;
    }
    run_one(addr, info, auth, shutdown).await
}

/// Keeps the node logged in to one coordinator (or the one discovery finds) until `shutdown`.
async fn run_one(
    addr: CoordinatorAddr,
    info: NodeInfo,
    auth: AuthConfig,
    shutdown: CancellationToken,
) {
    let mut warned = false;
    while !shutdown.is_cancelled() {
        let mut pause = Duration::from_millis(500);
        // Every coordinator discovery finds, in order: one that fails (in a fleet, one whose
        // certificate is not of the farm CA, such as a rogue answering mDNS first) does not
        // keep the node from the next.
        let targets = addr.resolve_all(&shutdown).await;
        if targets.is_empty() {
            // Nothing advertised (yet): look again a little later.
            pause = Duration::from_secs(3);
        }
        for target in &targets {
            match session(target, &info, &auth, &shutdown).await {
                Ok(()) => {
                    warned = false;
                    break;
                }
                Err(Refusal(err)) => {
                    error!(coordinator = %target, "the coordinator refused this node: {err}");
                    pause = Duration::from_secs(5);
                }
                Err(Transport(err)) if !warned => {
                    warn!(coordinator = %target, %err, "coordinator unavailable; retrying");
                    warned = true;
                }
                Err(Transport(_)) => {}
            }
            if shutdown.is_cancelled() {
                return;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

enum SessionError {
    Refusal(String),
    Transport(String),
}
use SessionError::{Refusal, Transport};

async fn session(
    target: &str,
    info: &NodeInfo,
    auth: &AuthConfig,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let t = |e: discomy_protocol::ProtocolError| Transport(e.to_string());
    let stream = tokio::time::timeout(
        Duration::from_secs(3),
        crate::fleet::connect(target, FleetRole::Coordinator),
    )
    .await
    .map_err(|_| Transport("connect timed out".into()))?
    .map_err(|e| Transport(e.to_string()))?;
    let local = stream.tcp().local_addr().map_err(|e| Transport(e.to_string()))?;
    let mut conn = client_handshake(stream, auth).await.map_err(|e| match e {
        discomy_protocol::ProtocolError::Auth(r) => Refusal(r),
        other => Transport(other.to_string()),
    })?;
    let address = info
        .advertise
        .clone()
        .unwrap_or_else(|| std::net::SocketAddr::new(local.ip(), info.port).to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let login = NodeLogin {
        host: info.host.clone(),
        address: address.clone(),
        cores,
        slots: info.slots,
        memory_mb: meminfo("MemTotal:").unwrap_or(0),
        toolchains: crate::store::tools::installed_in(&info.store_dir),
    };
    let mut known: std::collections::HashSet<Digest> = login.toolchains.iter().copied().collect();
    send(&mut conn, &CoordRequest::NodeLogin(login)).await.map_err(t)?;
    let answer = tokio::time::timeout(Duration::from_secs(10), recv::<_, CoordResponse>(&mut conn))
        .await
        .map_err(|_| Transport("no answer to the login".into()))?
        .map_err(t)?;
    match answer {
        CoordResponse::Welcome { farm, id } => {
            info!(coordinator = %target, %farm, node = id, %address, "joined the farm");
        }
        CoordResponse::Refused { reason } => return Err(Refusal(reason)),
        other => return Err(Transport(format!("unexpected answer {other:?}"))),
    }
    let mut cpu = CpuSampler::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
            // After the welcome the coordinator only tells of revocations; reading also
            // detects its death.
            r = recv::<_, CoordResponse>(&mut conn) => {
                return match r {
                    Err(e) => Err(t(e)),
                    Ok(CoordResponse::Revoked { serials }) => {
                        crate::fleet::learn_revoked(serials);
                        continue;
                    }
                    Ok(_) => Ok(()),
                };
            }
        }
        let report = LoadReport {
            foreign_load: cpu.foreign_load(),
            running: info.running.load(Ordering::Relaxed) as u32,
            free_mem_mb: meminfo("MemAvailable:").unwrap_or(0),
            free_disk_mb: free_disk_mb(&info.work_dir),
        };
        send(&mut conn, &CoordRequest::Load(report)).await.map_err(t)?;
        for d in crate::store::tools::installed_in(&info.store_dir) {
            if known.insert(d) {
                send(&mut conn, &CoordRequest::ToolchainAdded(d)).await.map_err(t)?;
            }
        }
    }
}

/// A `/proc/meminfo` figure in MiB.
pub fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// Free space where `dir` is (or the temporary directory), MiB.
pub fn free_disk_mb(dir: &std::path::Path) -> u64 {
    let probe = if dir.exists() { dir.to_path_buf() } else { std::env::temp_dir() };
    nix::sys::statvfs::statvfs(&probe)
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()) >> 20)
        .unwrap_or(0)
}

/// CPU busy time of the host minus the CPU time of this process's children (the farm's own
/// compiles), per mille of the host's capacity, between two samples.
struct CpuSampler {
    last: Option<(Instant, u64, u64)>,
}

impl CpuSampler {
    fn new() -> CpuSampler {
        let mut s = CpuSampler { last: None };
        s.sample();
        s
    }

    /// (busy ticks of all CPUs, children's ticks).
    fn read() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu = stat.lines().next()?;
        let f: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        let idle = f.get(3)? + f.get(4).unwrap_or(&0);
        let total: u64 = f.iter().take(8).sum();
        let me = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after = me.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // Fields 16 and 17 (cutime, cstime) are at 13 and 14 after the `)`; plus our own
        // utime/stime (11, 12): the daemon's work is the farm's too.
        let own: u64 =
            [11, 12, 13, 14].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
        Some((total - idle, own))
    }

    fn sample(&mut self) -> Option<(u64, u64, Duration)> {
        let (busy, own) = CpuSampler::read()?;
        let now = Instant::now();
        let prev = self.last.replace((now, busy, own));
        let (t, b, o) = prev?;
        Some((busy.saturating_sub(b), own.saturating_sub(o), now - t))
    }

    fn foreign_load(&mut self) -> u16 {
        let Some((busy, own, elapsed)) = self.sample() else { return 0 };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        // Clock ticks are 100 per second on Linux.
        let capacity = elapsed.as_secs_f64() * 100.0 * cpus;
        if capacity <= 0.0 {
            return 0;
        }
        let foreign = busy.saturating_sub(own) as f64 / capacity * 1000.0;
        foreign.clamp(0.0, 999.0) as u16
    }
}
