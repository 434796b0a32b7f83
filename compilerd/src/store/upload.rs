//! Moving toolchains between nodes: serving `PutBlob`/`InstallToolchain` from a store, and
//! pushing a toolchain from our store to a peer that answered `NeedToolchain`; pushing
//! source-mode files to a peer that answered `MissingBlobs`.

use discomy_protocol::asyncio::{Conn, recv, send};
use discomy_protocol::{Digest, Payload, RefusalKind, Request, Response, ToolchainManifest};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::store::sources::SourceStore;
use crate::store::tools::{InstallStep, ToolStore};

/// Answers a store request (`PutBlob` or `InstallToolchain`); `None` for other requests.
pub async fn serve(store: &ToolStore, request: &Request) -> Option<Response> {
    match request {
        Request::PutBlob(payload) => Some(match store.put_blob(payload) {
            Ok(digest) => {
                tracing::info!(blob = %digest, bytes = payload.raw_len, "blob received");
                Response::Stored(digest)
            }
            Err(err) => Response::refused(RefusalKind::BadRequest, err.to_string()),
        }),
        Request::InstallToolchain(manifest) => Some(match store.install(manifest).await {
            Ok(InstallStep::Ready) => Response::Installed(manifest.digest()),
            Ok(InstallStep::Missing(blobs)) => Response::MissingBlobs(blobs),
            Err(err) => Response::refused(RefusalKind::BadRequest, err.to_string()),
        }),
        _ => None,
    }
}

/// Why a toolchain or source files could not be pushed to a peer.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The connection failed.
    #[error("{0}")]
    Protocol(#[from] discomy_protocol::ProtocolError),
    /// Something to send is not in our store (evicted meanwhile).
    #[error("{0} is not in our store")]
    NotStored(String),
    /// Reading it failed.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The peer answered something else than the next step.
    #[error("{0}")]
    Peer(String),
}

/// Pushes `manifest` (whose blobs are in `store`) to the peer on `conn` until it is installed.
pub async fn push<S>(
    conn: &mut Conn<S>,
    store: &ToolStore,
    manifest: &ToolchainManifest,
) -> Result<(), UploadError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let digest = manifest.digest();
    let started = std::time::Instant::now();
    for _ in 0..3 {
        send(conn, &Request::InstallToolchain(manifest.clone())).await?;
        match recv::<_, Response>(conn).await? {
            Response::Installed(d) if d == digest => {
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                store.note_pushed(&digest, ms);
                return Ok(());
            }
            Response::MissingBlobs(blobs) => {
                for blob in blobs {
                    let path = store
                        .blob(&blob)
                        .ok_or_else(|| UploadError::NotStored(format!("blob {blob}")))?;
                    let raw = tokio::fs::read(&path).await.map_err(|source| UploadError::Read {
                        path: path.display().to_string(),
                        source,
                    })?;
                    let payload = tokio::task::spawn_blocking(move || Payload::compress(&raw))
                        .await
                        .map_err(|e| UploadError::Peer(format!("compression failed: {e}")))?;
                    send(conn, &Request::PutBlob(payload)).await?;
                    match recv::<_, Response>(conn).await? {
                        Response::Stored(d) if d == blob => {}
                        other => {
                            return Err(UploadError::Peer(format!(
                                "peer did not store blob {blob}: {other:?}"
                            )));
                        }
                    }
                }
            }
            other => {
                return Err(UploadError::Peer(format!(
                    "peer refused toolchain {digest}: {other:?}"
                )));
            }
        }
    }
    Err(UploadError::Peer(format!(
        "toolchain {digest} still not installed after sending its blobs"
    )))
}

/// Sends the source-mode files `blobs` (which are in `store`) to the peer on `conn`.
pub async fn push_sources<S>(
    conn: &mut Conn<S>,
    store: &SourceStore,
    blobs: &[Digest],
) -> Result<(), UploadError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for blob in blobs {
        let path =
            store.path(blob).ok_or_else(|| UploadError::NotStored(format!("source {blob}")))?;
        let raw = tokio::fs::read(&path)
            .await
            .map_err(|source| UploadError::Read { path: path.display().to_string(), source })?;
        send(conn, &Request::PutSource(Payload::compress(&raw))).await?;
        match recv::<_, Response>(conn).await? {
            Response::Stored(d) if d == *blob => {}
            other => {
                return Err(UploadError::Peer(format!(
                    "peer did not store source {blob}: {other:?}"
                )));
            }
        }
    }
    Ok(())
}
