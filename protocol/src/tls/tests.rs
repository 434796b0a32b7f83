//! The farm's TLS on loopback: who is let in, who is refused, and that a flipped byte kills the
//! link instead of reaching the frames.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::fleet::FleetRole;

struct Farm {
    ca: Ca,
}

impl Farm {
    fn new() -> Farm {
        Farm { ca: Ca::create("t").unwrap().0 }
    }
    fn host(&self, name: &str, roles: &[FleetRole], life: Duration, auth: ClientAuth) -> FarmTls {
        let (issued, key) = self.ca.issue_with_key(name, roles, life).unwrap();
        FarmTls::new(self.ca.pem(), &issued.pem, &key, auth).unwrap()
    }
}

const HOUR: Duration = Duration::from_secs(3600);

/// Serves one connection: echoes 4 bytes and returns what the client's certificate said.
async fn serve_once(
    server: Transport,
) -> (String, tokio::task::JoinHandle<Result<Option<CertInfo>, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut s = server.accept(tcp).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        s.write_all(&buf).await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        Ok(s.peer_cert())
    });
    (addr, task)
}

async fn talk(client: &Transport, addr: &str, role: FleetRole) -> Result<(), String> {
    let mut s = client.connect(addr, role).await.map_err(|e| e.to_string())?;
    s.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    if &buf != b"ping" {
        return Err("echo differs".into());
    }
    Ok(())
}

#[tokio::test]
async fn an_agent_reaches_a_worker_and_the_worker_knows_who_it_is() {
    let farm = Farm::new();
    let worker =
        Transport::Tls(Arc::new(farm.host("w1", &[FleetRole::Worker], HOUR, ClientAuth::Required)));
    let agent =
        Transport::Tls(Arc::new(farm.host("a1", &[FleetRole::Agent], HOUR, ClientAuth::Required)));
    let (addr, task) = serve_once(worker).await;
    talk(&agent, &addr, FleetRole::Worker).await.unwrap();
    let peer = task.await.unwrap().unwrap().unwrap();
    assert_eq!(peer.name, "a1");
    assert_eq!(peer.roles, vec![FleetRole::Agent]);
}

#[tokio::test]
async fn refused_an_unknown_ca_a_wrong_role_a_revoked_and_an_expired_certificate() {
    let farm = Farm::new();
    let other = Farm::new();
    let worker_tls = Arc::new(farm.host("w1", &[FleetRole::Worker], HOUR, ClientAuth::Required));
    let worker = Transport::Tls(worker_tls.clone());

    // A client from another farm's CA: the worker refuses its certificate.
    let stranger =
        Transport::Tls(Arc::new(other.host("x", &[FleetRole::Agent], HOUR, ClientAuth::Required)));
    let (addr, task) = serve_once(worker.clone()).await;
    assert!(talk(&stranger, &addr, FleetRole::Worker).await.is_err());
    assert!(task.await.unwrap().is_err(), "the worker served an unknown CA");

    // A server that is not a worker (an agent's certificate): the client refuses it.
    let agent =
        Transport::Tls(Arc::new(farm.host("a1", &[FleetRole::Agent], HOUR, ClientAuth::Required)));
    let fake =
        Transport::Tls(Arc::new(farm.host("a2", &[FleetRole::Agent], HOUR, ClientAuth::Required)));
    let (addr, task) = serve_once(fake).await;
    let err = talk(&agent, &addr, FleetRole::Worker).await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    let _ = task.await;

    // A client without any certificate, where one is required.
    let joiner = Transport::Tls(Arc::new(FarmTls::joiner(farm.ca.pem()).unwrap()));
    let (addr, task) = serve_once(worker.clone()).await;
    let _ = talk(&joiner, &addr, FleetRole::Worker).await;
    assert!(task.await.unwrap().is_err(), "the worker served a client without a certificate");

    // A revoked client, also one that was served before (no resumption on an old ticket).
    let revoked_tls =
        Transport::Tls(Arc::new(farm.host("a3", &[FleetRole::Agent], HOUR, ClientAuth::Required)));
    let (addr, task) = serve_once(worker.clone()).await;
    talk(&revoked_tls, &addr, FleetRole::Worker).await.unwrap();
    assert!(task.await.unwrap().is_ok());
    worker_tls.revoked().insert(revoked_tls.tls().unwrap().own().unwrap().serial);
    let (addr, task) = serve_once(worker.clone()).await;
    let _ = talk(&revoked_tls, &addr, FleetRole::Worker).await;
    assert!(task.await.unwrap().is_err(), "the worker served a revoked certificate");

    // An expired client.
    let expired = farm.host("a4", &[FleetRole::Agent], Duration::ZERO, ClientAuth::Required);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (addr, task) = serve_once(worker.clone()).await;
    let _ = talk(&Transport::Tls(Arc::new(expired)), &addr, FleetRole::Worker).await;
    assert!(task.await.unwrap().is_err(), "the worker served an expired certificate");

    // And the good agent still gets in.
    let (addr, task) = serve_once(worker).await;
    talk(&agent, &addr, FleetRole::Worker).await.unwrap();
    assert!(task.await.unwrap().is_ok());
}

