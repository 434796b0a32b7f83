//! How a node or agent finds the coordinator: an explicit `host:port` (`--coordinator`), or
//! (later) mDNS discovery by farm name.

use tokio_util::sync::CancellationToken;

/// Where the coordinator is.
#[derive(Debug, Clone)]
pub enum CoordinatorAddr {
    /// `host:port`, as configured.
    Explicit(String),
}

impl CoordinatorAddr {
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
    pub async fn resolve(&self, _shutdown: &CancellationToken) -> Option<String> {
        match self {
            CoordinatorAddr::Explicit(a) => Some(a.clone()),
        }
    }
}

impl std::fmt::Display for CoordinatorAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoordinatorAddr::Explicit(a) => f.write_str(a),
        }
    }
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
