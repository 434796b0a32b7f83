//! icecream's monitor messages as bytes: the version handshake's arithmetic, the frame
//! header, and the encoding and decoding of the messages a scheduler exchanges with a monitor.
//! Pure (no I/O); written from the behaviour described in icecream's `services/comm.cpp` and
//! `services/comm.h` (master `fcf8c51`, tag `1.4`), not copied from it.
//!
//! - Handshake (`MsgChannel::init_channel`, `update_state`'s `NEED_PROTO`): each end writes
//!   its version as 4 bytes **little-endian**; on the peer's first word each end rejects
//!   < 21 or > 2^20 and writes `min(peer, own)` (little-endian); the peer's second word must
//!   equal that minimum.
//! - Frame (`send_msg`, `update_state`'s `NEED_LEN`): u32 big-endian length of what follows
//!   (the type and the payload), at most 1 MiB; then u32 BE type; then the fields.
//! - Fields: u32 BE (`operator<<(uint32_t)`: `htonl`); strings as u32 BE length counting a
//!   trailing NUL, then the bytes and the NUL (`operator<<(const std::string&)`).
//! - The reader insists that a message's fields use up exactly its length (`get_msg`).

use thiserror::Error;

/// The newest protocol we speak: upstream master's. The monitor messages have the same layout
/// at 43 (icecream 1.4, what Debian 12 ships) and 44; the peer's version decides (the lower).
pub const PROTOCOL_VERSION: u32 = 44;
/// icecream's own floor (`MIN_PROTOCOL_VERSION`).
pub const ICECREAM_MIN_PROTOCOL: u32 = 21;
/// Our floor: from 29 on `MON_GET_CS` is the short form we write (icecream 1.0.1 is 32).
pub const MIN_PROTOCOL_VERSION: u32 = 29;
/// Largest version a peer may claim (`1 << 20` in `update_state`).
pub const MAX_CLAIMED_VERSION: u32 = 1 << 20;
/// icecream's `MAX_MSG_SIZE`: the largest frame (type plus fields).
pub const MAX_MESSAGE: usize = 1 << 20;
/// Longest string we write (host names, file names); longer ones are cut.
pub const MAX_STRING: usize = 4096;
/// From this version on, `JOB_DONE` (and so `MON_JOB_DONE`) ends with `client_count`.
pub const CLIENT_COUNT_SINCE: u32 = 39;

/// Message types: consecutive from `'A'` (`enum Msg::Value` in `comm.h`).
pub mod kind {
    /// `END`: "done" (the scheduler shutting a channel down).
    pub const END: u32 = b'C' as u32;
    /// `JOB_DONE` (= 'M').
    pub const JOB_DONE: u32 = b'M' as u32;
    /// `JOB_LOCAL_DONE`; also what monitors get for a local job's end.
    pub const JOB_LOCAL_DONE: u32 = b'O' as u32;
    /// `MON_LOGIN`: a monitor's first (and only) message.
    pub const MON_LOGIN: u32 = b'R' as u32;
    /// `MON_GET_CS`: a job was asked for.
    pub const MON_GET_CS: u32 = b'S' as u32;
    /// `MON_JOB_BEGIN` (= 'T'): a job started on a host.
    pub const MON_JOB_BEGIN: u32 = b'T' as u32;
    /// `MON_JOB_DONE`: a job ended.
    pub const MON_JOB_DONE: u32 = b'U' as u32;
    /// `MON_LOCAL_JOB_BEGIN`: a job compiled on its submitter.
    pub const MON_LOCAL_JOB_BEGIN: u32 = b'V' as u32;
    /// `MON_STATS`: a host's `Key:Value` lines.
    pub const MON_STATS: u32 = b'W' as u32;
}

/// `CompileJob::Language`: what `MON_GET_CS` says a job compiles.
pub mod lang {
    /// C.
    pub const C: u32 = 0;
    /// C++.
    pub const CXX: u32 = 1;
}

