//! The fleet on the coordinator's listener: what a peer may ask, given the certificate it
//! showed (none for a host still joining), and the answers to joins, polls, renewals and
//! operators' commands.

use std::net::SocketAddr;

use discomy_protocol::ProtocolError;
use discomy_protocol::asyncio::{Conn, recv, send};
use discomy_protocol::coordinator::{CoordRequest, CoordResponse};
use discomy_protocol::fleet::{FleetRole, JoinState};
use discomy_protocol::ops::TOKEN_PREFIX;
use discomy_protocol::tls::{CertInfo, FarmStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Fleet;
use super::tenant::{NoTenant, TenantAsk};

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
            | CoordRequest::WatchRevoked
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
    let response = decide(fleet, peer, cert, msg).await;
    send(conn, &response).await.map(|_| ())
}

/// The answer to one fleet message from `peer` showing `cert`.
pub async fn decide(
    fleet: &Fleet,
    peer: SocketAddr,
    cert: Option<&CertInfo>,
    msg: CoordRequest,
) -> CoordResponse {
    let outcome = match msg {
        // A tenant token (`dsc_…`) in place of a join token: an agent enrolled at once.
        CoordRequest::Join(req) if req.token.starts_with(TOKEN_PREFIX) => {
            match fleet.tenant(TenantAsk::Token(req.token.clone())).await {
                Ok(tenant) => fleet.enrol(req, peer, &tenant).map(CoordResponse::Join),
                Err(why) => Err(format!("tenant token refused: {why}")),
            }
        }
        CoordRequest::Join(req) => fleet.join(req, peer).map(CoordResponse::Join),
        CoordRequest::JoinPoll { request, ticket } => {
            Ok(CoordResponse::Join(fleet.poll(request, &ticket)))
        }
        CoordRequest::Renew { csr_pem } => match cert {
            Some(cert) => renew(fleet, cert, &csr_pem).await.map(CoordResponse::Join),
            None => Err("renewing needs the current certificate".into()),
        },
        CoordRequest::Fleet(cmd) => fleet.command(cmd).map(CoordResponse::Fleet),
        other => Err(format!("not a fleet message: {other:?}")),
    };
    outcome.unwrap_or_else(|reason| {
        warn!(%peer, %reason, "fleet request refused");
        CoordResponse::Refused { reason }
    })
}

/// A renewal; an agent a tenant token enrolled renews only while the token lives, and is
/// revoked once it does not.
async fn renew(fleet: &Fleet, cert: &CertInfo, csr_pem: &str) -> Result<JoinState, String> {
    if let Some(token) = fleet.enrolled_by(&cert.name) {
        match fleet.tenant(TenantAsk::Live(token)).await {
            Ok(_) => {}
            Err(NoTenant::Refused(why)) => {
                let reason = format!("the tenant token {token} that enrolled this agent: {why}");
                fleet.revoke_enrolled_by(token, &reason)?;
                return Err(reason);
            }
            // Tried again by the agent; its certificate outlives a short outage.
            Err(err @ NoTenant::Unavailable(_)) => return Err(err.to_string()),
        }
    }
    fleet.renew(cert, csr_pem)
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

/// Serves [`CoordRequest::WatchRevoked`]: every revoked serial now, then again at each
/// change, until the peer leaves or `shutdown`.
pub async fn watch(fleet: &Fleet, conn: &mut Conn<FarmStream>, shutdown: &CancellationToken) {
    let (mut rx, serials) = revocations(Some(fleet));
    if send(conn, &CoordResponse::Revoked { serials }).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            serials = next_revocation(&mut rx) => {
                if send(conn, &CoordResponse::Revoked { serials }).await.is_err() {
                    return;
                }
            }
            // A watcher sends nothing more; reading notices it leave.
            msg = recv::<_, CoordRequest>(conn) => {
                if msg.is_err() {
                    return;
                }
            }
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
