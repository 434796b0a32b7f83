//! The Fleet tab, served in-process on loopback with a real fleet directory: a pending request
//! is listed with its facts escaped, an admin approves it (the node then holds a certificate), a
//! submit-scoped session and a missing or wrong CSRF token are refused, and a coordinator
//! without a fleet says so.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use discomy_protocol::fleet::{
    FleetAnswer, FleetCommand, FleetRole, HostFacts, JoinRequest, JoinState,
};
use discomy_protocol::tls::pki;
use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;
use crate::ops::tokens_tests::{create, ui_call};
use crate::ops::{Ops, OpsConfig};
use crate::server::{CoordinatorConfig, FarmHandle};

const TICKET: &str = "00112233445566778899aabbccddeeff";
const HOSTILE: &str = "<script>alert(1)</script>";

/// A join request from `name` whose organisation and contact are hostile markup.
fn ask(fleet: &Fleet, name: &str) -> Result<u64, String> {
    let FleetAnswer::Token { token, .. } =
        fleet.command(FleetCommand::CreateToken { uses: 1, ttl_secs: 60 }).unwrap()
    else {
        panic!("no token")
    };
    let (csr_pem, _key) = pki::new_request("x").unwrap();
    let facts = HostFacts {
        organisation: HOSTILE.into(),
        contact: format!("\"><img src=x onerror=alert(2)> {name}@example.org"),
        cores: 8,
        memory_bytes: 16 << 30,
        disk_bytes: 100 << 30,
        network: "'onmouseover='alert(3)".into(),
    };
    let req = JoinRequest {
        token,
        name: name.into(),
        csr_pem,
        roles: vec![FleetRole::Worker, FleetRole::Builder],
        facts,
        ticket: TICKET.into(),
    };
    match fleet.join(req, "127.0.0.1:9".parse().unwrap())? {
        JoinState::Pending { request } => Ok(request),
        other => panic!("{other:?}"),
    }
}

async fn serve(fleet: Option<Arc<Fleet>>) -> (String, CancellationToken, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = OpsConfig { state_dir: dir.path().join("state"), ..Default::default() };
    let ops: Arc<Ops> = Ops::open(config, Some("farm-secret")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let auth = discomy_protocol::AuthConfig::from_option(Some("farm-secret"));
    let mut coordinator = CoordinatorConfig::new("t", auth);
    coordinator.fleet = fleet;
    let farm = FarmHandle::new(coordinator);
    let ui = super::router(Arc::clone(&ops), farm, shutdown.clone()).unwrap();
    tokio::spawn(crate::ops::serve(listener, ops, ui, shutdown.clone()));
    (base, shutdown, dir)
}

/// A session of `token` on the Fleet page: (cookie, CSRF token, the page).
fn session(base: &str, token: &str) -> (String, String, String) {
    let (status, cookie, _) =
        ui_call(&format!("{base}/ui/login"), None, Some(&format!("token={token}")));
    assert_eq!(status, 303);
    let (status, _, html) = ui_call(&format!("{base}/ui/fleet"), Some(&cookie), None);
    assert_eq!(status, 200, "{html}");
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap();
    (cookie, csrf.to_owned(), html)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_tab_lists_requests_and_an_admin_decides() {
    let fleet_dir = tempfile::tempdir().unwrap();
    let fleet = Arc::new(Fleet::open(fleet_dir.path(), "t", Duration::from_secs(600)).unwrap());
    let first = ask(&fleet, "donor-1").unwrap();
    let second = ask(&fleet, "donor-2").unwrap();
    // A name is never markup: the join itself refuses it.
    assert!(ask(&fleet, HOSTILE).unwrap_err().contains("not 1-64"));
    let (base, shutdown, _dir) = serve(Some(Arc::clone(&fleet))).await;
    let checked = Arc::clone(&fleet);
    tokio::task::spawn_blocking(move || {
        let api = format!("{base}/api/v1");
        let boss = create(&api, "farm-secret", "boss", "admin", None);
        let viewer = create(&api, "farm-secret", "viewer", "submit", None);
        let (cookie, csrf, html) = session(&base, &boss.token);
        // Listed, pending, with the facts escaped wherever they appear.
        assert!(html.contains(&format!("<tr id=\"node-{first}\" data-state=\"pending\">")));
        assert!(html.contains("donor-1") && html.contains("worker, builder"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
        assert!(!html.contains("<script>alert") && !html.contains("<img"), "{html}");
        assert!(!html.contains("'onmouseover"), "{html}");
        assert!(html.contains(&format!("id=\"approve-{first}\"")), "{html}");
        let post = |id: u64, action: &str, cookie: &str, form: &str| {
            ui_call(&format!("{base}/ui/fleet/{id}/{action}"), Some(cookie), Some(form)).0
        };
        // No CSRF token, a wrong one, or a submit-scoped session: refused, nothing changes.
        assert_eq!(post(first, "approve", &cookie, ""), 403);
        assert_eq!(post(first, "approve", &cookie, &format!("csrf={}", "0".repeat(64))), 403);
        let (v_cookie, v_csrf, v_html) = session(&base, &viewer.token);
        assert!(!v_html.contains("id=\"approve-"), "a viewer sees no buttons");
        assert_eq!(post(first, "approve", &v_cookie, &format!("csrf={v_csrf}")), 403);
        assert!(matches!(checked.poll(first, TICKET), JoinState::Pending { .. }));
        // The admin approves one and rejects the other.
        assert_eq!(post(first, "approve", &cookie, &format!("csrf={csrf}")), 303);
        assert_eq!(post(second, "reject", &cookie, &format!("csrf={csrf}&reason=unknown")), 303);
        assert_eq!(post(second, "approve", &cookie, &format!("csrf={csrf}")), 409);
        assert_eq!(post(99, "approve", &cookie, &format!("csrf={csrf}")), 404);
        let JoinState::Approved { cert_pem } = checked.poll(first, TICKET) else {
            panic!("not approved")
        };
        let info = pki::read_pem(&cert_pem).unwrap();
        assert_eq!(info.name, "donor-1");
        assert_eq!(info.roles, vec![FleetRole::Worker, FleetRole::Builder]);
        let (_, _, html) = ui_call(&format!("{base}/ui/fleet"), Some(&cookie), None);
        assert!(html.contains(&format!("<tr id=\"node-{first}\" data-state=\"approved\">")));
        assert!(html.contains(&info.serial), "the serial is shown");
        assert!(html.contains(&format!("<tr id=\"node-{second}\" data-state=\"rejected\">")));
        // Revoked from the web UI: its serial is refused from now on.
        assert_eq!(post(second, "revoke", &cookie, &format!("csrf={csrf}")), 409);
        assert_eq!(post(first, "revoke", &cookie, &format!("csrf={csrf}")), 303);
        assert!(matches!(checked.poll(first, TICKET), JoinState::Rejected { .. }));
    })
    .await
    .unwrap();
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fleet_the_tab_says_so() {
    let (base, shutdown, _dir) = serve(None).await;
    tokio::task::spawn_blocking(move || {
        let (cookie, csrf, html) = session(&base, "farm-secret");
        assert!(html.contains("without a working fleet"), "{html}");
        let form = format!("csrf={csrf}");
        let (status, _, _) =
            ui_call(&format!("{base}/ui/fleet/1/approve"), Some(&cookie), Some(&form));
        assert_eq!(status, 404);
    })
    .await
    .unwrap();
    shutdown.cancel();
}
