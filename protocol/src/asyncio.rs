//! Async framing and handshake over tokio streams, for compilerd and the coordinator.
//!
//! The codec is [`LengthDelimitedCodec`] with a 4-byte big-endian length and
//! [`MAX_FRAME_LEN`] enforced on both encode and decode: the same bytes as [`crate::frame`].

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::ProtocolError;
use crate::frame::{MAX_FRAME_LEN, decode, encode};
use crate::handshake::{
    AuthConfig, AuthOutcome, ClientAuth, PREAMBLE_LEN, PeerKind, STATUS_OK,
    STATUS_VERSION_MISMATCH, ServerHello, check_preamble, preamble, random_nonce, verify_outcome,
};

/// A connection after the handshake.
pub type Conn<S> = Framed<S, LengthDelimitedCodec>;

/// Largest frame a server reads before the handshake admitted its peer (the client's proof is
/// under 200 bytes).
pub const MAX_PRE_AUTH_FRAME_LEN: usize = 4096;

/// The frame codec: 4-byte big-endian length, [`MAX_FRAME_LEN`] both ways.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(MAX_FRAME_LEN)
        .new_codec()
}

fn map_codec_err(err: std::io::Error) -> ProtocolError {
    // LengthDelimitedCodec reports an oversized frame as InvalidData wrapping its own error.
    if err.kind() == std::io::ErrorKind::InvalidData {
        ProtocolError::FrameTooLarge { len: MAX_FRAME_LEN + 1, max: MAX_FRAME_LEN }
    } else if err.kind() == std::io::ErrorKind::UnexpectedEof {
        ProtocolError::Malformed("stream ended inside a frame".into())
    } else {
        ProtocolError::Io(err)
    }
}

/// Sends one message; returns the length of its frame's body (for byte counts).
pub async fn send<S, T>(conn: &mut Conn<S>, msg: &T) -> Result<usize, ProtocolError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Serialize,
{
    let body = encode(msg)?;
    let len = body.len();
    conn.send(Bytes::from(body)).await.map_err(map_codec_err)?;
    Ok(len)
}

/// Receives one message; a clean close is [`ProtocolError::Closed`].
pub async fn recv<S, T>(conn: &mut Conn<S>) -> Result<T, ProtocolError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: DeserializeOwned,
{
    recv_sized(conn).await.map(|(msg, _)| msg)
}

/// Receives one message and the length of its frame's body (for byte counts).
pub async fn recv_sized<S, T>(conn: &mut Conn<S>) -> Result<(T, usize), ProtocolError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: DeserializeOwned,
{
    match conn.next().await {
        None => Err(ProtocolError::Closed),
        Some(Err(e)) => Err(map_codec_err(e)),
        Some(Ok(body)) => Ok((decode(&body)?, body.len())),
    }
}

/// A message that can be had without waiting: a complete frame already read (or readable
/// without blocking). `None`: nothing ready now.
pub fn recv_ready<S, T>(conn: &mut Conn<S>) -> Option<Result<T, ProtocolError>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: DeserializeOwned,
{
    recv(conn).now_or_never()
}

/// Sends several messages with one flush.
pub async fn send_all<S, T>(conn: &mut Conn<S>, msgs: &[T]) -> Result<(), ProtocolError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: Serialize,
{
    for msg in msgs {
        conn.feed(Bytes::from(encode(msg)?)).await.map_err(map_codec_err)?;
    }
    SinkExt::<Bytes>::flush(conn).await.map_err(map_codec_err)
}

/// Server side of the handshake. On any refusal the peer has been told why (where it speaks
/// our protocol) and the error says why for our logs.
pub async fn server_handshake<S>(
    mut stream: S,
    auth: &AuthConfig,
    peer: PeerKind,
) -> Result<Conn<S>, ProtocolError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut theirs = [0u8; PREAMBLE_LEN];
    read_exact_or_closed(&mut stream, &mut theirs).await?;
    if let Err(err) = check_preamble(&theirs) {
        let status = match err {
            ProtocolError::VersionMismatch { .. } => STATUS_VERSION_MISMATCH,
            _ => 2,
        };
        // Best effort: a peer that speaks our preamble learns our version.
        let _ = stream.write_all(&preamble(status)).await;
        let _ = stream.shutdown().await;
        return Err(err);
    }
    stream.write_all(&preamble(STATUS_OK)).await?;
    // Before the peer has proved anything it may send one small frame, not MAX_FRAME_LEN.
    let mut small = codec();
    small.set_max_frame_length(MAX_PRE_AUTH_FRAME_LEN);
    let mut conn = Framed::new(stream, small);
    let challenge = random_nonce();
    send(&mut conn, &ServerHello { challenge, token_required: auth.has_token() }).await?;
    let client: ClientAuth = recv(&mut conn).await?;
    match auth.admit(peer, &challenge, &client) {
        Ok(()) => {
            let proof = auth.server_proof(&client.nonce, &challenge);
            send(&mut conn, &AuthOutcome::Accepted { proof }).await?;
            conn.codec_mut().set_max_frame_length(MAX_FRAME_LEN);
            Ok(conn)
        }
        Err(refused) => {
            let reason = refused.to_string();
            let _ = send(&mut conn, &AuthOutcome::Refused { reason: reason.clone() }).await;
            Err(ProtocolError::Auth(reason))
        }
    }
}

