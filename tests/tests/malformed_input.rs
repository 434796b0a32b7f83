//! Malformed input on the wire — bad magic, another version, truncated, oversized and garbage
//! frames — against a worker (TCP) and an agent (Unix socket): each is refused or dropped, and
//! the daemon keeps serving proper clients.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use discomy_protocol::frame::{read_frame, write_frame};
use discomy_protocol::handshake::{PREAMBLE_LEN, client_handshake, preamble};
use discomy_protocol::{AuthConfig, Request, Response};
use discomy_tests::{Farm, Proc};

/// How long the daemon gets to answer or drop a bad connection.
const IO_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn open(target: &Target) -> Conn {
        match target {
            Target::Tcp(addr) => {
                let s = TcpStream::connect_timeout(addr, IO_TIMEOUT).expect("connect tcp");
                s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
                Conn::Tcp(s)
            }
            Target::Unix(path) => {
                let s = UnixStream::connect(path).expect("connect unix");
                s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
                Conn::Unix(s)
            }
        }
    }

    fn shutdown_write(&self) {
        // The peer may already have closed; that is fine here.
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }

    /// Reads until the server closes. Err if it keeps the connection open past the timeout.
    fn read_until_closed(&mut self) -> Result<Vec<u8>, String> {
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.read(&mut buf) {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(got),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    return Err(format!(
                        "server kept the connection open for {:.0?} (received {} bytes: {:02x?})",
                        start.elapsed(),
                        got.len(),
                        &got[..got.len().min(64)]
                    ));
                }
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
    }

    /// Sends raw bytes; a write error (the server already closed) is not a failure here.
    fn send(&mut self, bytes: &[u8]) {
        let _ = self.write_all(bytes).and_then(|()| self.flush());
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            Conn::Unix(s) => s.flush(),
        }
    }
}

/// A proper client: handshake, Ping, expect Pong.
fn ping(target: &Target) -> Result<(), String> {
    let mut conn = Conn::open(target);
    client_handshake(&mut conn, &AuthConfig::none()).map_err(|e| format!("handshake: {e}"))?;
    write_frame(&mut conn, &Request::Ping).map_err(|e| format!("send Ping: {e}"))?;
    match read_frame::<_, Response>(&mut conn) {
        Ok(Response::Pong) => Ok(()),
        Ok(other) => Err(format!("Ping answered with {other:?}")),
        Err(e) => Err(format!("reading the answer to Ping: {e}")),
    }
}

/// Sends a valid preamble and reads the server's (status 0 expected).
fn open_after_preamble(target: &Target) -> Result<Conn, String> {
    let mut conn = Conn::open(target);
    conn.send(&preamble(0));
    let mut reply = [0u8; PREAMBLE_LEN];
    conn.read_exact(&mut reply).map_err(|e| format!("reading the server preamble: {e}"))?;
    if reply != preamble(0) {
        return Err(format!("server preamble {reply:02x?}, expected {:02x?}", preamble(0)));
    }
    Ok(conn)
}

fn open_authenticated(target: &Target) -> Result<Conn, String> {
    let mut conn = Conn::open(target);
    client_handshake(&mut conn, &AuthConfig::none()).map_err(|e| format!("handshake: {e}"))?;
    Ok(conn)
}

/// Checks a refusal preamble: magic, the server's version, the expected status, then close.
fn expect_refusal(reply: &[u8], status: u8) -> Result<(), String> {
    let want = preamble(status);
    if reply != want {
        return Err(format!(
            "expected the server preamble {want:02x?} (status {status}) and a close, got {} bytes: {:02x?}",
            reply.len(),
            &reply[..reply.len().min(64)]
        ));
    }
    Ok(())
}

