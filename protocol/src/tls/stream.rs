//! One stream type for every farm link, plain or TLS, so the frames, the handshake and the
//! pools above it are written once: [`FarmStream`], and [`Transport`], the one place a daemon
//! dials or accepts through.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{CertInfo, FarmTls, pki};
use crate::fleet::FleetRole;
use crate::{PeerKind, handshake};

/// A farm connection: plain TCP (lab farms, loopback) or TLS 1.3.
#[derive(Debug)]
pub enum FarmStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, accepted.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS, dialled.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl FarmStream {
    /// What the peer's verified certificate says; `None` on plain TCP or for a peer that showed
    /// none (a joiner).
    pub fn peer_cert(&self) -> Option<CertInfo> {
        let certs = match self {
            FarmStream::Plain(_) => None,
            FarmStream::Server(s) => s.get_ref().1.peer_certificates(),
            FarmStream::Client(s) => s.get_ref().1.peer_certificates(),
        }?;
        pki::read_der(certs.first()?).ok()
    }

    /// Whether the stream is TLS.
    pub fn is_tls(&self) -> bool {
        !matches!(self, FarmStream::Plain(_))
    }

    /// The TCP stream under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            FarmStream::Plain(s) => s,
            FarmStream::Server(s) => s.get_ref().0,
            FarmStream::Client(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for FarmStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            FarmStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            FarmStream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            FarmStream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for FarmStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            FarmStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            FarmStream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            FarmStream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            FarmStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            FarmStream::Server(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            FarmStream::Client(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            FarmStream::Plain(s) => s.is_write_vectored(),
            FarmStream::Server(s) => s.is_write_vectored(),
            FarmStream::Client(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            FarmStream::Plain(s) => Pin::new(s).poll_flush(cx),
            FarmStream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            FarmStream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            FarmStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            FarmStream::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            FarmStream::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How a daemon's TCP links are carried: plain (a lab farm with a token, or none on loopback)
/// or the farm's mutual TLS.
#[derive(Debug, Clone, Default)]
pub enum Transport {
    /// Plain TCP; the token handshake is the only check.
    #[default]
    Plain,
    /// TLS 1.3 with farm certificates.
    Tls(Arc<FarmTls>),
}

fn tls_io(err: super::TlsError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, err)
}

impl Transport {
    /// Whether links are TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The TLS identity, if any.
    pub fn tls(&self) -> Option<&Arc<FarmTls>> {
        match self {
            Transport::Plain => None,
            Transport::Tls(t) => Some(t),
        }
    }

    /// Dials `addr`, a server of `role`: under TLS its certificate must chain to the farm CA,
    /// name `role` and not be revoked.
    pub async fn connect(&self, addr: &str, role: FleetRole) -> io::Result<FarmStream> {
        let tcp = TcpStream::connect(addr).await?;
        self.over(tcp, role).await
    }

    /// As [`Transport::connect`], over a TCP stream already open.
    pub async fn over(&self, tcp: TcpStream, role: FleetRole) -> io::Result<FarmStream> {
        let _ = tcp.set_nodelay(true);
        match self {
            Transport::Plain => Ok(FarmStream::Plain(tcp)),
            Transport::Tls(tls) => {
                let name = ServerName::try_from(pki::server_name(role))
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let stream = TlsConnector::from(tls.client.clone()).connect(name, tcp).await?;
                Ok(FarmStream::Client(Box::new(stream)))
            }
        }
    }

    /// Accepts a TCP connection: under TLS, the handshake (a client certificate, when shown,
    /// must chain to the farm CA and not be revoked).
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<FarmStream> {
        let _ = tcp.set_nodelay(true);
        match self {
            Transport::Plain => Ok(FarmStream::Plain(tcp)),
            Transport::Tls(tls) => {
                let config = tls.server.clone().ok_or_else(|| {
                    tls_io(super::TlsError::Pki("a joining host serves nothing".into()))
                })?;
                // A plain discomy client opens with its preamble: answer it in clear with a
                // status it can explain, instead of a TLS alert it cannot read.
                let mut head = [0u8; 4];
                let mut tcp = tcp;
                if tcp.peek(&mut head).await? == head.len() && head == handshake::MAGIC {
                    use tokio::io::AsyncWriteExt;
                    let _ =
                        tcp.write_all(&handshake::preamble(handshake::STATUS_TLS_REQUIRED)).await;
                    let _ = tcp.shutdown().await;
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "a plain-TCP discomy client on a mutual-TLS listener",
                    ));
                }
                let stream = TlsAcceptor::from(config).accept(tcp).await?;
                Ok(FarmStream::Server(Box::new(stream)))
            }
        }
    }

    /// What the token handshake should make of a peer at `peer` on this transport.
    pub fn peer_kind(&self, peer: SocketAddr) -> PeerKind {
        match self {
            Transport::Tls(_) => PeerKind::Tls,
            Transport::Plain if peer.ip().is_loopback() => PeerKind::Loopback,
            Transport::Plain => PeerKind::Remote,
        }
    }
}
