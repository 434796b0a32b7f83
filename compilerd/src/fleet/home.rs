//! The coordinator a host enrolled with, for the daemons that have no session with a
//! coordinator of their own (a host-list agent in a fleet): it renews its certificate there
//! and keeps a revocation watch on it ([`CoordRequest::WatchRevoked`]), so that a revoked
//! worker is refused by it within seconds, as by agents that log in.
//!
//! `discomy-compilerd join` writes the address it joined through into the fleet directory's
//! `coordinator` file; [`remember`] reads it at start-up.

use std::sync::OnceLock;
use std::time::Duration;

use discomy_protocol::AuthConfig;
use discomy_protocol::asyncio::{client_handshake, recv, send};
use discomy_protocol::coordinator::{CoordRequest, CoordResponse};
use discomy_protocol::fleet::FleetRole;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{FleetDir, FleetError};

/// The file of the fleet directory that names the coordinator.
pub const FILE: &str = "coordinator";
/// Longest address kept in it.
const MAX_ADDR: u64 = 256;
/// Wait before watching again after the watch ended.
const RETRY: Duration = Duration::from_secs(5);

static HOME: OnceLock<String> = OnceLock::new();

impl FleetDir {
    /// The coordinator this host enrolled through, if `join` wrote it.
    pub fn enrolled_coordinator(&self) -> Option<String> {
        let bytes = discomy_protocol::plumbing::read_untrusted(&self.path(FILE), MAX_ADDR).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let addr = text.trim();
        let plain = !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_graphic());
        plain.then(|| addr.to_owned())
    }

    /// Records the coordinator this host enrolled through.
    pub(super) fn write_enrolled_coordinator(&self, addr: &str) -> Result<(), FleetError> {
        self.write(FILE, &format!("{addr}\n"), 0o644)
    }
}

/// Remembers the coordinator `dir` enrolled with, for [`enrolled`] (once per process).
pub fn remember(dir: &FleetDir) {
    if let Some(addr) = dir.enrolled_coordinator() {
        let _ = HOME.set(addr);
    }
}

/// The coordinator this process's host enrolled with, once [`remember`]ed.
pub fn enrolled() -> Option<&'static str> {
    HOME.get().map(String::as_str)
}

/// Keeps a revocation watch on the enrolled coordinator until `shutdown`, learning every
/// revoked serial ([`super::learn_revoked`]); watches again after [`RETRY`] when it ends. Does
/// nothing outside a fleet; says so once when the coordinator is unknown.
pub fn watch_revocations_in_background(shutdown: CancellationToken) {
    if super::transport().tls().is_none() {
        return;
    }
    let Some(addr) = enrolled() else {
        warn!(
            "no coordinator and none recorded in the fleet directory ({FILE}): this host \
             learns no revocations"
        );
        return;
    };
    tokio::spawn(async move {
        loop {
            let ended = tokio::select! {
                _ = shutdown.cancelled() => return,
                ended = watch(addr) => ended,
            };
            match ended {
                Err(err) => debug!(%addr, %err, "revocation watch ended; again in 5 s"),
                Ok(()) => debug!(%addr, "revocation watch closed; again in 5 s"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    });
}

/// One watch: the coordinator's revocations until the connection ends.
async fn watch(addr: &str) -> Result<(), discomy_protocol::ProtocolError> {
    let connect = async {
        let stream = super::connect(addr, FleetRole::Coordinator).await?;
        client_handshake(stream, &AuthConfig::none()).await
    };
    let mut conn = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| discomy_protocol::ProtocolError::Timeout)??;
    send(&mut conn, &CoordRequest::WatchRevoked).await?;
    info!(%addr, "watching the fleet's revocations");
    loop {
        match recv::<_, CoordResponse>(&mut conn).await? {
            CoordResponse::Revoked { serials } => super::learn_revoked(serials),
            CoordResponse::Refused { reason } => {
                warn!(%addr, %reason, "the coordinator refused the revocation watch");
                return Ok(());
            }
            other => debug!(?other, "ignored a coordinator message"),
        }
    }
}
