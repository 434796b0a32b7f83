//! The fleet's records: tokens admit a bounded number of joins, approval issues a certificate
//! with the roles asked, revocation refuses every serial the node had, and it all survives a
//! restart.

use std::time::Duration;

use discomy_protocol::fleet::{
    FleetAnswer, FleetCommand, FleetRole, HostFacts, JoinRequest, JoinState,
};
use discomy_protocol::tls::pki;

use super::Fleet;

fn token(fleet: &Fleet, uses: u32) -> String {
    match fleet.command(FleetCommand::CreateToken { uses, ttl_secs: 60 }).unwrap() {
        FleetAnswer::Token { token, .. } => token,
        other => panic!("{other:?}"),
    }
}

fn ask(token: &str, name: &str) -> JoinRequest {
    let (csr_pem, _key) = pki::new_request(name).unwrap();
    JoinRequest {
        token: token.into(),
        name: name.into(),
        csr_pem,
        roles: vec![FleetRole::Worker],
        facts: HostFacts::default(),
        ticket: TICKET.into(),
    }
}

const FROM: &str = "127.0.0.1:9";
const TICKET: &str = "00112233445566778899aabbccddeeff";

#[test]
fn a_join_token_is_bounded_and_approval_issues_the_roles_asked() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::open(dir.path(), "t", Duration::from_secs(600)).unwrap();
    let t = token(&fleet, 1);
    let JoinState::Pending { request } =
        fleet.join(ask(&t, "donor-1"), FROM.parse().unwrap()).unwrap()
    else {
        panic!()
    };
    // Used up, forged, and malformed tokens are refused.
    assert!(fleet.join(ask(&t, "donor-2"), FROM.parse().unwrap()).unwrap_err().contains("used up"));
    let forged = format!("{}.{}", t.split('.').next().unwrap(), "00".repeat(16));
    assert!(fleet.join(ask(&forged, "donor-3"), FROM.parse().unwrap()).is_err());
    assert!(fleet.join(ask("nodot", "donor-3"), FROM.parse().unwrap()).is_err());
    assert_eq!(fleet.poll(request, TICKET), JoinState::Pending { request });

    fleet.command(FleetCommand::Approve { request }).unwrap();
    let JoinState::Approved { cert_pem } = fleet.poll(request, TICKET) else { panic!() };
    // Someone without the joiner's ticket learns nothing of the request.
    let other = fleet.poll(request, "ffeeddccbbaa99887766554433221100");
    assert!(matches!(other, JoinState::Rejected { .. }), "{other:?}");
    let info = pki::read_pem(&cert_pem).unwrap();
    assert_eq!((info.name.as_str(), info.roles.clone()), ("donor-1", vec![FleetRole::Worker]));
    assert!(fleet.command(FleetCommand::Approve { request }).is_err(), "approved twice");

    // Revoked: the serial is refused by the coordinator's TLS, also after a restart.
    fleet.command(FleetCommand::Revoke { name: "donor-1".into() }).unwrap();
    assert!(fleet.tls.revoked().contains(&info.serial));
    assert!(matches!(fleet.poll(request, TICKET), JoinState::Rejected { .. }));
    drop(fleet);
    let again = Fleet::open(dir.path(), "t", Duration::from_secs(600)).unwrap();
    assert!(again.tls.revoked().contains(&info.serial));
    assert!(matches!(again.poll(request, TICKET), JoinState::Rejected { .. }));
    // The token's secret is not on disk.
    let text = std::fs::read_to_string(dir.path().join("fleet.json")).unwrap();
    assert!(!text.contains(t.split('.').nth(1).unwrap()));
    use std::os::unix::fs::PermissionsExt;
    for f in ["ca.key", "admin.key", "fleet.json"] {
        let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others");
    }
}

#[test]
fn a_node_renews_only_with_a_certificate_it_was_given() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::open(dir.path(), "t", Duration::from_secs(600)).unwrap();
    let t = token(&fleet, 2);
    let JoinState::Pending { request } =
        fleet.join(ask(&t, "donor-1"), FROM.parse().unwrap()).unwrap()
    else {
        panic!()
    };
    fleet.command(FleetCommand::Approve { request }).unwrap();
    let JoinState::Approved { cert_pem } = fleet.poll(request, TICKET) else { panic!() };
    let first = pki::read_pem(&cert_pem).unwrap();
    let (csr, _) = pki::new_request("donor-1").unwrap();
    let JoinState::Approved { cert_pem } = fleet.renew(&first, &csr).unwrap() else { panic!() };
    let second = pki::read_pem(&cert_pem).unwrap();
    assert_ne!(first.serial, second.serial);
    assert_eq!(second.roles, first.roles);
    let stranger = pki::CertInfo { serial: "01".into(), ..first.clone() };
    assert!(fleet.renew(&stranger, &csr).is_err());
}

#[test]
fn a_tenant_token_enrols_a_bounded_number_of_agents() {
    use super::tenant::Tenant;
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::open(dir.path(), "t", Duration::from_secs(600)).unwrap();
    let ci = Tenant { id: 7, name: "ci".into(), compile: true };
    let agent = |name: &str| JoinRequest { roles: vec![FleetRole::Agent], ..ask("dsc_7_x", name) };
    for name in ["runner-1", "runner-2"] {
        let state = fleet.enrol_within(agent(name), FROM.parse().unwrap(), &ci, 2).unwrap();
        assert!(matches!(state, JoinState::Pending { .. }), "{state:?}");
    }
    let third = fleet.enrol_within(agent("runner-3"), FROM.parse().unwrap(), &ci, 2);
    assert!(third.unwrap_err().contains("enrolled 2 agents already"));
    // Another token's agents are counted apart; a revoked agent frees its place.
    let other = Tenant { id: 8, name: "ci2".into(), compile: true };
    fleet.enrol_within(agent("runner-4"), FROM.parse().unwrap(), &other, 2).unwrap();
    fleet.command(FleetCommand::Revoke { name: "runner-1".into() }).unwrap();
    fleet.enrol_within(agent("runner-5"), FROM.parse().unwrap(), &ci, 2).unwrap();
    assert_eq!(fleet.enrolled_by("runner-5"), Some(7));
    // The token's end revokes its agents only.
    assert_eq!(fleet.revoke_enrolled_by(7, "test").unwrap(), 2);
    assert_eq!(fleet.enrolled_by("runner-4"), Some(8));
}
