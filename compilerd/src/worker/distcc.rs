//! The worker's distcc listener: real distcc 3.x clients (`DISTCC_HOSTS=host:3632[,lzo]`) compile
//! on a discomy worker, with the worker's slots, argument allow-list and sandbox.
//!
//! One job per connection (distcc's protocol). The compiler a client names (`gcc`, `cc`,
//! `x86_64-linux-gnu-gcc-12`, …) is mapped to the toolchain this worker seeded from its own PATH
//! under that name; anything else is refused. Every refusal is an explicit reply — `DONE`, a
//! non-zero `STAT` with distcc's error codes, an `SERR` line saying why, `DOTO` of length 0 —
//! so the client prints the reason and compiles locally, instead of "server provided no answer".
//! Pump mode (protocol 3) is refused the same way, in its own version.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use discomy_protocol::Digest;
use discomy_protocol::distcc::asyncio::{read_argv, read_source, read_version};
use discomy_protocol::distcc::{DistccError, Limits, Reply, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::distcc::args::{DistccArgs, parse_distcc_argv};
use crate::distcc::cidr::Cidr;
use crate::worker::State;
use crate::worker::argcheck::check_compile_args;
use crate::worker::exec::run_compiler;
use crate::worker::unit::{self, Slot};

/// distcc's exit codes, as the real client reports them.
mod code {
    pub const BAD_ARGS: u8 = 101;
    pub const IO: u8 = 107;
    pub const PROTOCOL: u8 = 109;
    pub const COMPILER_MISSING: u8 = 110;
    pub const ACCESS_DENIED: u8 = 113;
    pub const BUSY: u8 = 114;
    pub const TIMEOUT: u8 = 118;
}

/// Time allowed for the request's header (`DIST` … `ARGV`).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for the preprocessed source, which the client sends once its cpp is done.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(300);
/// Settings of the distcc listener.
#[derive(Debug, Clone)]
pub struct DistccConfig {
    /// Client networks allowed to compile (default: loopback only).
    pub allow: Vec<Cidr>,
    /// Compiler names a client may ask for, and their toolchains.
    pub compilers: BTreeMap<String, Digest>,
    /// Size caps while decoding requests.
    pub limits: Limits,
}

/// Accepts distcc clients until `shutdown`.
pub(crate) async fn run(
    listener: TcpListener,
    config: DistccConfig,
    state: Arc<State>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let allow: Vec<String> = config.allow.iter().map(ToString::to_string).collect();
    info!(%addr, allow = %allow.join(","), compilers = config.compilers.len(), "distcc listener ready");
    let config = Arc::new(config);
    super::accept_each(&listener, "distcc", &shutdown, &tracker, |stream, peer, ticket| {
        let (config, state, shutdown) = (config.clone(), state.clone(), shutdown.clone());
        async move {
            // Idle (closed when room is needed) until the client's first byte.
            tokio::select! {
                _ = ticket.evicted() => return,
                r = stream.readable() => if r.is_err() { return },
            }
            let _busy = ticket.busy();
            serve(stream, peer, &config, &state, &shutdown).await
        }
    })
    .await;
}

/// What a finished job was, for the per-job log line (distccd's vocabulary).
enum Outcome {
    Compiled(Reply),
    Refused(&'static str, Reply),
}

async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    config: &DistccConfig,
    state: &State,
    shutdown: &CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    let version = match tokio::time::timeout(HEADER_TIMEOUT, read_version(&mut stream)).await {
        Ok(Ok(v)) => v,
        Ok(Err(DistccError::Version(3))) => {
            state.count_distcc("REJ_PUMP");
            return refuse_pump(stream, peer, config).await;
        }
        Ok(Err(DistccError::Io(err))) => {
            // A bare connect (`lsdistcc` without a compiler) or a client that gave up.
            debug!(client = %peer, %err, "distcc: connection closed before a request");
            return;
        }
        Ok(Err(err)) => {
            let reply = Reply::refusal(code::PROTOCOL, &format!("malformed request: {err}"));
            state.count_distcc("REJ_BAD_REQ");
            return answer_and_close(stream, peer, Version::Plain, "REJ_BAD_REQ", reply).await;
        }
        Err(_) => return,
    };
    if !config.allow.iter().any(|c| c.contains(peer.ip())) {
        // Answer at once and discard the rest unread: nothing from this peer is buffered.
        let why =
            format!("access denied: client {} is not in this server's --allow list", peer.ip());
        let reply = Reply::refusal(code::ACCESS_DENIED, &why);
        state.count_distcc("REJ_ACCESS");
        return answer_and_close(stream, peer, version, "REJ_ACCESS", reply).await;
    }
    let (outcome, source) = match read_job(&mut stream, version, config).await {
        Err(reply) => (Outcome::Refused("REJ_BAD_REQ", reply), String::new()),
        Ok((argv, unit)) => {
            let source = parse_distcc_argv(&argv).map(|j| j.source).unwrap_or_default();
            (compile(&argv, &unit, config, state, shutdown).await, source)
        }
    };
    let (result, reply) = match outcome {
        Outcome::Compiled(reply) if reply.status == 0 => ("COMPILE_OK", reply),
        Outcome::Compiled(reply) => ("COMPILE_ERROR", reply),
        Outcome::Refused(what, reply) => (what, reply),
    };
    state.count_distcc(result);
    info!(client = %peer, result, exit = reply.exit_code(), ms = started.elapsed().as_millis() as u64, %source, "distcc job");
    answer_bytes(&mut stream, &reply.encode(version)).await;
}

/// Reads the rest of a request; a refusal reply when it is malformed or too large.
async fn read_job(
    stream: &mut TcpStream,
    version: Version,
    config: &DistccConfig,
) -> Result<(Vec<String>, Vec<u8>), Reply> {
    let bad = |e: DistccError| Reply::refusal(code::PROTOCOL, &format!("malformed request: {e}"));
    let argv = match tokio::time::timeout(HEADER_TIMEOUT, read_argv(stream, &config.limits)).await {
        Ok(r) => r.map_err(bad)?,
        Err(_) => return Err(Reply::refusal(code::TIMEOUT, "timed out reading the request")),
    };
    match tokio::time::timeout(SOURCE_TIMEOUT, read_source(stream, version, &config.limits)).await {
        Ok(r) => Ok((argv, r.map_err(bad)?)),
        Err(_) => Err(Reply::refusal(code::TIMEOUT, "timed out reading the source")),
    }
}

/// Checks and compiles one job; every failure that is not the compiler's own is a refusal.
async fn compile(
    argv: &[String],
    unit: &[u8],
    config: &DistccConfig,
    state: &State,
    shutdown: &CancellationToken,
) -> Outcome {
    let refuse =
        |code: u8, why: String| Outcome::Refused("REJ_BAD_REQ", Reply::refusal(code, &why));
    let job = match parse_distcc_argv(argv) {
        Ok(job) => job,
        Err(why) => return refuse(code::BAD_ARGS, why.to_string()),
    };
    let Some(digest) = config.compilers.get(&job.compiler) else {
        return refuse(
            code::COMPILER_MISSING,
            format!("compiler `{}` is not one of this server's compilers", job.compiler),
        );
    };
    let Some(tree) = state.store.lease(digest) else {
        return refuse(code::COMPILER_MISSING, format!("toolchain for `{}` is gone", job.compiler));
    };
    if let Err(why) = check_compile_args(&job.args, &tree.manifest) {
        return refuse(code::BAD_ARGS, why.to_string());
    }
    let Some(slot) = Slot::take(state, shutdown).await else {
        return refuse(code::BUSY, "server is shutting down".into());
    };
    match run_job(&job, unit, &tree.root, &tree.manifest, state, &slot).await {
        Ok(reply) => Outcome::Compiled(reply),
        Err((code, why)) => refuse(code, why),
    }
}

async fn run_job(
    job: &DistccArgs,
    unit: &[u8],
    root: &Path,
    manifest: &discomy_protocol::ToolchainManifest,
    state: &State,
    slot: &Slot<'_>,
) -> Result<Reply, (u8, String)> {
    let internal = |e: std::io::Error| (code::IO, format!("unit directory: {e}"));
    let dir = unit::unit_dir(&state.config.work_dir).map_err(internal)?;
    tokio::fs::write(dir.path().join(job.input_name()), unit).await.map_err(internal)?;
    let args = job.compile_args();
    let run = run_compiler(
        &state.config.runner,
        root,
        manifest,
        &args,
        None,
        dir.path(),
        slot.uid(),
        None,
    )
    .await
    .map_err(|e| (code::COMPILER_MISSING, e.to_string()))?;
    let status = if unit::killed(run.exit_code) {
        (run.exit_code - 128) as u32 & 0x7f
    } else {
        (run.exit_code as u32 & 0xff) << 8
    };
    let object = if status == 0 {
        let bytes = unit::read_output(dir.path().join(job.output_name()))
            .await
            .map_err(|e| (code::IO, format!("compiler wrote no output: {e}")))?;
        unit::check_output(job.output_kind(), &bytes)
            .map_err(|what| (code::IO, format!("the compiler's output is {what}")))?;
        bytes
    } else {
        Vec::new()
    };
    unit::remove_later(dir);
    Ok(Reply { status, stderr: run.stderr, stdout: run.stdout, object })
}

/// Answers a request refused before its argv was read.
async fn answer_and_close(
    mut stream: TcpStream,
    peer: SocketAddr,
    version: Version,
    result: &str,
    reply: Reply,
) {
    info!(client = %peer, result, why = %String::from_utf8_lossy(&reply.stderr).trim(), "distcc job refused");
    answer_bytes(&mut stream, &reply.encode(version)).await;
}

/// Writes an answer and closes, reading what the client still sends for a moment (up to 2 s),
/// so the close does not reset the connection before the client has read the answer.
async fn answer_bytes(stream: &mut TcpStream, bytes: &[u8]) {
    if let Err(err) = stream.write_all(bytes).await {
        debug!(%err, "distcc: failed to answer");
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut total = 0usize;
    while total < (64 << 20) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
        match tokio::time::timeout(left, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}

/// Pump mode is not supported: read its file list just enough to answer in protocol 3.
async fn refuse_pump(mut stream: TcpStream, peer: SocketAddr, config: &DistccConfig) {
    let why = if config.allow.iter().any(|c| c.contains(peer.ip())) {
        "pump mode (protocol 3, ',cpp') is not supported by discomy; use ',lzo' without ',cpp'"
    } else {
        "access denied: client is not in this server's --allow list"
    };
    info!(client = %peer, result = "REJ_BAD_REQ", why, "distcc job refused");
    let mut bytes = Reply::refusal(code::PROTOCOL, why).encode(Version::Lzo);
    // Same layout as protocol 2 for a failed job; only the DONE version differs.
    bytes.splice(4..12, *b"00000003");
    answer_bytes(&mut stream, &bytes).await;
}
