//! The `compile` scope of tenant tokens: a token with it enrols agents in the fleet at once
//! (only agents), the agent renews while the token lives, and the token's expiry or its
//! revocation through the API revokes the agent, closing its connections. Tokens are made and
//! revoked through the real API on loopback over a real SQLite file; the fleet's messages are
//! decided as the coordinator's listener decides them.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use discomy_protocol::coordinator::{CoordRequest, CoordResponse};
use discomy_protocol::fleet::{FleetAnswer, FleetCommand, FleetRole, HostFacts, JoinRequest};
use discomy_protocol::fleet::{JoinState, NodeRecord};
use discomy_protocol::ops::TokenCreated;
use discomy_protocol::tls::{CertInfo, pki};
use tokio_util::sync::CancellationToken;

use super::tokens_tests::create;
use super::{Ops, OpsConfig};
use crate::fleet::Fleet;
use crate::fleet::serve::decide;

const TICKET: &str = "00112233445566778899aabbccddeeff";

fn from() -> std::net::SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

/// A join request of `name` for `roles` with `token` in the token's place.
fn join(token: &str, name: &str, roles: &[FleetRole]) -> CoordRequest {
    let (csr_pem, _key) = pki::new_request(name).unwrap();
    CoordRequest::Join(JoinRequest {
        token: token.into(),
        name: name.into(),
        csr_pem,
        roles: roles.to_vec(),
        facts: HostFacts::default(),
        ticket: TICKET.into(),
    })
}

fn refused(answer: CoordResponse) -> String {
    match answer {
        CoordResponse::Refused { reason } => reason,
        other => panic!("not refused: {other:?}"),
    }
}

/// Enrols `name` with `token` as an agent; its certificate.
async fn enrol(fleet: &Fleet, token: &str, name: &str) -> CertInfo {
    let request = match decide(fleet, from(), None, join(token, name, &[FleetRole::Agent])).await {
        CoordResponse::Join(JoinState::Pending { request }) => request,
        other => panic!("{name} was not enrolled: {other:?}"),
    };
    let poll = CoordRequest::JoinPoll { request, ticket: TICKET.into() };
    match decide(fleet, from(), None, poll).await {
        CoordResponse::Join(JoinState::Approved { cert_pem }) => pki::read_pem(&cert_pem).unwrap(),
        other => panic!("{name} was not approved at once: {other:?}"),
    }
}

async fn renew(fleet: &Fleet, cert: &CertInfo) -> CoordResponse {
    let (csr_pem, _) = pki::new_request(&cert.name).unwrap();
    decide(fleet, from(), Some(cert), CoordRequest::Renew { csr_pem }).await
}

fn record(fleet: &Fleet, name: &str) -> NodeRecord {
    let FleetAnswer::Nodes(nodes) = fleet.command(FleetCommand::List).unwrap() else { panic!() };
    nodes.into_iter().find(|n| n.name == name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_token_enrols_agents_only_and_its_end_revokes_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = OpsConfig { state_dir: dir.path().join("ops"), ..Default::default() };
    let ops: Arc<Ops> = Ops::open(config, Some("farm-secret")).unwrap();
    let fleet =
        Arc::new(Fleet::open(&dir.path().join("fleet"), "t", Duration::from_secs(600)).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}/api/v1", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(super::serve(
        listener,
        Arc::clone(&ops),
        axum::Router::new(),
        shutdown.clone(),
    ));
    let made = |name: &'static str, scopes: &'static str, ttl: Option<u64>| {
        let api = api.clone();
        tokio::task::spawn_blocking(move || create(&api, "farm-secret", name, scopes, ttl))
    };
    let ci: TokenCreated = made("ci-runners", "compile", None).await.unwrap();
    let alice = made("alice", "submit,admin", None).await.unwrap();

    // Without a keeper of tenant tokens (a coordinator with no build queue) nothing enrols.
    let reason = refused(
        decide(&fleet, from(), None, join(&ci.token, "runner-0", &[FleetRole::Agent])).await,
    );
    assert!(reason.contains("keeps no tenant tokens"), "{reason}");
    ops.attach_fleet(&fleet);

    // A compile token enrols an agent at once, recorded as its doing.
    let runner = enrol(&fleet, &ci.token, "runner-1").await;
    assert_eq!(runner.roles, vec![FleetRole::Agent]);
    let listed = record(&fleet, "runner-1");
    assert_eq!(listed.state, "approved");
    assert_eq!(listed.enrolled_by, Some(format!("token {} (ci-runners)", ci.info.id)));

    // Refused, with nothing recorded: other roles, a token without the scope, a wrong secret.
    let worker = join(&ci.token, "donor-9", &[FleetRole::Agent, FleetRole::Worker]);
    let reason = refused(decide(&fleet, from(), None, worker).await);
    assert!(reason.contains("agents only"), "{reason}");
    let reason = refused(
        decide(&fleet, from(), None, join(&alice.token, "laptop-1", &[FleetRole::Agent])).await,
    );
    assert!(reason.contains("lacks the compile scope"), "{reason}");
    let forged = format!("dsc_{}_{}", ci.info.id, "0".repeat(32));
    let reason =
        refused(decide(&fleet, from(), None, join(&forged, "laptop-2", &[FleetRole::Agent])).await);
    assert!(reason.contains("unknown or revoked"), "{reason}");
    let FleetAnswer::Nodes(nodes) = fleet.command(FleetCommand::List).unwrap() else { panic!() };
    assert_eq!(nodes.len(), 1, "a refused enrolment left a record: {nodes:?}");

    // It renews while the token lives.
    let CoordResponse::Join(JoinState::Approved { cert_pem }) = renew(&fleet, &runner).await else {
        panic!("a live token's agent could not renew")
    };
    let renewed = pki::read_pem(&cert_pem).unwrap();

    // A token that expired: the agent's renewal is refused and the agent revoked.
    let brief = made("brief", "compile", Some(1)).await.unwrap();
    let laptop = enrol(&fleet, &brief.token, "laptop-3").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reason = refused(renew(&fleet, &laptop).await);
    assert!(reason.contains("expired"), "{reason}");
    assert_eq!(record(&fleet, "laptop-3").state, "revoked");
    assert!(fleet.watch_revoked().borrow().contains(&laptop.serial));

    // Revoking the token through the API revokes its agent, every serial, and closes its
    // connections.
    let session = fleet.session(&renewed);
    let url = format!("{api}/tokens/{}", ci.info.id);
    let status = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).build().into();
        agent
            .delete(&url)
            .header("Authorization", "Bearer farm-secret")
            .call()
            .unwrap()
            .status()
            .as_u16()
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(record(&fleet, "runner-1").state, "revoked");
    assert!(session.is_cancelled(), "the revoked agent's connection stayed open");
    let revoked = fleet.watch_revoked().borrow().clone();
    assert!(revoked.contains(&runner.serial) && revoked.contains(&renewed.serial));
    let reason = refused(renew(&fleet, &renewed).await);
    assert!(reason.contains("no approved node"), "{reason}");

    shutdown.cancel();
    server.await.unwrap().unwrap();
}
