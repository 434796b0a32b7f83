//! The build queue's API and web UI over the working fleet's HTTPS, served in-process on
//! loopback: a client trusting the farm CA is served (with or without a farm certificate of its
//! own), one trusting another CA is refused, a revoked certificate is refused, and plain HTTP
//! to the HTTPS port gets a 400 telling it to use https, never a page.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use discomy_protocol::fleet::JoinState;
use discomy_protocol::fleet::{FleetAnswer, FleetCommand, FleetRole, HostFacts, JoinRequest};
use discomy_protocol::tls::{Ca, pki};
use tokio_util::sync::CancellationToken;

use super::{Ops, OpsConfig};
use crate::fleet::Fleet;

/// A ureq agent trusting `ca_pem`, showing `identity` (certificate, key) when given.
fn agent(ca_pem: &str, identity: Option<(&str, &str)>) -> ureq::Agent {
    let certs = |pem: &str| {
        ureq::tls::parse_pem(pem.as_bytes())
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let client = identity.map(|(cert, key)| {
        ureq::tls::ClientCert::new_with_certs(
            &certs(cert),
            ureq::tls::PrivateKey::from_pem(key.as_bytes()).unwrap(),
        )
    });
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs(ca_pem))))
        .client_cert(client)
        .build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(10)))
        .tls_config(tls)
        .build()
        .into()
}

fn get(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Result<(u16, String), String> {
    let req = agent.get(url);
    let req = match token {
        Some(t) => req.header("Authorization", format!("Bearer {t}")),
        None => req,
    };
    let mut resp = req.call().map_err(|e| e.to_string())?;
    Ok((resp.status().as_u16(), resp.body_mut().read_to_string().unwrap_or_default()))
}

/// An approved node's certificate and key, and its serial.
fn node(fleet: &Fleet, name: &str) -> (String, String, String) {
    let FleetAnswer::Token { token, .. } =
        fleet.command(FleetCommand::CreateToken { uses: 1, ttl_secs: 60 }).unwrap()
    else {
        panic!()
    };
    let (csr_pem, key) = pki::new_request(name).unwrap();
    let ticket = "00112233445566778899aabbccddeeff".to_owned();
    let req = JoinRequest {
        token,
        name: name.into(),
        csr_pem,
        roles: vec![FleetRole::Builder],
        facts: HostFacts::default(),
        ticket: ticket.clone(),
    };
    let JoinState::Pending { request } = fleet.join(req, "127.0.0.1:9".parse().unwrap()).unwrap()
    else {
        panic!()
    };
    fleet.command(FleetCommand::Approve { request }).unwrap();
    let JoinState::Approved { cert_pem } = fleet.poll(request, &ticket) else { panic!() };
    let serial = pki::read_pem(&cert_pem).unwrap().serial;
    (cert_pem, key, serial)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_the_web_ui_are_served_over_https_with_the_farm_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let fleet =
        Arc::new(Fleet::open(&dir.path().join("fleet"), "t", Duration::from_secs(600)).unwrap());
    let config = OpsConfig { state_dir: dir.path().join("state"), ..Default::default() };
    let ops: Arc<Ops> = Ops::open(config, Some("farm-secret")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let names = crate::fleet::https_names(addr, &[]).unwrap();
    let tls = fleet.https(&names).unwrap();
    let shutdown = CancellationToken::new();
    let auth = discomy_protocol::AuthConfig::from_option(Some("farm-secret"));
    let mut coordinator = crate::server::CoordinatorConfig::new("t", auth);
    coordinator.fleet = Some(Arc::clone(&fleet));
    let farm = crate::server::FarmHandle::new(coordinator);
    let ui = crate::wuimy::router(Arc::clone(&ops), farm, shutdown.clone()).unwrap();
    let served = Arc::clone(&tls);
    let server = tokio::spawn(super::serve_with(listener, Some(tls), ops, ui, shutdown.clone()));
    let ca_pem = fleet.ca_pem().to_owned();
    let (cert, key, serial) = node(&fleet, "builder-1");
    let (revoked_cert, revoked_key, _) = node(&fleet, "builder-2");
    fleet.command(FleetCommand::Revoke { name: "builder-2".into() }).unwrap();
    let renewing = Arc::clone(&fleet);
    tokio::task::spawn_blocking(move || {
        let jobs = format!("https://127.0.0.1:{}/api/v1/jobs", addr.port());
        // The farm CA: served, by address and by name, with and without a certificate.
        let trusted = agent(&ca_pem, None);
        assert_eq!(get(&trusted, &jobs, Some("farm-secret")).unwrap(), (200, "[]".into()));
        let by_name = format!("https://localhost:{}/api/v1/jobs", addr.port());
        assert_eq!(get(&trusted, &by_name, Some("farm-secret")).unwrap().0, 200);
        assert_eq!(get(&trusted, &jobs, None).unwrap().0, 401, "TLS does not replace tokens");
        let builder = agent(&ca_pem, Some((&cert, &key)));
        assert_eq!(get(&builder, &jobs, Some("farm-secret")).unwrap().0, 200, "{serial}");
        let login = format!("https://127.0.0.1:{}/ui/login", addr.port());
        let (status, page) = get(&trusted, &login, None).unwrap();
        assert!(status == 200 && page.contains("Log in"), "{status} {page}");
        // Its session cookie is for HTTPS only.
        let resp = trusted
            .post(&login)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send("token=farm-secret")
            .unwrap();
        assert_eq!(resp.status().as_u16(), 303);
        let cookie = resp.headers().get("set-cookie").unwrap().to_str().unwrap();
        assert!(cookie.contains("HttpOnly") && cookie.ends_with("; Secure"), "{cookie}");
        // Another CA, even one naming the same roles and names, is refused.
        let (other, _) = Ca::create("rogue").unwrap();
        let err = get(&agent(other.pem(), None), &jobs, Some("farm-secret")).unwrap_err();
        assert!(err.to_lowercase().contains("certificate"), "{err}");
        // A revoked node's certificate is refused at the handshake.
        let revoked = agent(&ca_pem, Some((&revoked_cert, &revoked_key)));
        assert!(get(&revoked, &jobs, Some("farm-secret")).is_err());
        // Plain HTTP to the HTTPS port: a 400 saying so, nothing of the API.
        let plain: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let url = format!("http://127.0.0.1:{}/api/v1/jobs", addr.port());
        let (status, body) = get(&plain, &url, Some("farm-secret")).unwrap();
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("HTTPS only") && !body.contains('['), "{body}");
        // A renewed certificate (the coordinator's daily swap) serves the next connections.
        let before = served.own().unwrap().serial;
        renewing.renew_https(&served, &names).unwrap();
        assert_ne!(served.own().unwrap().serial, before);
        assert_eq!(get(&agent(&ca_pem, None), &jobs, Some("farm-secret")).unwrap().0, 200);
    })
    .await
    .unwrap();
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
