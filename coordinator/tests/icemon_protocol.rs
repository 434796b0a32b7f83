//! The icemon listener in-process on loopback, spoken to byte by byte as icemon (libicecc)
//! would: the version handshake, `MON_LOGIN`, then the `MON_STATS` of a logged-in node (its
//! name and slots), and a `MON_GET_CS` / `MON_JOB_BEGIN` / `MON_JOB_DONE` run when an agent's
//! unit is placed there and done. Also: peers that are not icecream monitors are closed.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use discomy_coordinator::icemon::{self, wire};
use discomy_coordinator::server::{self, CoordinatorConfig, FarmHandle};
use discomy_protocol::asyncio::{client_handshake, recv, send, server_handshake};
use discomy_protocol::coordinator::{
    CoordRequest, CoordResponse, JobDone, LoadReport, NodeLogin, PlaceRequest,
};
use discomy_protocol::{AuthConfig, Digest, PeerKind, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// A farm and its icemon listener; returns (farm address, icemon address).
async fn start(shutdown: &CancellationToken) -> (SocketAddr, SocketAddr, FarmHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let farm = FarmHandle::new(CoordinatorConfig::new("test", AuthConfig::none()));
    tokio::spawn(server::serve_farm(listener, farm.clone(), shutdown.clone()));
    let mon = icemon::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mon_addr = mon.local_addr().unwrap();
    tokio::spawn(icemon::serve(mon, farm.clone(), shutdown.clone()));
    (addr, mon_addr, farm)
}

/// A worker that answers the coordinator's connect-back ping, and its node connection, which
/// keeps reporting load. Returns when the node is in the farm.
async fn fake_node(addr: SocketAddr, farm: &FarmHandle, host: &str, slots: u32) {
    let worker = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker_addr = worker.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = worker.accept().await.unwrap();
            tokio::spawn(async move {
                let mut c = server_handshake(s, &AuthConfig::none(), PeerKind::Loopback).await?;
                if let Request::Ping = recv::<_, Request>(&mut c).await? {
                    send(&mut c, &Response::Pong).await?;
                }
                Ok::<_, discomy_protocol::ProtocolError>(())
            });
        }
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut node = client_handshake(stream, &AuthConfig::none()).await.unwrap();
    let login = NodeLogin {
        host: host.into(),
        address: worker_addr.to_string(),
        cores: slots,
        slots,
        memory_mb: 1024,
        toolchains: vec![Digest([1; 32])],
    };
    send(&mut node, &CoordRequest::NodeLogin(login)).await.unwrap();
    assert!(matches!(recv(&mut node).await.unwrap(), CoordResponse::Welcome { .. }));
    tokio::spawn(async move {
        loop {
            if send(&mut node, &CoordRequest::Load(LoadReport::default())).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    tokio::time::timeout(WAIT, async {
        while !farm.status().nodes.iter().any(|n| n.host == host) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
}

/// icemon's side of the handshake, written out: our version 43 (icecc 1.4) as 4 bytes
/// little-endian; the scheduler's version; the minimum, little-endian; its minimum.
async fn monitor_handshake(mon: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(mon).await.unwrap();
    s.write_all(&[43, 0, 0, 0]).await.unwrap();
    let mut word = [0u8; 4];
    s.read_exact(&mut word).await.unwrap();
    assert_eq!(word, [44, 0, 0, 0], "the scheduler's version, little-endian");
    s.write_all(&[43, 0, 0, 0]).await.unwrap();
    s.read_exact(&mut word).await.unwrap();
    assert_eq!(word, [43, 0, 0, 0], "the agreed version");
    s
}

/// One frame: (type, whole body) after checking the big-endian length.
async fn frame(s: &mut TcpStream) -> (u32, Vec<u8>) {
    let mut head = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut head)).await.unwrap().unwrap();
    let len = u32::from_be_bytes(head) as usize;
    assert!((4..=1 << 20).contains(&len), "frame length {len}");
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.unwrap();
    (u32::from_be_bytes([body[0], body[1], body[2], body[3]]), body)
}

async fn message(s: &mut TcpStream) -> wire::Message {
    let (_, body) = frame(s).await;
    wire::decode(&body, 43).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icemon_sees_a_node_and_a_job() {
    let shutdown = CancellationToken::new();
    let (addr, mon, farm) = start(&shutdown).await;
    fake_node(addr, &farm, "n1", 3).await;

    let mut s = monitor_handshake(mon).await;
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, b'R']).await.unwrap(); // MON_LOGIN

    // The snapshot: MON_STATS ('W'): host id, then "Key:Value\n" lines.
    let (kind, body) = frame(&mut s).await;
    assert_eq!(kind, u32::from(b'W'));
    let host = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    let text_len = u32::from_be_bytes([body[8], body[9], body[10], body[11]]) as usize;
    assert_eq!(body.len(), 12 + text_len, "one string, nothing after it");
    assert_eq!(body.last(), Some(&0), "the string's NUL");
    let text = std::str::from_utf8(&body[12..body.len() - 1]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "Name:n1", "{text}");
    assert_eq!(lines[1], "IP:127.0.0.1", "{text}");
    assert_eq!(lines[2], "MaxJobs:3", "{text}");
    assert!(lines.contains(&"NoRemote:false") && lines.iter().any(|l| l.starts_with("Load:")));

    // An agent on host "ci" asks for a placement.
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut agent = client_handshake(stream, &AuthConfig::none()).await.unwrap();
    send(&mut agent, &CoordRequest::AgentLogin { host: "ci".into() }).await.unwrap();
    assert!(matches!(recv(&mut agent).await.unwrap(), CoordResponse::Welcome { .. }));
    let ask = PlaceRequest {
        tag: 1,
        toolchain: Digest([1; 32]),
        bytes_in: 1,
        work: 1,
        priority: 0,
        unit: 0,
    };
    send(&mut agent, &CoordRequest::Place(ask)).await.unwrap();
    let job = match recv(&mut agent).await.unwrap() {
        CoordResponse::Placed(p) => {
            assert!(p.worker.is_some());
            p.job
        }
        other => panic!("{other:?}"),
    };

    // Skip load refreshes; the submitter "ci" is announced, then the job is asked and begun.
    let mut client = None;
    let job_id = loop {
        match message(&mut s).await {
            wire::Message::MonStats { host_id, text } if text.starts_with("Name:ci\n") => {
                assert!(text.contains("MaxJobs:0\n"), "{text}");
                client = Some(host_id);
            }
            wire::Message::MonStats { host_id, .. } => assert_eq!(host_id, host),
            wire::Message::MonGetCs { job_id, client_id, .. } => {
                assert_eq!(Some(client_id), client);
                break job_id;
            }
            other => panic!("{other:?}"),
        }
    };
    match message(&mut s).await {
        wire::Message::MonJobBegin { job_id: begun, host_id, stime } => {
            assert_eq!((begun, host_id), (job_id, host));
            assert!(stime > 1_600_000_000, "unix time {stime}");
        }
        other => panic!("{other:?}"),
    }

    // The agent reports the unit done: MON_JOB_DONE ('U'), 12 fields at protocol 43.
    let done = JobDone { job, ok: true, wall_ms: 321, cpu_ms: 200, bytes_out: 4096 };
    send(&mut agent, &CoordRequest::Done(done)).await.unwrap();
    loop {
        let (kind, body) = frame(&mut s).await;
        if kind == u32::from(b'W') {
            continue;
        }
        assert_eq!(kind, u32::from(b'U'));
        assert_eq!(body.len(), 4 + 12 * 4);
        match wire::decode(&body, 43).unwrap() {
            wire::Message::MonJobDone(d) => {
                assert_eq!((d.job_id, d.exitcode, d.real_ms), (job_id, 0, 321));
            }
            other => panic!("{other:?}"),
        }
        break;
    }
    shutdown.cancel();
}

/// Reads until the listener closes the connection; fails if it sends a frame first.
async fn closed(mut s: TcpStream) {
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "expected the connection closed, got {:?}", &buf[..n]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_are_not_monitors_are_closed() {
    let shutdown = CancellationToken::new();
    let (_addr, mon, _farm) = start(&shutdown).await;

    // A version below icecream's minimum (21).
    let mut s = TcpStream::connect(mon).await.unwrap();
    s.write_all(&[20, 0, 0, 0]).await.unwrap();
    let mut word = [0u8; 4];
    s.read_exact(&mut word).await.unwrap(); // its own version, sent at once
    closed(s).await;

    // A second word that is not the agreed version.
    let mut s = TcpStream::connect(mon).await.unwrap();
    s.write_all(&[43, 0, 0, 0]).await.unwrap();
    s.read_exact(&mut word).await.unwrap();
    s.read_exact(&mut word).await.unwrap();
    s.write_all(&[44, 0, 0, 0]).await.unwrap();
    closed(s).await;

    // A daemon's LOGIN ('P') instead of MON_LOGIN, and an oversized first frame.
    let mut s = monitor_handshake(mon).await;
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, b'P']).await.unwrap();
    closed(s).await;
    let mut s = monitor_handshake(mon).await;
    s.write_all(&[0, 0x10, 0, 0, 0, 0, 0, b'R']).await.unwrap();
    closed(s).await;

    // After all that, a real login still works (empty farm: nothing to say yet).
    let mut s = monitor_handshake(mon).await;
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, b'R']).await.unwrap();
    let mut buf = [0u8; 1];
    let quiet = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
    assert!(quiet.is_err(), "no message for an empty farm, and not closed");
    shutdown.cancel();
}
