//! Frames: a 4-byte big-endian length, then that many bytes of postcard.
//!
//! The same limit applies when encoding and decoding, in the sync path here and in the tokio
//! codec (`asyncio`): a header announcing more than [`MAX_FRAME_LEN`] is refused before any
//! buffer is allocated for it.

use std::io::{self, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ProtocolError;

/// Largest frame either side accepts or sends: a compressed unit or object plus headers.
pub const MAX_FRAME_LEN: usize = 64 << 20;

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// Serialises `msg` to postcard bytes, refusing results over [`MAX_FRAME_LEN`].
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    let bytes = postcard::to_stdvec(msg)?;
    if bytes.len() > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge { len: bytes.len(), max: MAX_FRAME_LEN });
    }
    Ok(bytes)
}

/// Deserialises one message from a whole frame body; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    let (msg, rest) = postcard::take_from_bytes(body)?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed(format!(
            "{} trailing bytes after message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Writes one framed message.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), ProtocolError> {
    let body = encode(msg)?;
    let len = u32::try_from(body.len())
        .map_err(|_| ProtocolError::FrameTooLarge { len: body.len(), max: MAX_FRAME_LEN })?;
    let mut buf = Vec::with_capacity(HEADER_LEN + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one framed message. A clean end of stream before the header is [`ProtocolError::Closed`].
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, ProtocolError> {
    let mut header = [0u8; HEADER_LEN];
    read_exact_or_closed(r, &mut header)?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge { len, max: MAX_FRAME_LEN });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            ProtocolError::Malformed(format!("stream ended inside a {len}-byte frame"))
        }
        _ => ProtocolError::Io(e),
    })?;
    decode(&body)
}

/// Fills `buf`, mapping an end of stream before the first byte to [`ProtocolError::Closed`].
pub(crate) fn read_exact_or_closed<R: Read>(
    r: &mut R,
    buf: &mut [u8],
) -> Result<(), ProtocolError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Err(ProtocolError::Closed),
            Ok(0) => return Err(ProtocolError::Malformed("stream ended inside a header".into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ProtocolError::Timeout);
            }
            Err(e) => return Err(ProtocolError::Io(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Request, Response};

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Ping).unwrap();
        let back: Request = read_frame(&mut buf.as_slice()).unwrap();
        assert!(matches!(back, Request::Ping));
    }

    #[test]
    fn truncated_body_is_malformed() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Response::Pong).unwrap();
        buf.extend_from_slice(&[0, 0, 0, 9, 1]);
        let mut r = buf.as_slice();
        let _: Response = read_frame(&mut r).unwrap();
        let err = read_frame::<_, Response>(&mut r).unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed(_)), "{err}");
    }

    #[test]
    fn empty_stream_is_closed() {
        let err = read_frame::<_, Request>(&mut &[][..]).unwrap_err();
        assert!(matches!(err, ProtocolError::Closed));
    }

    #[test]
    fn oversized_header_refused_before_allocation() {
        let buf = u32::MAX.to_be_bytes();
        let err = read_frame::<_, Request>(&mut &buf[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }));
    }

    #[test]
    fn garbage_body_is_malformed() {
        let buf = [0, 0, 0, 3, 0xff, 0xff, 0xff];
        let err = read_frame::<_, Request>(&mut &buf[..]).unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed(_)));
    }

    #[test]
    fn oversized_message_refused_on_encode() {
        let big = crate::payload::Payload {
            raw_len: 0,
            digest: crate::Digest([0; 32]),
            lz4: vec![0; MAX_FRAME_LEN + 1],
        };
        let err = encode(&big).unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }));
    }
}