#[tokio::test]
async fn a_coordinator_lets_a_joiner_in_without_a_certificate() {
    let farm = Farm::new();
    let coord = Transport::Tls(Arc::new(farm.host(
        "coordinator",
        &[FleetRole::Coordinator],
        HOUR,
        ClientAuth::Optional,
    )));
    let joiner = Transport::Tls(Arc::new(FarmTls::joiner(farm.ca.pem()).unwrap()));
    let (addr, task) = serve_once(coord).await;
    talk(&joiner, &addr, FleetRole::Coordinator).await.unwrap();
    assert_eq!(task.await.unwrap().unwrap(), None);
    // A joiner that trusts another CA refuses this coordinator (a rogue one answering mDNS).
    let rogue = Transport::Tls(Arc::new(Farm::new().host(
        "coordinator",
        &[FleetRole::Coordinator],
        HOUR,
        ClientAuth::Optional,
    )));
    let (addr, _task) = serve_once(rogue).await;
    assert!(talk(&joiner, &addr, FleetRole::Coordinator).await.is_err());
}

#[tokio::test]
async fn a_flipped_byte_on_the_path_breaks_the_link() {
    let farm = Farm::new();
    let worker =
        Transport::Tls(Arc::new(farm.host("w1", &[FleetRole::Worker], HOUR, ClientAuth::Required)));
    let agent =
        Transport::Tls(Arc::new(farm.host("a1", &[FleetRole::Agent], HOUR, ClientAuth::Required)));
    let (upstream, task) = serve_once(worker).await;
    // A relay that passes the handshake and flips one byte of the first application record.
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut down, _) = relay.accept().await.unwrap();
        let mut up = tokio::net::TcpStream::connect(upstream).await.unwrap();
        let (mut dr, mut dw) = down.split();
        let (mut ur, mut uw) = up.split();
        let to_up = async {
            // Walks the client's TLS records and flips one body byte of its first encrypted
            // record (type 23): whatever that record carried, the worker must not act on it.
            let mut pending: Vec<u8> = Vec::new();
            let mut flipped = false;
            let mut buf = vec![0u8; 65536];
            loop {
                let n = match dr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                let mut at = 0;
                while pending.len() >= at + 5 {
                    let len = usize::from(u16::from_be_bytes([pending[at + 3], pending[at + 4]]));
                    if pending.len() < at + 5 + len {
                        break;
                    }
                    if pending[at] == 23 && !flipped && len > 0 {
                        pending[at + 5] ^= 0x01;
                        flipped = true;
                    }
                    at += 5 + len;
                }
                if uw.write_all(&pending[..at]).await.is_err() {
                    break;
                }
                pending.drain(..at);
            }
        };
        let to_down = tokio::io::copy(&mut ur, &mut dw);
        let _ = tokio::join!(to_up, to_down);
    });
    let result = talk(&agent, &relay_addr, FleetRole::Worker).await;
    let served = task.await.unwrap();
    assert!(result.is_err() || served.is_err(), "a rewritten record was accepted");
    assert!(served.is_err(), "the worker read a tampered record: {served:?}");
}

#[tokio::test]
async fn a_plain_client_is_told_to_use_the_fleet() {
    let farm = Farm::new();
    let worker =
        Transport::Tls(Arc::new(farm.host("w1", &[FleetRole::Worker], HOUR, ClientAuth::Required)));
    let (addr, task) = serve_once(worker).await;
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let err = crate::asyncio::client_handshake(tcp, &crate::AuthConfig::none()).await.unwrap_err();
    assert!(err.to_string().contains("fleet directory"), "{err}");
    assert!(task.await.unwrap().is_err());
}