/// Client side of the handshake.
pub async fn client_handshake<S>(mut stream: S, auth: &AuthConfig) -> Result<Conn<S>, ProtocolError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&preamble(STATUS_OK)).await?;
    let mut reply = [0u8; PREAMBLE_LEN];
    read_exact_or_closed(&mut stream, &mut reply).await?;
    if check_preamble(&reply)? == crate::handshake::STATUS_TLS_REQUIRED {
        return Err(ProtocolError::Auth(crate::handshake::TLS_REQUIRED.into()));
    }
    let mut conn = Framed::new(stream, codec());
    let hello: ServerHello = recv(&mut conn).await?;
    let nonce = random_nonce();
    let proof = auth.client_proof(&hello.challenge, &nonce);
    send(&mut conn, &ClientAuth { nonce, proof }).await?;
    let outcome: AuthOutcome = recv(&mut conn).await?;
    verify_outcome(auth, outcome, &nonce, &hello.challenge)?;
    Ok(conn)
}

async fn read_exact_or_closed<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<(), ProtocolError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(if filled == 0 {
                ProtocolError::Closed
            } else {
                ProtocolError::Malformed("stream ended inside the preamble".into())
            });
        }
        filled += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, Response};

    #[tokio::test]
    async fn handshake_and_exchange_over_duplex() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut conn =
                server_handshake(b, &AuthConfig::with_token("t"), PeerKind::Remote).await.unwrap();
            let req: Request = recv(&mut conn).await.unwrap();
            assert!(matches!(req, Request::Ping));
            send(&mut conn, &Response::Pong).await.unwrap();
        });
        let mut conn = client_handshake(a, &AuthConfig::with_token("t")).await.unwrap();
        send(&mut conn, &Request::Ping).await.unwrap();
        let resp: Response = recv(&mut conn).await.unwrap();
        assert!(matches!(resp, Response::Pong));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn wrong_token_is_refused_with_reason() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            server_handshake(b, &AuthConfig::with_token("right"), PeerKind::Remote).await
        });
        let err = client_handshake(a, &AuthConfig::with_token("wrong")).await.unwrap_err();
        assert!(err.to_string().contains("wrong farm token"), "{err}");
        assert!(server.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn version_mismatch_is_reported_to_both_sides() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let server =
            tokio::spawn(
                async move { server_handshake(b, &AuthConfig::none(), PeerKind::Unix).await },
            );
        let mut old = preamble(STATUS_OK);
        old[4..6].copy_from_slice(&999u16.to_be_bytes());
        a.write_all(&old).await.unwrap();
        let mut reply = [0u8; PREAMBLE_LEN];
        a.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply[6], STATUS_VERSION_MISMATCH);
        let err = server.await.unwrap().unwrap_err();
        assert!(matches!(err, ProtocolError::VersionMismatch { theirs: 999, .. }), "{err}");
    }

    #[tokio::test]
    async fn a_big_frame_before_authentication_is_refused_unread() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            server_handshake(b, &AuthConfig::with_token("t"), PeerKind::Remote).await
        });
        a.write_all(&preamble(STATUS_OK)).await.unwrap();
        let mut reply = [0u8; PREAMBLE_LEN];
        a.read_exact(&mut reply).await.unwrap();
        // A header announcing 64 MiB, then nothing: the server must refuse, not wait to buffer.
        a.write_all(&(MAX_FRAME_LEN as u32).to_be_bytes()).await.unwrap();
        let refused = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
        let err = refused.expect("the server waited for the big frame").unwrap().unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }), "{err}");
    }
}