/// What is wrong with bytes from the peer.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// The peer's version is outside what we accept.
    #[error(
        "protocol version {0} not supported (we speak {MIN_PROTOCOL_VERSION}–{PROTOCOL_VERSION})"
    )]
    Version(u32),
    /// The peer's second handshake word is not the agreed version.
    #[error("handshake mismatch: expected version {expected}, got {got}")]
    Agreement {
        /// What we agreed on.
        expected: u32,
        /// What the peer wrote.
        got: u32,
    },
    /// A frame longer than [`MAX_MESSAGE`] or shorter than its type.
    #[error("frame length {0} out of range")]
    FrameLength(u32),
    /// The fields end before the message does, or a string is malformed.
    #[error("message truncated or malformed")]
    Truncated,
    /// Bytes left after the message's fields.
    #[error("{0} bytes after the message's fields")]
    Trailing(usize),
    /// A type we do not decode.
    #[error("unexpected message type {0}")]
    Type(u32),
}

/// The peer's first handshake word (little-endian) → the version both ends use, which we
/// write back (little-endian) as our second word.
pub fn negotiate(peer_first: [u8; 4]) -> Result<u32, WireError> {
    let peer = u32::from_le_bytes(peer_first);
    if !(ICECREAM_MIN_PROTOCOL..=MAX_CLAIMED_VERSION).contains(&peer) {
        return Err(WireError::Version(peer));
    }
    let agreed = peer.min(PROTOCOL_VERSION);
    if agreed < MIN_PROTOCOL_VERSION {
        return Err(WireError::Version(peer));
    }
    Ok(agreed)
}

/// Checks the peer's second handshake word against the agreed version.
pub fn confirm(agreed: u32, peer_second: [u8; 4]) -> Result<(), WireError> {
    match u32::from_le_bytes(peer_second) {
        got if got == agreed => Ok(()),
        got => Err(WireError::Agreement { expected: agreed, got }),
    }
}

/// A frame header (u32 BE) → the length of the body (type plus fields) to read next.
pub fn frame_len(header: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header);
    match usize::try_from(len) {
        Ok(n) if (4..=MAX_MESSAGE).contains(&n) => Ok(n),
        _ => Err(WireError::FrameLength(len)),
    }
}

/// `JobDoneMsg`'s fields (what `MON_JOB_DONE` carries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobDone {
    /// The job.
    pub job_id: u32,
    /// The compiler's exit code (255: lost with its host or submitter).
    pub exitcode: u32,
    /// Wall time, ms.
    pub real_ms: u32,
    /// User CPU, ms.
    pub user_ms: u32,
    /// System CPU, ms.
    pub sys_ms: u32,
    /// Page faults.
    pub pfaults: u32,
    /// Input bytes as sent.
    pub in_compressed: u32,
    /// Input bytes.
    pub in_uncompressed: u32,
    /// Output bytes as sent.
    pub out_compressed: u32,
    /// Output bytes.
    pub out_uncompressed: u32,
    /// 1: from the submitter; 2: `job_id` is a client id.
    pub flags: u32,
    /// Clients of the daemon (protocol ≥ 39 only).
    pub client_count: u32,
}

/// The monitor messages we write or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A monitor logs in (no fields).
    MonLogin,
    /// A job was asked for (short form, protocol ≥ 29).
    MonGetCs {
        /// Last three path components of the source.
        filename: String,
        /// [`lang`].
        lang: u32,
        /// The job.
        job_id: u32,
        /// The submitter's host id.
        client_id: u32,
    },
    /// A job started on `host_id`.
    MonJobBegin {
        /// The job.
        job_id: u32,
        /// Unix time, seconds.
        stime: u32,
        /// Its host.
        host_id: u32,
    },
    /// A job ended.
    MonJobDone(JobDone),
    /// A host's state as `Key:Value\n` lines (`State:Offline\n`: it left).
    MonStats {
        /// The host.
        host_id: u32,
        /// The lines.
        text: String,
    },
}

