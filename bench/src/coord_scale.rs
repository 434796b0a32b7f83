//! `discomy-bench coord-scale`: the real `discomy-coordinator` on loopback under N simulated
//! nodes (each logged in from its own 127.x.y.z address, connect-back answered by one fake
//! worker listener, load reported every second) and M simulated agents keeping a window of
//! placement questions in flight (each answer is followed by its `Done` and a new question).
//! Prints placements/s, p50/p99 latency, the daemon's peak RSS from /proc, and what a scrape of
//! its `/metrics` (every 200 ms during the measurement, as a Prometheus would) costs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use discomy_protocol::asyncio::{client_handshake, recv, send, server_handshake};
use discomy_protocol::coordinator::{
    CoordRequest, CoordResponse, JobDone, LoadReport, NodeLogin, PlaceRequest,
};
use discomy_protocol::{AuthConfig, Digest, PeerKind, Request, Response};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// `coord-scale` options.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Simulated nodes.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Slots per node.
    #[arg(long, default_value_t = 8)]
    pub slots: u32,
    /// Simulated agents.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Placement questions each agent keeps in flight. Latency is at least questions in flight
    /// over throughput (Little's law): 8 agents × 32 at 50,000/s is 5 ms on average, so a p99
    /// under 2 ms needs a window of a few (an agent's `make -jN` rarely has more units waiting
    /// for a placement at once).
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Seconds of measurement after all nodes joined.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// The daemon binary (default: beside this one).
    #[arg(long)]
    pub coordinator: Option<PathBuf>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The process's CPU time (user + system), seconds, from /proc (clock ticks at 100 Hz).
pub(crate) fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// The machine's CPU counters from /proc/stat: `(steal, total)` ticks. On a shared VM, time
/// the hypervisor gave to others (steal) slows everything measured here.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return (0, 0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    (v.get(7).copied().unwrap_or(0), v.iter().take(8).sum())
}

/// The machine's 1-minute load average (the machine is shared: figures need it beside them).
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Runs the benchmark.
pub fn run(args: &Args) -> Result<i32> {
    raise_nofile(); // inherited by the daemon: 2 sockets per node on each side
    let exe = match &args.coordinator {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("discomy-coordinator"),
    };
    if !exe.is_file() {
        bail!("{} not found (build the workspace, or pass --coordinator)", exe.display());
    }
    let dir = tempfile::tempdir()?;
    let addr_file = dir.path().join("coord.addr");
    // `/metrics` is scraped during the measurement, as a Prometheus would (its cost is reported).
    let metrics =
        format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    let child = std::process::Command::new(&exe)
        .args(["--no-mdns", "--listen", "127.0.0.1:0", "--addr-file"])
        .arg(&addr_file)
        .args(["--metrics-listen", &metrics])
        .env("DISCOMY_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let daemon = Daemon(child);
    let pid = daemon.0.id();
    let start = Instant::now();
    let addr: SocketAddr = loop {
        let text = std::fs::read_to_string(&addr_file).unwrap_or_default();
        if text.ends_with('\n') {
            break text.trim().parse()?;
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("the coordinator did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let report = runtime.block_on(drive(args, addr, pid, format!("http://{metrics}/metrics")))?;
    drop(daemon);
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(0)
}

async fn fake_worker(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let auth = AuthConfig::none();
            if let Ok(mut conn) = server_handshake(stream, &auth, PeerKind::Loopback).await
                && let Ok(Request::Ping) = recv::<_, Request>(&mut conn).await
            {
                let _ = send(&mut conn, &Response::Pong).await;
            }
        });
    }
}

async fn node(
    i: usize,
    port: u16,
    addr: SocketAddr,
    slots: u32,
    stop: Arc<AtomicBool>,
    joined: Arc<AtomicU64>,
    logins: Arc<tokio::sync::Semaphore>,
) -> Result<()> {
    let auth = AuthConfig::none();
    // Nodes of a real farm do not all log in within the same millisecond: bound the herd.
    let permit = logins.acquire_owned().await?;
    let ip = format!("127.{}.{}.{}", 1 + i / 62_500, (i / 250) % 250, 1 + i % 250);
    // From its own address, as a real node (the coordinator bounds connections per address).
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip.parse()?, 0))?;
    let stream = socket.connect(addr).await?;
    let mut conn = client_handshake(stream, &auth).await?;
    let login = NodeLogin {
        host: format!("sim-{i}"),
        address: format!("{ip}:{port}"),
        cores: slots,
        slots,
        memory_mb: 16_384,
        toolchains: vec![Digest([7; 32])],
    };
    send(&mut conn, &CoordRequest::NodeLogin(login)).await?;
    match recv::<_, CoordResponse>(&mut conn).await? {
        CoordResponse::Welcome { .. } => {}
        other => bail!("node {i} refused: {other:?}"),
    }
    joined.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    // Spread the heartbeats over the second.
    tokio::time::sleep(Duration::from_millis((i as u64 * 7919) % 1000)).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let load =
            LoadReport { foreign_load: 50, running: 0, free_mem_mb: 8000, free_disk_mb: 50_000 };
        send(&mut conn, &CoordRequest::Load(load)).await?;
    }
    Ok(())
}

