//! The protocol error type: everything that can go wrong reading, writing or authenticating.

use std::io;

/// An error in framing, encoding, handshaking or payload handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection where a frame or preamble was expected.
    #[error("connection closed by peer")]
    Closed,
    /// A frame header announced more bytes than [`crate::frame::MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced or attempted length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame did not decode as the expected message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The peer is not a discomy peer (wrong magic bytes).
    #[error("peer is not speaking the discomy protocol (bad magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: we speak {ours}, peer speaks {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// Authentication failed or was refused.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A payload would decompress past its cap, or its digest did not match.
    #[error("bad payload: {0}")]
    Payload(String),
    /// A read or write did not complete in time.
    #[error("timed out")]
    Timeout,
}

impl From<postcard::Error> for ProtocolError {
    fn from(err: postcard::Error) -> Self {
        ProtocolError::Malformed(err.to_string())
    }
}
