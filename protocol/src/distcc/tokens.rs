//! distcc's framing: a 12-byte header (4-letter token, 8 hex digits), then for some tokens a body
//! of that many bytes. Encoding writes lower-case hex, as distcc does; decoding accepts either case
//! (distccd parses with `strtoul`). Every length is checked against [`Limits`] before allocating.

use std::io::Read;

use super::lzo::{self, LzoError};

/// distcc's default TCP port.
pub const DEFAULT_PORT: u16 = 3632;

/// Size of a token header.
pub const HEADER_LEN: usize = 12;

/// Why a token stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum DistccError {
    /// The peer closed the connection or the socket failed.
    #[error("distcc connection: {0}")]
    Io(#[from] std::io::Error),
    /// A header was not a token and 8 hex digits.
    #[error("malformed distcc header {0:?}")]
    BadHeader(String),
    /// A different token came where another was due.
    #[error("expected distcc token {expected}, got {got}")]
    UnexpectedToken {
        /// The token due.
        expected: &'static str,
        /// The one received.
        got: String,
    },
    /// A protocol version we do not speak.
    #[error("distcc protocol version {0} is not supported (1 and 2 are; pump mode, 3, is not)")]
    Version(u32),
    /// A count or length over its limit.
    #[error("distcc {what} of {got} exceeds the limit of {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        got: u64,
        /// The limit.
        limit: u64,
    },
    /// An argument is not UTF-8.
    #[error("distcc argument is not valid UTF-8")]
    NotUtf8,
    /// A compressed body did not decode.
    #[error("distcc body: {0}")]
    Lzo(#[from] LzoError),
}

/// Caps applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most `ARGV` entries.
    pub max_args: u32,
    /// Longest single argument.
    pub max_arg_len: u32,
    /// Largest body on the wire.
    pub max_wire_body: u32,
    /// Largest body after decompression.
    pub max_raw_body: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_args: 4096,
            max_arg_len: 64 << 10,
            max_wire_body: 256 << 20,
            max_raw_body: 256 << 20,
        }
    }
}

/// The protocol a client chose: 1 plain, 2 LZO-compressed bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Protocol 1: plain bodies.
    Plain,
    /// Protocol 2: LZO1X-1 bodies (`,lzo` hosts).
    Lzo,
}

impl Version {
    /// The `DIST`/`DONE` number.
    pub fn number(self) -> u32 {
        match self {
            Version::Plain => 1,
            Version::Lzo => 2,
        }
    }

    /// The version for a `DIST` number.
    pub fn from_number(n: u32) -> Result<Version, DistccError> {
        match n {
            1 => Ok(Version::Plain),
            2 => Ok(Version::Lzo),
            other => Err(DistccError::Version(other)),
        }
    }

    /// A body as it goes on the wire (empty bodies stay empty, as in distcc).
    pub fn encode_body(self, raw: &[u8]) -> Vec<u8> {
        match self {
            Version::Lzo if !raw.is_empty() => lzo::compress(raw),
            _ => raw.to_vec(),
        }
    }

    /// A wire body decoded, capped at `cap` bytes.
    pub fn decode_body(self, wire: Vec<u8>, cap: usize) -> Result<Vec<u8>, DistccError> {
        match self {
            Version::Lzo if !wire.is_empty() => Ok(lzo::decompress(&wire, cap)?),
            _ if wire.len() > cap => Err(DistccError::TooLarge {
                what: "body",
                got: wire.len() as u64,
                limit: cap as u64,
            }),
            _ => Ok(wire),
        }
    }
}

/// Appends a header: `token` and `param` as 8 lower-case hex digits.
pub fn put_header(out: &mut Vec<u8>, token: &[u8; 4], param: u32) {
    out.extend_from_slice(token);
    out.extend_from_slice(format!("{param:08x}").as_bytes());
}

/// Appends a header and its body.
pub fn put_body(out: &mut Vec<u8>, token: &[u8; 4], body: &[u8]) {
    put_header(out, token, body.len() as u32);
    out.extend_from_slice(body);
}