type Case = (&'static str, fn(&Target) -> Result<(), String>);

const CASES: &[Case] = &[
    ("connect and close at once", |t| {
        let conn = Conn::open(t);
        drop(conn);
        Ok(())
    }),
    ("bad magic", |t| {
        let mut conn = Conn::open(t);
        conn.send(b"XXXX\x00\x01\x00\x00");
        let reply = conn.read_until_closed()?;
        expect_refusal(&reply, 2)
    }),
    ("an HTTP request", |t| {
        let mut conn = Conn::open(t);
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let reply = conn.read_until_closed()?;
        // The server may close with the rest of the request unread, which resets a TCP
        // connection and can discard its preamble in flight: a bare close is fine too.
        if reply.is_empty() { Ok(()) } else { expect_refusal(&reply, 2) }
    }),
    ("another protocol version", |t| {
        let mut conn = Conn::open(t);
        let mut theirs = preamble(0);
        theirs[4..6].copy_from_slice(&(discomy_protocol::version::CURRENT + 1).to_be_bytes());
        conn.send(&theirs);
        let reply = conn.read_until_closed()?;
        expect_refusal(&reply, 1)?;
        // What a client of the current version makes of it: status 1 (version mismatch).
        let arr: [u8; PREAMBLE_LEN] = reply[..PREAMBLE_LEN].try_into().expect("8 bytes");
        let status = discomy_protocol::handshake::check_preamble(&arr)
            .map_err(|e| format!("check_preamble on the reply: {e}"))?;
        if status != discomy_protocol::handshake::STATUS_VERSION_MISMATCH {
            return Err(format!("status {status}"));
        }
        Ok(())
    }),
    ("preamble cut short", |t| {
        let mut conn = Conn::open(t);
        conn.send(b"DSC");
        conn.shutdown_write();
        conn.read_until_closed().map(drop)
    }),
    ("truncated frame instead of the auth frame", |t| {
        let mut conn = open_after_preamble(t)?;
        conn.send(&100u32.to_be_bytes());
        conn.send(&[7u8; 10]);
        conn.shutdown_write();
        conn.read_until_closed().map(drop)
    }),
    ("truncated request frame", |t| {
        let mut conn = open_authenticated(t)?;
        conn.send(&100u32.to_be_bytes());
        conn.send(&[7u8; 10]);
        conn.shutdown_write();
        conn.read_until_closed().map(drop)
    }),
    ("oversized auth frame header", |t| {
        let mut conn = open_after_preamble(t)?;
        conn.send(&u32::MAX.to_be_bytes());
        conn.send(&[0u8; 64]);
        conn.read_until_closed().map(drop)
    }),
    ("oversized request frame header", |t| {
        let mut conn = open_authenticated(t)?;
        conn.send(&u32::MAX.to_be_bytes());
        conn.send(&[0u8; 64]);
        conn.read_until_closed().map(drop)
    }),
    ("garbage auth frame", |t| {
        let mut conn = open_after_preamble(t)?;
        conn.send(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]);
        conn.read_until_closed().map(drop)
    }),
    ("garbage request frame", |t| {
        let mut conn = open_authenticated(t)?;
        conn.send(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]);
        // Either an error response or a close; never silence with the connection open.
        match read_frame::<_, Response>(&mut conn) {
            Ok(Response::Refused(_)) => Ok(()),
            Ok(other) => Err(format!("garbage answered with {other:?}")),
            Err(discomy_protocol::ProtocolError::Closed) => Ok(()),
            Err(discomy_protocol::ProtocolError::Io(e))
                if e.kind() == io::ErrorKind::ConnectionReset =>
            {
                Ok(())
            }
            Err(e) => Err(format!("after garbage: {e}")),
        }
    }),
    ("empty request frame", |t| {
        let mut conn = open_authenticated(t)?;
        conn.send(&[0, 0, 0, 0]);
        match read_frame::<_, Response>(&mut conn) {
            Ok(Response::Refused(_)) | Err(discomy_protocol::ProtocolError::Closed) => Ok(()),
            Err(discomy_protocol::ProtocolError::Io(e))
                if e.kind() == io::ErrorKind::ConnectionReset =>
            {
                Ok(())
            }
            Ok(other) => Err(format!("empty frame answered with {other:?}")),
            Err(e) => Err(format!("after an empty frame: {e}")),
        }
    }),
];

fn probe(label: &str, target: &Target, daemon: &mut Proc, problems: &mut Vec<String>) {
    // Sanity first: a proper client is served.
    if let Err(e) = ping(target) {
        panic!("{label}: a proper Ping fails before any malformed input: {e}");
    }
    // An idle connection held open throughout must not block anyone.
    let _idle = Conn::open(target);
    for (name, case) in CASES {
        let result = case(target);
        eprintln!("[e2e] {label}: {name}: {result:?}");
        if let Err(e) = result {
            problems.push(format!("{label}, {name}: {e}"));
        }
        if let Some(status) = daemon.try_wait() {
            problems.push(format!("{label}: daemon exited ({status}) after: {name}"));
            return;
        }
        if let Err(e) = ping(target) {
            problems.push(format!("{label}: Ping fails after {name}: {e}"));
        }
    }
}

#[test]
fn malformed_input() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut farm = Farm::start(tmp.path(), 1, 1);
    let mut problems = Vec::new();

    let worker = Target::Tcp(farm.workers[0].addr);
    probe("worker (TCP)", &worker, &mut farm.workers[0].proc, &mut problems);
    let agent = Target::Unix(farm.agent.socket.clone());
    probe("agent (Unix socket)", &agent, &mut farm.agent.proc, &mut problems);

    farm.assert_alive();
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}