async fn client(
    i: usize,
    addr: SocketAddr,
    window: usize,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    lat: Arc<Mutex<Vec<u32>>>,
) -> Result<u64> {
    let auth = AuthConfig::none();
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let mut conn = client_handshake(stream, &auth).await?;
    send(&mut conn, &CoordRequest::AgentLogin { host: format!("agent-{i}") }).await?;
    let _: CoordResponse = recv(&mut conn).await?;
    let mut sent_at = std::collections::HashMap::new();
    let mut tag = 0u64;
    let ask = |tag: u64| {
        CoordRequest::Place(PlaceRequest {
            tag,
            toolchain: Digest([7; 32]),
            bytes_in: 300_000,
            work: 10_000 + (tag % 40_000),
            priority: 0,
            unit: 1 + tag % 5_000,
        })
    };
    for _ in 0..window {
        tag += 1;
        sent_at.insert(tag, Instant::now());
        send(&mut conn, &ask(tag)).await?;
    }
    let mut mine = Vec::with_capacity(1 << 16);
    let mut count = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let CoordResponse::Placed(p) = recv::<_, CoordResponse>(&mut conn).await? else { continue };
        let Some(t0) = sent_at.remove(&p.tag) else { continue };
        if measuring.load(Ordering::Relaxed) {
            mine.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
            count += 1;
        }
        let done = JobDone { job: p.job, ok: true, wall_ms: 100, cpu_ms: 90, bytes_out: 20_000 };
        tag += 1;
        sent_at.insert(tag, Instant::now());
        // The report and the next question go out in one write, as the agent's would.
        {
            use futures_util::SinkExt;
            let done = discomy_protocol::frame::encode(&CoordRequest::Done(done))?;
            conn.feed(bytes::Bytes::from(done)).await?;
            conn.feed(bytes::Bytes::from(discomy_protocol::frame::encode(&ask(tag))?)).await?;
            SinkExt::<bytes::Bytes>::flush(&mut conn).await?;
        }
    }
    lat.lock().await.extend(mine);
    Ok(count)
}

/// One scrape of `url`: milliseconds and bytes (none if it failed).
fn scrape(url: &str) -> Option<(f64, usize)> {
    let t = Instant::now();
    let text = ureq::get(url).call().ok()?.body_mut().read_to_string().ok()?;
    Some((t.elapsed().as_secs_f64() * 1e3, text.len()))
}

