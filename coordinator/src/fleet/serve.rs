//! The fleet on the coordinator's listener: what a peer may ask, given the certificate it
//! showed (none for a host still joining), and the answers to joins, polls, renewals and
//! operators' commands.

use std::net::SocketAddr;

use discomy_protocol::ProtocolError;
use discomy_protocol::asyncio::{Conn, send};
use discomy_protocol::coordinator::{CoordRequest, CoordResponse};
use discomy_protocol::fleet::FleetRole;
use discomy_protocol::tls::{CertInfo, FarmStream};
use tracing::warn;

use super::Fleet;

const PLAIN: &str = "this coordinator has no farm CA (a plain-token lab farm): joining, \
                     renewing and fleet commands need one (discomy-coordinator --fleet-dir)";

/// Whether a peer showing `cert` may open with `first`; `Err` says why not. Without a fleet
/// (plain TCP) only the fleet's own messages are refused: the token was the check.
pub fn admit(
    fleet: Option<&Fleet>,
    cert: Option<&CertInfo>,
    first: &CoordRequest,
) -> Result<(), String> {
    let fleet_message = matches!(
        first,
        CoordRequest::Join(_)
            | CoordRequest::JoinPoll { .. }
            | CoordRequest::Renew { .. }
            | CoordRequest::Fleet(_)
    );
    if fleet.is_none() {
        return if fleet_message { Err(PLAIN.into()) } else { Ok(()) };
    }
    let needs = match first {
        CoordRequest::Join(_) | CoordRequest::JoinPoll { .. } => return Ok(()),
        CoordRequest::NodeLogin(_) => Some(FleetRole::Worker),
        CoordRequest::AgentLogin { .. } => Some(FleetRole::Agent),
        CoordRequest::Fleet(_) => Some(FleetRole::Admin),
        // Any farm certificate.
        _ => None,
    };
    let Some(cert) = cert else {
        return Err("a farm certificate is needed for this (join the fleet first)".into());
    };
    match needs {
        Some(role) if !cert.has(role) => Err(format!(
            "the certificate of {} does not carry the {role} role (it has: {})",
            cert.name,
            cert.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
        )),
        _ => Ok(()),
    }
}

/// Answers one fleet message (admitted by [`admit`]).
pub async fn answer(
    fleet: &Fleet,
    conn: &mut Conn<FarmStream>,
    peer: SocketAddr,
    cert: Option<&CertInfo>,
    msg: CoordRequest,
) -> Result<(), ProtocolError> {
    let outcome = match msg {
        CoordRequest::Join(req) => fleet.join(req, peer).map(CoordResponse::Join),
        CoordRequest::JoinPoll { request, ticket } => {
            Ok(CoordResponse::Join(fleet.poll(request, &ticket)))
        }
        CoordRequest::Renew { csr_pem } => match cert {
            Some(cert) => fleet.renew(cert, &csr_pem).map(CoordResponse::Join),
            None => Err("renewing needs the current certificate".into()),
        },
        CoordRequest::Fleet(cmd) => fleet.command(cmd).map(CoordResponse::Fleet),
        other => Err(format!("not a fleet message: {other:?}")),
    };
    let response = outcome.unwrap_or_else(|reason| {
        warn!(%peer, %reason, "fleet request refused");
        CoordResponse::Refused { reason }
    });
    send(conn, &response).await.map(|_| ())
}

/// Revocations for a node's or agent's session: the receiver, and the serials revoked so far
/// (sent right after the welcome when there are any).
pub fn revocations(fleet: Option<&Fleet>) -> (Option<Revocations>, Vec<String>) {
    match fleet {
        None => (None, Vec::new()),
        Some(f) => {
            let mut rx = f.watch_revoked();
            let now = rx.borrow_and_update().to_vec();
            (Some(rx), now)
        }
    }
}

/// What [`revocations`] watches.
pub type Revocations = tokio::sync::watch::Receiver<std::sync::Arc<Vec<String>>>;

/// The revoked serials once they change (never, without a fleet).
pub async fn next_revocation(rx: &mut Option<Revocations>) -> Vec<String> {
    if let Some(rx) = rx {
        if rx.changed().await.is_ok() {
            return rx.borrow_and_update().to_vec();
        }
    }
    std::future::pending().await
}