/// Parses a header, checking the token is `expected`.
pub fn parse_header(buf: &[u8; HEADER_LEN], expected: &'static str) -> Result<u32, DistccError> {
    let (token, hex) = buf.split_at(4);
    let shown = || String::from_utf8_lossy(buf).into_owned();
    let text = std::str::from_utf8(hex).map_err(|_| DistccError::BadHeader(shown()))?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DistccError::BadHeader(shown()));
    }
    let param = u32::from_str_radix(text, 16).map_err(|_| DistccError::BadHeader(shown()))?;
    if token != expected.as_bytes() {
        return Err(DistccError::UnexpectedToken {
            expected,
            got: String::from_utf8_lossy(token).into_owned(),
        });
    }
    Ok(param)
}

/// Checks a declared length against its limit.
pub fn check(what: &'static str, got: u32, limit: u32) -> Result<usize, DistccError> {
    if got > limit {
        return Err(DistccError::TooLarge { what, got: got.into(), limit: limit.into() });
    }
    Ok(got as usize)
}

/// A compile request as a distcc client sends it (protocols 1 and 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The protocol.
    pub version: Version,
    /// The compiler and its arguments, source and `-o` included.
    pub argv: Vec<String>,
    /// The preprocessed source, decompressed.
    pub source: Vec<u8>,
}

impl Request {
    /// The request's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_header(&mut out, b"DIST", self.version.number());
        put_header(&mut out, b"ARGC", self.argv.len() as u32);
        for arg in &self.argv {
            put_body(&mut out, b"ARGV", arg.as_bytes());
        }
        put_body(&mut out, b"DOTI", &self.version.encode_body(&self.source));
        out
    }
}

/// A server's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// Unix wait status: `exit << 8 | signal`.
    pub status: u32,
    /// Compiler stderr (and the server's own messages).
    pub stderr: Vec<u8>,
    /// Compiler stdout.
    pub stdout: Vec<u8>,
    /// The object (empty when `status` is not 0).
    pub object: Vec<u8>,
}

impl Reply {
    /// A refusal: exit `code`, `message` on stderr, no object.
    pub fn refusal(code: u8, message: &str) -> Reply {
        Reply {
            status: u32::from(code) << 8,
            stderr: format!("discomy: {message}\n").into_bytes(),
            ..Reply::default()
        }
    }

    /// The exit code in `status`, or 128 + signal.
    pub fn exit_code(&self) -> i32 {
        match self.status & 0x7f {
            0 => ((self.status >> 8) & 0xff) as i32,
            sig => 128 + sig as i32,
        }
    }

    /// The reply's bytes on the wire.
    pub fn encode(&self, version: Version) -> Vec<u8> {
        let mut out = Vec::new();
        put_header(&mut out, b"DONE", version.number());
        put_header(&mut out, b"STAT", self.status);
        put_body(&mut out, b"SERR", &version.encode_body(&self.stderr));
        put_body(&mut out, b"SOUT", &version.encode_body(&self.stdout));
        let object = if self.status == 0 { version.encode_body(&self.object) } else { Vec::new() };
        put_body(&mut out, b"DOTO", &object);
        out
    }
}

fn header<R: Read>(r: &mut R, expected: &'static str) -> Result<u32, DistccError> {
    let mut buf = [0u8; HEADER_LEN];
    r.read_exact(&mut buf)?;
    parse_header(&buf, expected)
}

fn body<R: Read>(
    r: &mut R,
    token: &'static str,
    version: Version,
    limits: &Limits,
) -> Result<Vec<u8>, DistccError> {
    let len = check(token, header(r, token)?, limits.max_wire_body)?;
    let mut wire = vec![0u8; len];
    r.read_exact(&mut wire)?;
    version.decode_body(wire, limits.max_raw_body)
}

