//! The daemon in-process on loopback: a node that stops reporting is out of the farm within
//! 3 s, and an agent's placement names the node's verified address.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use discomy_coordinator::server::{self, CoordinatorConfig};
use discomy_protocol::asyncio::{client_handshake, recv, send, server_handshake};
use discomy_protocol::coordinator::{
    CoordRequest, CoordResponse, FarmStatus, LoadReport, NodeLogin, PlaceRequest,
};
use discomy_protocol::{AuthConfig, Digest, PeerKind, Request, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

async fn status(addr: std::net::SocketAddr) -> FarmStatus {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut conn = client_handshake(stream, &AuthConfig::none()).await.unwrap();
    send(&mut conn, &CoordRequest::Status).await.unwrap();
    match recv(&mut conn).await.unwrap() {
        CoordResponse::Status(s) => s,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_out_within_three_seconds() {
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = CoordinatorConfig::new("test", AuthConfig::none());
    tokio::spawn(server::run(listener, config, shutdown.clone()));

    // A fake worker that answers the connect-back ping.
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
        host: "n1".into(),
        address: worker_addr.to_string(),
        cores: 2,
        slots: 2,
        memory_mb: 1024,
        toolchains: vec![Digest([1; 32])],
    };
    send(&mut node, &CoordRequest::NodeLogin(login)).await.unwrap();
    assert!(matches!(recv(&mut node).await.unwrap(), CoordResponse::Welcome { .. }));
    send(&mut node, &CoordRequest::Load(LoadReport::default())).await.unwrap();
    assert_eq!(status(addr).await.nodes.len(), 1);

    // An agent's question is answered with the node's verified address.
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut agent = client_handshake(stream, &AuthConfig::none()).await.unwrap();
    send(&mut agent, &CoordRequest::AgentLogin { host: "a".into() }).await.unwrap();
    assert!(matches!(recv(&mut agent).await.unwrap(), CoordResponse::Welcome { .. }));
    let ask = PlaceRequest {
        tag: 9,
        toolchain: Digest([1; 32]),
        bytes_in: 1,
        work: 1,
        priority: 0,
        unit: 0,
    };
    send(&mut agent, &CoordRequest::Place(ask)).await.unwrap();
    match recv(&mut agent).await.unwrap() {
        CoordResponse::Placed(p) => {
            assert_eq!(p.tag, 9);
            assert_eq!(p.worker.as_deref(), Some(worker_addr.to_string().as_str()));
        }
        other => panic!("{other:?}"),
    }

    // The node goes silent (connection kept open): out within 3 s.
    let silent = Instant::now();
    while !status(addr).await.nodes.is_empty() {
        assert!(silent.elapsed() < Duration::from_secs(3), "the silent node is still in the farm");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(node);
    shutdown.cancel();
}