/// A message as a whole frame (header included) for a peer at protocol `version`.
pub fn encode(msg: &Message, version: u32) -> Vec<u8> {
    let mut out = vec![0; 4];
    match msg {
        Message::MonLogin => put_u32(&mut out, kind::MON_LOGIN),
        Message::MonGetCs { filename, lang, job_id, client_id } => {
            put_u32(&mut out, kind::MON_GET_CS);
            put_str(&mut out, &shorten_filename(filename));
            put_u32(&mut out, *lang);
            put_u32(&mut out, *job_id);
            put_u32(&mut out, *client_id);
        }
        Message::MonJobBegin { job_id, stime, host_id } => {
            put_u32(&mut out, kind::MON_JOB_BEGIN);
            for v in [job_id, stime, host_id] {
                put_u32(&mut out, *v);
            }
        }
        Message::MonJobDone(d) => {
            put_u32(&mut out, kind::MON_JOB_DONE);
            let fields = [
                d.job_id,
                d.exitcode,
                d.real_ms,
                d.user_ms,
                d.sys_ms,
                d.pfaults,
                d.in_compressed,
                d.in_uncompressed,
                d.out_compressed,
                d.out_uncompressed,
                d.flags,
            ];
            for v in fields {
                put_u32(&mut out, v);
            }
            if version >= CLIENT_COUNT_SINCE {
                put_u32(&mut out, d.client_count);
            }
        }
        Message::MonStats { host_id, text } => {
            put_u32(&mut out, kind::MON_STATS);
            put_u32(&mut out, *host_id);
            put_str(&mut out, text);
        }
    }
    // Bounded by construction: a few u32s and strings of at most MAX_STRING bytes.
    let body = u32::try_from(out.len() - 4).unwrap_or(u32::MAX);
    out[..4].copy_from_slice(&body.to_be_bytes());
    out
}

/// A frame's body (type plus fields, without the length) from a peer at protocol `version`.
pub fn decode(body: &[u8], version: u32) -> Result<Message, WireError> {
    let mut r = Reader(body);
    let msg = match r.u32()? {
        kind::MON_LOGIN => Message::MonLogin,
        kind::MON_GET_CS => Message::MonGetCs {
            filename: r.string()?,
            lang: r.u32()?,
            job_id: r.u32()?,
            client_id: r.u32()?,
        },
        kind::MON_JOB_BEGIN => {
            Message::MonJobBegin { job_id: r.u32()?, stime: r.u32()?, host_id: r.u32()? }
        }
        kind::MON_JOB_DONE => Message::MonJobDone(JobDone {
            job_id: r.u32()?,
            exitcode: r.u32()?,
            real_ms: r.u32()?,
            user_ms: r.u32()?,
            sys_ms: r.u32()?,
            pfaults: r.u32()?,
            in_compressed: r.u32()?,
            in_uncompressed: r.u32()?,
            out_compressed: r.u32()?,
            out_uncompressed: r.u32()?,
            flags: r.u32()?,
            client_count: if version >= CLIENT_COUNT_SINCE { r.u32()? } else { 0 },
        }),
        kind::MON_STATS => Message::MonStats { host_id: r.u32()?, text: r.string()? },
        other => return Err(WireError::Type(other)),
    };
    match r.0.len() {
        0 => Ok(msg),
        n => Err(WireError::Trailing(n)),
    }
}

/// The last three path components, as icecream shortens file names for monitors
/// (`shorten_filename` in `comm.cpp`: from the third `/` counted from the end).
pub fn shorten_filename(name: &str) -> String {
    let cut = name.rmatch_indices('/').nth(2).map_or(0, |(i, _)| i + 1);
    name[cut..].to_owned()
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Length (with the NUL) then the bytes then the NUL. A NUL inside would end the string at the
/// reader (`s = buf` in `operator>>`), so it is dropped; longer than [`MAX_STRING`] is cut.
fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut bytes: Vec<u8> = s.bytes().filter(|b| *b != 0).collect();
    if bytes.len() > MAX_STRING {
        let mut end = MAX_STRING;
        while end > 0 && !s.is_char_boundary(end) {
            end -= 1;
        }
        bytes = s[..end].bytes().filter(|b| *b != 0).collect();
    }
    put_u32(out, u32::try_from(bytes.len() + 1).unwrap_or(u32::MAX));
    out.extend_from_slice(&bytes);
    out.push(0);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Strict: the length counts a final NUL, which must be there.
    fn string(&mut self) -> Result<String, WireError> {
        let len = usize::try_from(self.u32()?).map_err(|_| WireError::Truncated)?;
        let bytes = self.take(len)?;
        match bytes.split_last() {
            Some((0, text)) => {
                let text = text.split(|b| *b == 0).next().unwrap_or_default();
                Ok(String::from_utf8_lossy(text).into_owned())
            }
            _ => Err(WireError::Truncated),
        }
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
