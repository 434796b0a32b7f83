//! Static host lists in distcc syntax: `host[:port][/limit]`, separated by commas or spaces.

use std::fmt;

/// The port a discomy worker listens on by default (distcc's is 3632).
pub const DEFAULT_PORT: u16 = 3633;
/// Concurrent units per host when the list gives no `/limit`.
pub const DEFAULT_LIMIT: usize = 4;

/// One worker in a host list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Most units in flight to this host at once.
    pub limit: usize,
}

impl HostSpec {
    /// `host:port`, with IPv6 addresses bracketed.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for HostSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address(), self.limit)
    }
}

/// A host list that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("bad host list entry `{entry}`: {reason}")]
pub struct HostListError {
    entry: String,
    reason: String,
}

/// Parses a host list. `localhost` entries and distcc options (`,lzo`, `,cpp`) are not workers of
/// ours and are refused with a clear error rather than ignored.
pub fn parse_host_list(text: &str) -> Result<Vec<HostSpec>, HostListError> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(parse_one)
        .collect()
}

fn parse_one(entry: &str) -> Result<HostSpec, HostListError> {
    let err = |reason: &str| HostListError { entry: entry.to_string(), reason: reason.to_string() };
    if entry.starts_with("--") || entry.starts_with('@') || entry.contains("://") {
        return Err(err("only plain host[:port][/limit] entries are supported"));
    }
    let (addr, limit) = match entry.split_once('/') {
        Some((a, l)) => (a, l.parse::<usize>().map_err(|_| err("limit is not a number"))?),
        None => (entry, DEFAULT_LIMIT),
    };
    if limit == 0 {
        return Err(err("limit must be at least 1"));
    }
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or_else(|| err("unclosed ["))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| err("port is not a number"))?,
            None if tail.is_empty() => DEFAULT_PORT,
            None => return Err(err("junk after ]")),
        };
        (h.to_string(), port)
    } else {
        match addr.split_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| err("port is not a number"))?),
            None => (addr.to_string(), DEFAULT_PORT),
        }
    };
    if host.is_empty() {
        return Err(err("empty host"));
    }
    Ok(HostSpec { host, port, limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_distcc_syntax() {
        let hosts = parse_host_list("a, b:4000/8  127.0.0.1:1/2,[::1]:9/3").unwrap();
        assert_eq!(
            hosts[0],
            HostSpec { host: "a".into(), port: DEFAULT_PORT, limit: DEFAULT_LIMIT }
        );
        assert_eq!(hosts[1], HostSpec { host: "b".into(), port: 4000, limit: 8 });
        assert_eq!(hosts[2].address(), "127.0.0.1:1");
        assert_eq!(hosts[3].address(), "[::1]:9");
        assert_eq!(hosts[3].limit, 3);
        assert!(parse_host_list("").unwrap().is_empty());
    }

    #[test]
    fn refuses_nonsense() {
        for bad in ["a:x", "a/0", "a/x", "[::1", "--randomize", "distcc://x"] {
            assert!(parse_host_list(bad).is_err(), "{bad}");
        }
    }
}
