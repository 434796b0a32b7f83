//! How a node or agent finds the coordinator: an explicit `host:port` (`--coordinator`), or
//! mDNS discovery of `_discomy._tcp.local.` by farm name (TXT `farm`, compared without case)
//! and protocol version (TXT `proto`).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use discomy_protocol::coordinator::MDNS_SERVICE;
use discomy_protocol::version;
use mdns_sd::{ServiceDaemon, ServiceEvent};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// How long one discovery round listens.
const BROWSE_FOR: Duration = Duration::from_secs(2);

/// Where the coordinator is.
#[derive(Debug, Clone)]
pub enum CoordinatorAddr {
    /// `host:port`, as configured.
    Explicit(String),
    /// Discover the coordinator of this farm over mDNS.
    Mdns {
        /// The farm's name.
        farm: String,
    },
}

impl CoordinatorAddr {
    /// Whether this is discovery over mDNS (multicast on every interface).
    pub fn is_mdns(&self) -> bool {
        matches!(self, CoordinatorAddr::Mdns { .. })
    }

    /// From the `--coordinator` value; a missing port is the coordinator's default.
    pub fn explicit(text: &str) -> CoordinatorAddr {
        let text = text.trim();
        let has_port = text.rsplit_once(':').is_some_and(|(h, p)| {
            p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']'))
        });
        if has_port {
            CoordinatorAddr::Explicit(text.to_string())
        } else {
            let port = discomy_protocol::coordinator::DEFAULT_PORT;
            CoordinatorAddr::Explicit(format!("{text}:{port}"))
        }
    }

    /// The address to connect to now.
    pub async fn resolve(&self, shutdown: &CancellationToken) -> Option<String> {
        match self {
            CoordinatorAddr::Explicit(a) => Some(a.clone()),
            CoordinatorAddr::Mdns { farm } => {
                let farm = farm.clone();
                let found = tokio::task::spawn_blocking(move || browse(&farm, BROWSE_FOR));
                tokio::select! {
                    _ = shutdown.cancelled() => None,
                    r = found => r.ok().flatten(),
                }
            }
        }
    }
}

impl std::fmt::Display for CoordinatorAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoordinatorAddr::Explicit(a) => f.write_str(a),
            CoordinatorAddr::Mdns { farm } => write!(f, "mDNS {MDNS_SERVICE} farm={farm}"),
        }
    }
}

/// One mDNS discovery round: the first coordinator of `farm` speaking our protocol, as
/// `IP:PORT` (a non-loopback IPv4 address when it has one).
pub fn browse(farm: &str, wait: Duration) -> Option<String> {
    let daemon = ServiceDaemon::new().ok()?;
    let events = daemon.browse(MDNS_SERVICE).ok()?;
    let deadline = Instant::now() + wait;
    let mut found = None;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(event) = events.recv_timeout(left) else { break };
        let ServiceEvent::ServiceResolved(svc) = event else { continue };
        let their_farm = svc.get_property_val_str("farm").unwrap_or_default();
        let proto = svc.get_property_val_str("proto").unwrap_or_default();
        if !their_farm.eq_ignore_ascii_case(farm) || proto != version::CURRENT.to_string() {
            debug!(service = %svc.fullname, farm = their_farm, proto, "ignored a coordinator");
            continue;
        }
        let mut addrs: Vec<Ipv4Addr> = svc.get_addresses_v4().into_iter().collect();
        addrs.sort_by_key(|a| (a.is_loopback(), *a));
        if let Some(ip) = addrs.first() {
            found = Some(format!("{ip}:{}", svc.get_port()));
            break;
        }
    }
    let _ = daemon.shutdown();
    if let Some(addr) = &found {
        info!(coordinator = %addr, farm, "found the coordinator over mDNS");
    }
    found
}

/// This host's id: `DISCOMY_HOST_ID`, else the hostname.
pub fn host_id() -> String {
    if let Ok(id) = std::env::var("DISCOMY_HOST_ID")
        && !id.trim().is_empty()
    {
        return id.trim().to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_port() {
        assert_eq!(CoordinatorAddr::explicit("a").to_string(), "a:3634");
        assert_eq!(CoordinatorAddr::explicit("a:9").to_string(), "a:9");
        assert_eq!(CoordinatorAddr::explicit("[::1]:9").to_string(), "[::1]:9");
    }
}