/// Reads a request from a blocking stream.
pub fn read_request<R: Read>(r: &mut R, limits: &Limits) -> Result<Request, DistccError> {
    let version = Version::from_number(header(r, "DIST")?)?;
    let argc = check("argument count", header(r, "ARGC")?, limits.max_args)?;
    let mut argv = Vec::with_capacity(argc);
    for _ in 0..argc {
        let len = check("argument", header(r, "ARGV")?, limits.max_arg_len)?;
        let mut arg = vec![0u8; len];
        r.read_exact(&mut arg)?;
        argv.push(String::from_utf8(arg).map_err(|_| DistccError::NotUtf8)?);
    }
    let source = body(r, "DOTI", version, limits)?;
    Ok(Request { version, argv, source })
}

/// Reads a reply from a blocking stream. A reply that stops after `SERR` (distccd killed the job)
/// is an I/O error.
pub fn read_reply<R: Read>(
    r: &mut R,
    version: Version,
    limits: &Limits,
) -> Result<Reply, DistccError> {
    let done = header(r, "DONE")?;
    if done != version.number() {
        return Err(DistccError::Version(done));
    }
    let status = header(r, "STAT")?;
    let stderr = body(r, "SERR", version, limits)?;
    let stdout = body(r, "SOUT", version, limits)?;
    let object = body(r, "DOTO", version, limits)?;
    Ok(Reply { status, stderr, stdout, object })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version) -> Request {
        Request {
            version,
            argv: ["x86_64-linux-gnu-gcc", "-O2", "-c", "hello.c", "-o", "hello.o"]
                .map(String::from)
                .to_vec(),
            source: b"# 0 \"hello.c\"\nint main(void) { return 0; }\n".repeat(50),
        }
    }

    #[test]
    fn requests_and_replies_round_trip() {
        for v in [Version::Plain, Version::Lzo] {
            let r = req(v);
            let bytes = r.encode();
            assert!(bytes.starts_with(format!("DIST0000000{}ARGC00000006", v.number()).as_bytes()));
            assert_eq!(read_request(&mut &bytes[..], &Limits::default()).unwrap(), r);
            let reply =
                Reply { status: 0, stderr: b"w".to_vec(), stdout: vec![], object: vec![9; 5000] };
            let bytes = reply.encode(v);
            assert_eq!(read_reply(&mut &bytes[..], v, &Limits::default()).unwrap(), reply);
        }
    }

    #[test]
    fn refusals_carry_no_object() {
        let r = Reply::refusal(113, "access denied");
        assert_eq!(r.exit_code(), 113);
        let bytes = r.encode(Version::Plain);
        assert!(bytes.ends_with(b"DOTO00000000"));
        assert!(bytes.starts_with(b"DONE00000001STAT00007100SERR"));
    }

    #[test]
    fn matches_the_captured_protocol_1_request_start() {
        let bytes = req(Version::Plain).encode();
        assert!(bytes.starts_with(
            b"DIST00000001ARGC00000006ARGV00000014x86_64-linux-gnu-gccARGV00000003-O2"
        ));
    }

    #[test]
    fn hostile_streams_are_refused() {
        let limits = Limits::default();
        let cases: &[&[u8]] = &[
            b"GET / HTTP/1.0\r\n\r\n",
            b"DIST00000003",
            b"DIST0000000g",
            b"DIST00000001ARGCffffffff",
            b"DIST00000001ARGC00000001ARGV7fffffff",
            b"DIST00000001ARGC00000001ARGV00000002\xff\xfeDOTI00000000",
            b"DIST00000001ARGC00000001ARGV00000001",
            b"DIST00000002ARGC00000000DOTI00000002\x00\x00",
        ];
        for case in cases {
            assert!(
                read_request(&mut &case[..], &limits).is_err(),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
        // Upper-case hex is accepted on input, as distccd does.
        let ok = b"DIST00000001ARGC00000000DOTI0000000A0123456789";
        assert_eq!(read_request(&mut &ok[..], &limits).unwrap().source, b"0123456789");
    }
}
