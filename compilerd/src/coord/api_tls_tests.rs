//! [`ApiClient`] against a working fleet's coordinator served in-process on loopback over
//! HTTPS: a builder's whole exchange (report, assignment, source download, log, artefact upload,
//! finish) with its node certificate from a fleet directory, read again after a renewal; a user
//! with `--ca` only; an `https://` URL without a CA refused before anything is sent.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use discomy_coordinator::fleet::Fleet;
use discomy_coordinator::ops::{Ops, OpsConfig};
use discomy_protocol::fleet::{
    FleetAnswer, FleetCommand, FleetRole, HostFacts, JoinRequest, JoinState,
};
use discomy_protocol::ops::{
    BuilderReport, FinishRequest, JobSource, JobState, Outcome, SubmitRequest, Target,
};
use discomy_protocol::tls::pki;
use tokio_util::sync::CancellationToken;

use super::api::{ApiClient, ApiTls};

const TICKET: &str = "00112233445566778899aabbccddeeff";

fn write_identity(dir: &std::path::Path, ca: &str, cert: &str, key: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca.pem"), ca).unwrap();
    std::fs::write(dir.join("node.pem"), cert).unwrap();
    std::fs::write(dir.join("node.key"), key).unwrap();
    std::fs::set_permissions(dir.join("node.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Writes an approved builder's `ca.pem`, `node.pem` and `node.key` into `dir`.
fn enrol(fleet: &Fleet, dir: &std::path::Path) {
    let FleetAnswer::Token { token, .. } =
        fleet.command(FleetCommand::CreateToken { uses: 1, ttl_secs: 60 }).unwrap()
    else {
        panic!()
    };
    let (csr_pem, key) = pki::new_request("builder-1").unwrap();
    let req = JoinRequest {
        token,
        name: "builder-1".into(),
        csr_pem,
        roles: vec![FleetRole::Builder],
        facts: HostFacts::default(),
        ticket: TICKET.into(),
    };
    let JoinState::Pending { request } = fleet.join(req, "127.0.0.1:9".parse().unwrap()).unwrap()
    else {
        panic!()
    };
    fleet.command(FleetCommand::Approve { request }).unwrap();
    let JoinState::Approved { cert_pem } = fleet.poll(request, TICKET) else { panic!() };
    write_identity(dir, fleet.ca_pem(), &cert_pem, &key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builder_uploads_over_https_with_its_node_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let fleet =
        Arc::new(Fleet::open(&dir.path().join("fleet"), "t", Duration::from_secs(600)).unwrap());
    let config = OpsConfig { state_dir: dir.path().join("state"), ..Default::default() };
    let ops: Arc<Ops> = Ops::open(config, Some("farm-secret")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = fleet.https(&discomy_coordinator::fleet::https_names(addr, &[]).unwrap()).unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(discomy_coordinator::ops::serve_with(
        listener,
        Some(tls),
        ops,
        axum::Router::new(),
        shutdown.clone(),
    ));
    let node_dir = dir.path().join("node");
    enrol(&fleet, &node_dir);
    let work = dir.path().join("work");
    tokio::task::spawn_blocking(move || {
        let url = format!("https://127.0.0.1:{}", addr.port());
        let token = Some("farm-secret".to_owned());
        // No CA: refused with the reason, never sent unverified.
        let err = ApiClient::new(&url, token.clone()).unwrap_err().to_string();
        assert!(err.contains("farm CA") && err.contains("never"), "{err}");
        // A user with the CA only submits a source.
        let user_tls = ApiTls::ca_file(&node_dir.join("ca.pem")).unwrap();
        let user = ApiClient::with_tls(&url, token.clone(), user_tls).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let src = work.join("lua-5.4-1.src.rpm");
        std::fs::write(&src, b"not really an rpm").unwrap();
        let srpm = user.put_blob(&src).unwrap();
        let req = SubmitRequest {
            source: JobSource::Srpm { srpm: srpm.clone() },
            target: Target { chroot: "rocky-9".into(), arch: "x86_64".into() },
            priority: 0,
            batch: None,
            submitter: "test".into(),
            timeout_secs: None,
            requires: Vec::new(),
            provides: Vec::new(),
        };
        let id = user.submit(&req).unwrap().id;
        // The builder, from its fleet directory: report, download, log, upload, finish.
        let tls = ApiTls::from_args(None, Some(&node_dir)).unwrap();
        let builder = ApiClient::with_tls(&url, token.clone(), tls).unwrap();
        assert!(builder.base_url().starts_with("https://"));
        let report = BuilderReport {
            builder: "builder-1".into(),
            slots: 1,
            memory_bytes: 8 << 30,
            disk_free_bytes: 100 << 30,
            arches: vec!["x86_64".into()],
            chroots: vec!["rocky-9".into()],
            held: Vec::new(),
            wants_work: true,
        };
        let assignment = builder.report(&report).unwrap().assignment.expect("an assignment");
        assert_eq!(assignment.job, id);
        builder.get_blob(&srpm, &work.join("download.src.rpm")).unwrap();
        builder.append_log(id, assignment.attempt, 0, b"building\n").unwrap();
        // Renewal replaces the node's certificate on disk: the next calls show the new one.
        let (csr, key) = pki::new_request("builder-1").unwrap();
        let old = std::fs::read_to_string(node_dir.join("node.pem")).unwrap();
        let JoinState::Approved { cert_pem } =
            fleet.renew(&pki::read_pem(&old).unwrap(), &csr).unwrap()
        else {
            panic!()
        };
        std::thread::sleep(Duration::from_millis(20));
        write_identity(&node_dir, fleet.ca_pem(), &cert_pem, &key);
        let rpm = work.join("lua-5.4-1.x86_64.rpm");
        std::fs::write(&rpm, vec![7u8; 300_000]).unwrap();
        let name = "lua-5.4-1.x86_64.rpm";
        let blob = builder.put_artifact(id, assignment.attempt, name, &rpm).unwrap();
        let finish = FinishRequest {
            builder: "builder-1".into(),
            attempt: assignment.attempt,
            outcome: Outcome::Succeeded,
        };
        assert_eq!(builder.finish(id, &finish).unwrap().state, JobState::Succeeded);
        // What was uploaded is what the user gets back.
        let job = user.job(id).unwrap().job;
        assert_eq!(job.artifacts.iter().find(|a| a.name == name).unwrap().blake3, blob.blake3);
        user.get_blob(&blob, &work.join("back.rpm")).unwrap();
        assert_eq!(std::fs::read(work.join("back.rpm")).unwrap(), vec![7u8; 300_000]);
    })
    .await
    .unwrap();
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