async fn drive(
    args: &Args,
    addr: SocketAddr,
    pid: u32,
    metrics: String,
) -> Result<serde_json::Value> {
    let listener = TcpListener::bind("0.0.0.0:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(fake_worker(listener));
    let stop = Arc::new(AtomicBool::new(false));
    let joined = Arc::new(AtomicU64::new(0));
    let rss_idle = rss_kb(pid);
    let t_login = Instant::now();
    let mut nodes = Vec::new();
    let logins = Arc::new(tokio::sync::Semaphore::new(128));
    for i in 0..args.nodes {
        let task = node(i, port, addr, args.slots, stop.clone(), joined.clone(), logins.clone());
        nodes.push(tokio::spawn(task));
        if i % 200 == 199 {
            tokio::task::yield_now().await;
        }
    }
    while joined.load(Ordering::Relaxed) < args.nodes as u64 {
        // A node runs until the end: one that ended already failed (refused, say).
        if let Some(i) = nodes.iter().position(|n| n.is_finished()) {
            let why = match nodes.swap_remove(i).await {
                Ok(Err(e)) => format!("{e:#}"),
                other => format!("{other:?}"),
            };
            bail!("a simulated node failed to join: {why}");
        }
        if t_login.elapsed() > Duration::from_secs(300) {
            bail!("only {} of {} nodes joined", joined.load(Ordering::Relaxed), args.nodes);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let login_s = t_login.elapsed().as_secs_f64();
    eprintln!("coord-scale: {} nodes joined in {login_s:.1} s", args.nodes);
    let measuring = Arc::new(AtomicBool::new(false));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for i in 0..args.clients {
        clients.push(tokio::spawn(client(
            i,
            addr,
            args.window,
            measuring.clone(),
            stop.clone(),
            lat.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // warm-up
    measuring.store(true, Ordering::Relaxed);
    let load_before = loadavg();
    let ticks0 = cpu_ticks();
    let cpu0 = cpu_s(pid);
    let t0 = Instant::now();
    let mut rss_peak = 0;
    let mut scrapes: Vec<f64> = Vec::new();
    let mut scrape_bytes = 0;
    while t0.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss_peak = rss_peak.max(rss_kb(pid));
        let url = metrics.clone();
        if let Ok(Some((ms, bytes))) = tokio::task::spawn_blocking(move || scrape(&url)).await {
            scrapes.push(ms);
            scrape_bytes = bytes;
        }
    }
    scrapes.sort_by(f64::total_cmp);
    let scrape_ms = |p: f64| {
        scrapes
            .get(((scrapes.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_s(pid) - cpu0;
    let load_after = loadavg();
    let ticks1 = cpu_ticks();
    let total = ticks1.1.saturating_sub(ticks0.1).max(1);
    let steal_pct = ticks1.0.saturating_sub(ticks0.0) as f64 * 100.0 / total as f64;
    stop.store(true, Ordering::Relaxed);
    let mut placed = 0;
    for c in clients {
        match tokio::time::timeout(Duration::from_secs(5), c).await {
            Ok(Ok(Ok(n))) => placed += n,
            Ok(Ok(Err(e))) => eprintln!("coord-scale: a client failed: {e:#}"),
            _ => {}
        }
    }
    for n in nodes {
        n.abort();
    }
    let mut l = lat.lock().await.clone();
    l.sort_unstable();
    let pct = |p: f64| -> f64 {
        if l.is_empty() {
            return 0.0;
        }
        let i = ((l.len() - 1) as f64 * p).round() as usize;
        f64::from(l[i]) / 1000.0
    };
    Ok(json!({
        "nodes": args.nodes,
        "slots_per_node": args.slots,
        "clients": args.clients,
        "window": args.window,
        "login_s": (login_s * 1000.0).round() / 1000.0,
        "placements": placed,
        "placements_per_s": (placed as f64 / elapsed).round(),
        "latency_ms": {"p50": pct(0.50), "p99": pct(0.99), "max": pct(1.0)},
        "coordinator_rss_mb": {"idle": rss_idle / 1024, "peak": rss_peak / 1024},
        "coordinator_cpu_s": (cpu * 100.0).round() / 100.0,
        "coordinator_cpu_us_per_placement": if placed > 0 { (cpu * 1e6 / placed as f64 * 10.0).round() / 10.0 } else { 0.0 },
        "loadavg_1m": {"before": load_before, "after": load_after},
        "cpu_steal_pct": (steal_pct * 10.0).round() / 10.0,
        "metrics_scrape": {
            "scrapes": scrapes.len(),
            "p50_ms": (scrape_ms(0.5) * 100.0).round() / 100.0,
            "max_ms": (scrape_ms(1.0) * 100.0).round() / 100.0,
            "bytes": scrape_bytes,
        },
    }))
}
