//! How a node or agent finds the coordinator: an explicit `host:port` (`--coordinator`), a
//! comma-separated list of the coordinators of one farm (`a,b`: agents fail over from one to
//! the next, workers join every one), or mDNS discovery of `_discomy._tcp.local.` by farm name
//! (TXT `farm`, compared without case) and protocol version (TXT `proto`).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use discomy_protocol::coordinator::MDNS_SERVICE;
use discomy_protocol::version;
use mdns_sd::{ServiceDaemon, ServiceEvent};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// How long one discovery round listens.
const BROWSE_FOR: Duration = Duration::from_secs(2);
/// How long a discovery round that wants every coordinator listens after the first one.
const BROWSE_MORE: Duration = Duration::from_millis(300);
/// Most coordinators in a list or found in one discovery round.
pub const MAX_COORDINATORS: usize = 16;

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
    /// Several coordinators of one farm, `host:port` each, in order of preference
    /// (`--coordinator a,b`).
    Several(Vec<String>),
}

impl CoordinatorAddr {
    /// Whether this is discovery over mDNS (multicast on every interface).
    pub fn is_mdns(&self) -> bool {
        matches!(self, CoordinatorAddr::Mdns { .. })
    }

    /// From the `--coordinator` value: one address, or several separated by commas (at most
    /// [`MAX_COORDINATORS`], duplicates dropped); a missing port is the coordinator's default.
    pub fn explicit(text: &str) -> CoordinatorAddr {
        let mut list: Vec<String> = Vec::new();
        for one in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let addr = Self::one(one);
            if !list.contains(&addr) && list.len() < MAX_COORDINATORS {
                list.push(addr);
            }
        }
        match list.len() {
            0 => CoordinatorAddr::Explicit(Self::one(text)),
            1 => CoordinatorAddr::Explicit(list.remove(0)),
            _ => CoordinatorAddr::Several(list),
        }
    }

    /// One `host[:port]`, with the default port when it has none.
    fn one(text: &str) -> String {
        let text = text.trim();
        let has_port = text.rsplit_once(':').is_some_and(|(h, p)| {
            p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']'))
        });
        if has_port {
            text.to_string()
        } else {
            let port = discomy_protocol::coordinator::DEFAULT_PORT;
            format!("{text}:{port}")
        }
    }

    /// The address to connect to now (the first of a list).
    pub async fn resolve(&self, shutdown: &CancellationToken) -> Option<String> {
        match self {
            CoordinatorAddr::Explicit(a) => Some(a.clone()),
            CoordinatorAddr::Several(list) => list.first().cloned(),
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

    /// Every coordinator of the farm to try now, in order: the list as given, or each one
    /// discovery finds (first found first).
    pub async fn resolve_all(&self, shutdown: &CancellationToken) -> Vec<String> {
        match self {
            CoordinatorAddr::Explicit(a) => vec![a.clone()],
            CoordinatorAddr::Several(list) => list.clone(),
            CoordinatorAddr::Mdns { farm } => {
                let farm = farm.clone();
                let found = tokio::task::spawn_blocking(move || browse_all(&farm, BROWSE_FOR));
                tokio::select! {
                    _ = shutdown.cancelled() => Vec::new(),
                    r = found => r.unwrap_or_default(),
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
            CoordinatorAddr::Several(list) => f.write_str(&list.join(",")),
        }
    }
}

/// One mDNS discovery round: the first coordinator of `farm` speaking our protocol, as
/// `IP:PORT` (a non-loopback IPv4 address when it has one).
pub fn browse(farm: &str, wait: Duration) -> Option<String> {
    discover(farm, wait, false).into_iter().next()
}

/// One mDNS discovery round for every coordinator of `farm` (a site may run several): those
/// answering within `wait`, and within a short while after the first (at most
/// [`MAX_COORDINATORS`]).
pub fn browse_all(farm: &str, wait: Duration) -> Vec<String> {
    discover(farm, wait, true)
}

fn discover(farm: &str, wait: Duration, all: bool) -> Vec<String> {
    let Ok(daemon) = ServiceDaemon::new() else { return Vec::new() };
    let Ok(events) = daemon.browse(MDNS_SERVICE) else { return Vec::new() };
    let mut deadline = Instant::now() + wait;
    let mut found: Vec<String> = Vec::new();
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
            let addr = format!("{ip}:{}", svc.get_port());
            if !found.contains(&addr) {
                info!(coordinator = %addr, farm, "found a coordinator over mDNS");
                found.push(addr);
            }
            if !all || found.len() >= MAX_COORDINATORS {
                break;
            }
            if found.len() == 1 {
                deadline = deadline.min(Instant::now() + BROWSE_MORE);
            }
        }
    }
    let _ = daemon.shutdown();
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

    #[test]
    fn lists_of_coordinators() {
        let several = CoordinatorAddr::explicit(" a:1, b ,a:1,, ");
        assert!(
            matches!(&several, CoordinatorAddr::Several(l) if l == &["a:1".to_string(), "b:3634".to_string()])
        );
        assert_eq!(several.to_string(), "a:1,b:3634");
        assert!(
            matches!(CoordinatorAddr::explicit("a,"), CoordinatorAddr::Explicit(a) if a == "a:3634")
        );
        let long = (0..40).map(|i| format!("h{i}")).collect::<Vec<_>>().join(",");
        assert!(
            matches!(CoordinatorAddr::explicit(&long), CoordinatorAddr::Several(l) if l.len() == MAX_COORDINATORS)
        );
    }
}
