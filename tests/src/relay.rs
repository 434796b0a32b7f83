//! A man in the middle on a worker's connections: a listener that relays every connection to a
//! worker and lets a test edit each answer on its way back (a donor that tampers with objects,
//! one that lies about its compile times). Both sides shake hands without a token (loopback).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use discomy_protocol::asyncio::{client_handshake, recv, send, server_handshake};
use discomy_protocol::{AuthConfig, PeerKind, Request, Response};

/// What a relay does to an answer before passing it on: edits it in place, and returns how long
/// to hold it first.
pub type Edit = dyn Fn(&mut Response) -> Option<Duration> + Send + Sync;

/// A relay on `127.0.0.1:<port>`, serving from its own thread until the test ends.
pub struct Relay {
    /// Where agents connect.
    pub addr: SocketAddr,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
}

impl Relay {
    /// Starts a relay to `upstream` (or, with `None`, to whatever [`Relay::forward_to`] names
    /// later: connections wait for it) that passes answers through `edit`.
    pub fn start(upstream: Option<SocketAddr>, edit: Arc<Edit>) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a relay");
        listener.set_nonblocking(true).expect("nonblocking relay listener");
        let addr = listener.local_addr().expect("relay address");
        let upstream = Arc::new(Mutex::new(upstream));
        let up = upstream.clone();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                while let Ok((stream, _)) = listener.accept().await {
                    let (up, edit) = (up.clone(), edit.clone());
                    tokio::spawn(async move {
                        loop {
                            let to = up.lock().ok().and_then(|u| *u);
                            if let Some(to) = to {
                                return relay(stream, to, edit).await;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    });
                }
            });
        });
        Relay { addr, upstream }
    }

    /// Relays from now on to `worker`.
    pub fn forward_to(&self, worker: SocketAddr) {
        if let Ok(mut up) = self.upstream.lock() {
            *up = Some(worker);
        }
    }
}

async fn relay(client: tokio::net::TcpStream, upstream: SocketAddr, edit: Arc<Edit>) -> Option<()> {
    let none = AuthConfig::none();
    let mut down = server_handshake(client, &none, PeerKind::Loopback).await.ok()?;
    let up = tokio::net::TcpStream::connect(upstream).await.ok()?;
    let mut up = client_handshake(up, &none).await.ok()?;
    loop {
        let request: Request = recv(&mut down).await.ok()?;
        send(&mut up, &request).await.ok()?;
        let mut response: Response = recv(&mut up).await.ok()?;
        if let Some(hold) = edit(&mut response) {
            tokio::time::sleep(hold).await;
        }
        send(&mut down, &response).await.ok()?;
    }
}
