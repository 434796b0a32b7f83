//! The icemon listener: accepts monitors, does icecream's version handshake, takes their
//! `MON_LOGIN`, then feeds each one the farm ([`Feed`]): a snapshot at once, then the farm's
//! events as they happen and a re-read of the farm's status every [`POLL`] (loads, speeds,
//! cancelled units, and recovery when this monitor lagged behind the event stream).
//!
//! The peer is untrusted: the handshake and login must finish within [`HANDSHAKE_TIMEOUT`],
//! the login frame is at most [`MAX_LOGIN_FRAME`] bytes, what a monitor sends after it is read
//! and dropped up to [`MAX_INBOUND`] bytes, at most [`MAX_MONITORS`] are served at once, and a
//! monitor that does not take its feed within [`WRITE_TIMEOUT`] is dropped (icecream's
//! scheduler drops a monitor whose socket would block).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::feed::Feed;
use super::wire::{self, Message, PROTOCOL_VERSION, WireError};
use crate::server::FarmHandle;

/// Most monitors served at once; more are closed at accept.
pub const MAX_MONITORS: usize = 64;
/// Time for the version handshake and `MON_LOGIN` (icecream waits 15 s for the handshake).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest first frame accepted (`MON_LOGIN` has 4 bytes: its type).
pub const MAX_LOGIN_FRAME: usize = 64;
/// Bytes a logged-in monitor may send (icemon sends none) before it is closed.
pub const MAX_INBOUND: usize = 64 * 1024;
/// Time for a monitor to take one batch of the feed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the farm's status is re-read for each monitor.
pub const POLL: Duration = Duration::from_secs(2);

/// Why a monitor connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// Socket trouble.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Bytes that are not icecream's protocol.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The handshake or login took too long.
    #[error("handshake timed out")]
    Timeout,
    /// The first message was not `MON_LOGIN` (icecream daemons are not served here).
    #[error("first message is not MON_LOGIN")]
    NotMonitor,
}

/// Serves icemon on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    farm: FarmHandle,
    shutdown: CancellationToken,
) -> io::Result<()> {
    info!(addr = %listener.local_addr()?, "icemon listener (icecream monitor protocol)");
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_MONITORS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    warn!(%peer, "too many icemon monitors; closing");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let farm = farm.clone();
                let shutdown = shutdown.clone();
                tracker.spawn(async move {
                    match monitor(stream, farm, shutdown).await {
                        Ok(()) => debug!(%peer, "icemon monitor left"),
                        Err(err) => debug!(%peer, %err, "icemon monitor dropped"),
                    }
                    drop(permit);
                });
            }
            Err(err) => {
                warn!(%err, "icemon listener: failed to accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    Ok(())
}

/// Binds `addr` for [`serve`], warning when it is not loopback: the feed has no
/// authentication (icecream has none), so anyone who reaches it sees the farm's hosts and jobs.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        warn!(%addr, "the icemon feed is unauthenticated: firewall it to trusted monitors");
    }
    TcpListener::bind(addr).await
}

/// The scheduler's side of icecream's handshake (see [`wire`]), then the monitor's login.
/// Returns the agreed protocol version.
pub async fn accept_monitor<S>(stream: &mut S) -> Result<u32, MonitorError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&PROTOCOL_VERSION.to_le_bytes()).await?;
    let mut word = [0; 4];
    stream.read_exact(&mut word).await?;
    let agreed = wire::negotiate(word)?;
    stream.write_all(&agreed.to_le_bytes()).await?;
    stream.flush().await?;
    stream.read_exact(&mut word).await?;
    wire::confirm(agreed, word)?;
    stream.read_exact(&mut word).await?;
    let len = wire::frame_len(word)?;
    if len > MAX_LOGIN_FRAME {
        return Err(WireError::FrameLength(u32::try_from(len).unwrap_or(u32::MAX)).into());
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await?;
    match wire::decode(&body, agreed) {
        Ok(Message::MonLogin) => Ok(agreed),
        Ok(_) | Err(WireError::Type(_)) => Err(MonitorError::NotMonitor),
        Err(err) => Err(err.into()),
    }
}

fn unix_now() -> u32 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}

async fn send_batch<W>(out: &mut W, batch: &[Message], version: u32) -> Result<(), MonitorError>
where
    W: AsyncWrite + Unpin,
{
    if batch.is_empty() {
        return Ok(());
    }
    let bytes: Vec<u8> = batch.iter().flat_map(|m| wire::encode(m, version)).collect();
    match tokio::time::timeout(WRITE_TIMEOUT, out.write_all(&bytes)).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "monitor too slow").into()),
    }
}

/// One monitor, from its handshake to its end (or `shutdown`).
async fn monitor(
    mut stream: TcpStream,
    farm: FarmHandle,
    shutdown: CancellationToken,
) -> Result<(), MonitorError> {
    let version = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_monitor(&mut stream)).await {
        Ok(v) => v?,
        Err(_) => return Err(MonitorError::Timeout),
    };
    debug!(version, "icemon monitor logged in");
    // Events from before the snapshot are in it; ones after are applied to it.
    let mut events = farm.subscribe();
    let started = Instant::now();
    let now_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut feed = Feed::new(std::env::consts::ARCH);
    let (mut rd, mut wr) = stream.split();
    send_batch(&mut wr, &feed.sync(&farm.status(), now_ms()), version).await?;
    let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + POLL, POLL);
    let mut inbound = 0usize;
    let mut scratch = [0u8; 4096];
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            event = events.recv() => match event {
                Ok(event) => feed.event(&event, now_ms(), unix_now()),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    debug!(missed, "icemon monitor lagged; re-reading the farm");
                    feed.sync(&farm.status(), now_ms())
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = poll.tick() => feed.sync(&farm.status(), now_ms()),
            read = rd.read(&mut scratch) => match read? {
                0 => return Ok(()),
                n => {
                    inbound += n;
                    if inbound > MAX_INBOUND {
                        return Err(io::Error::other("monitor sends too much").into());
                    }
                    continue;
                }
            },
        };
        send_batch(&mut wr, &batch, version).await?;
    }
}
