//! The build queue's HTTP listener under the working fleet's TLS: with a fleet, the API, the
//! web UI and builders' uploads are served over HTTPS only (TLS 1.3, a certificate of the farm
//! CA for role coordinator that also names the host names and addresses clients dial).
//!
//! [`TlsListener`] is an [`axum::serve::Listener`]: a task accepts TCP connections and runs each
//! TLS handshake on a task of its own (bounded in number and time, so a slow or silent client
//! holds up nobody), and `accept` hands axum the finished streams. This keeps axum's own server
//! (graceful shutdown, connect info) and adds no crate: tokio-rustls is already the farm
//! listener's (`Transport::accept`). A client speaking plain HTTP to it gets a plain `400`
//! saying to use `https://`, never a page.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use discomy_protocol::tls::{FarmStream, FarmTls, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes under way at once; connections beyond are closed.
pub const MAX_HANDSHAKES: usize = 256;

/// What a plain-HTTP client on the HTTPS listener is told.
const PLAIN_REFUSAL: &str = "this port speaks HTTPS only (the coordinator runs a working \
                             fleet): use https:// and trust the farm CA (--fleet-dir or --ca)\n";

/// Accepted TLS connections, for `axum::serve`.
#[derive(Debug)]
pub struct TlsListener {
    rx: mpsc::Receiver<(FarmStream, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Serves `tls` on `tcp` until `shutdown`: the accepting task starts now.
    pub fn new(
        tcp: TcpListener,
        tls: Arc<FarmTls>,
        shutdown: CancellationToken,
    ) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, Transport::Tls(tls), tx, shutdown));
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = FarmStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (FarmStream, SocketAddr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            // The accepting task ended (shutdown): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    tcp: TcpListener,
    transport: Transport,
    tx: mpsc::Sender<(FarmStream, SocketAddr)>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = tcp.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(err) => {
                warn!(%err, "API: failed to accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            warn!(%peer, "API: too many TLS handshakes at once; closing");
            continue;
        };
        let (transport, tx) = (transport.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream, &transport)).await {
                Ok(Ok(Some(stream))) => {
                    let _ = tx.send((stream, peer)).await;
                }
                Ok(Ok(None)) => debug!(%peer, "API: plain HTTP on the HTTPS listener, refused"),
                Ok(Err(err)) => debug!(%peer, %err, "API: TLS handshake failed"),
                Err(_) => debug!(%peer, "API: TLS handshake timed out"),
            }
        });
    }
}

/// The TLS handshake; `None` for a plain-HTTP client, which has been told to use HTTPS.
async fn handshake(mut tcp: TcpStream, transport: &Transport) -> io::Result<Option<FarmStream>> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    // A TLS record starts with its content type (22, a handshake); an HTTP request with its
    // method in capitals.
    if !first[0].is_ascii_uppercase() {
        return transport.accept(tcp).await.map(Some);
    }
    // Read the request's head first, so the client reads the answer rather than a reset.
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while head.len() < 16 << 10 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{PLAIN_REFUSAL}",
        PLAIN_REFUSAL.len()
    );
    tcp.write_all(answer.as_bytes()).await?;
    let _ = tcp.shutdown().await;
    Ok(None)
}
