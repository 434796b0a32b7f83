//! Static host lists: discomy workers in distcc syntax (`host[:port][/limit]`), and distccd
//! servers (`distcc://host[:port][/limit][,lzo]`), separated by commas or spaces.
//! [`from_distcc_hosts`] turns a `DISTCC_HOSTS` value into such a list.

use std::fmt;
use std::path::PathBuf;

/// The port a discomy worker listens on by default (distcc's is 3632).
pub const DEFAULT_PORT: u16 = 3633;
/// Concurrent units per host when the list gives no `/limit`.
pub const DEFAULT_LIMIT: usize = 4;
/// The scheme of distccd hosts in a host list.
pub const DISTCC_SCHEME: &str = "distcc://";

/// What speaks on the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKind {
    /// A discomy worker.
    #[default]
    Native,
    /// A distccd server: protocol 2 (LZO bodies) when `lzo`, else protocol 1.
    Distcc {
        /// `,lzo`: compress bodies (protocol 2).
        lzo: bool,
    },
}

/// One worker in a host list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Most units in flight to this host at once.
    pub limit: usize,
    /// discomy worker or distccd.
    pub kind: HostKind,
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
        match self.kind {
            HostKind::Native => write!(f, "{}/{}", self.address(), self.limit),
            HostKind::Distcc { lzo } => {
                write!(f, "{DISTCC_SCHEME}{}/{}", self.address(), self.limit)?;
                if lzo { write!(f, ",lzo") } else { Ok(()) }
            }
        }
    }
}

/// A host list that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("bad host list entry `{entry}`: {reason}")]
pub struct HostListError {
    entry: String,
    reason: String,
}

/// Whether a list word is a distcc host option (`lzo`, `cpp`, `down`, `auth[=…]`).
pub fn is_option(word: &str) -> bool {
    matches!(word, "lzo" | "cpp" | "down") || word == "auth" || word.starts_with("auth=")
}

/// Parses a host list. `localhost` entries and options on discomy workers are refused with a
/// clear error rather than ignored; `distcc://` hosts take `,lzo` (other distcc options are
/// refused: pump mode and GSS-API are not spoken).
pub fn parse_host_list(text: &str) -> Result<Vec<HostSpec>, HostListError> {
    let mut hosts: Vec<HostSpec> = Vec::new();
    for word in text.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()) {
        if is_option(word) {
            let err = |reason: &str| HostListError { entry: word.into(), reason: reason.into() };
            match hosts.last_mut() {
                Some(HostSpec { kind: HostKind::Distcc { lzo }, .. }) if word == "lzo" => {
                    *lzo = true
                }
                Some(HostSpec { kind: HostKind::Distcc { .. }, .. }) => {
                    return Err(err("only ,lzo is supported on distcc:// hosts"));
                }
                _ => return Err(err("options only apply to distcc://host entries")),
            }
            continue;
        }
        hosts.push(parse_one(word)?);
    }
    Ok(hosts)
}

fn parse_one(entry: &str) -> Result<HostSpec, HostListError> {
    let err = |reason: &str| HostListError { entry: entry.to_string(), reason: reason.to_string() };
    let (addr_part, kind, default_port) = match entry.strip_prefix(DISTCC_SCHEME) {
        Some(rest) => {
            (rest, HostKind::Distcc { lzo: false }, discomy_protocol::distcc::DEFAULT_PORT)
        }
        None => (entry, HostKind::Native, DEFAULT_PORT),
    };
    if addr_part.starts_with("--") || addr_part.starts_with('@') || addr_part.contains("://") {
        return Err(err("expected host[:port][/limit] or distcc://host[:port][/limit][,lzo]"));
    }
    let (addr, limit) = match addr_part.split_once('/') {
        Some((a, l)) => (a, l.parse::<usize>().map_err(|_| err("limit is not a number"))?),
        None => (addr_part, DEFAULT_LIMIT),
    };
    if limit == 0 {
        return Err(err("limit must be at least 1"));
    }
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or_else(|| err("unclosed ["))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| err("port is not a number"))?,
            None if tail.is_empty() => default_port,
            None => return Err(err("junk after ]")),
        };
        (h.to_string(), port)
    } else {
        match addr.split_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| err("port is not a number"))?),
            None => (addr.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err(err("empty host"));
    }
    Ok(HostSpec { host, port, limit, kind })
}

/// Converts a `DISTCC_HOSTS` value (distcc's own syntax: `host[:port][/limit][,lzo][,cpp]`,
/// whitespace separated, `#` comments) into a host list of `distcc://` entries.
///
/// Entries that are not distccd servers over TCP are skipped: `localhost` (distcc's "compile
/// here"), `--randomize`, `--localslots*`, `+zeroconf`, SSH hosts (`user@host`), `,down` hosts.
/// `,cpp` (pump mode) is dropped, keeping `,lzo`: the unit is preprocessed here anyway.
pub fn from_distcc_hosts(text: &str) -> String {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        for entry in line.split_whitespace() {
            let mut parts = entry.split(',');
            let host = parts.next().unwrap_or("");
            let options: Vec<&str> = parts.collect();
            let name = host.split(['/', '=', ':']).next().unwrap_or("");
            if host.is_empty()
                || host.starts_with('-')
                || host.starts_with('+')
                || host.contains('@')
                || name == "localhost"
                || options.contains(&"down")
            {
                continue;
            }
            // distcc also writes the limit as `=N`.
            let host = host.replacen('=', "/", 1);
            let lzo = if options.contains(&"lzo") { ",lzo" } else { "" };
            out.push(format!("{DISTCC_SCHEME}{host}{lzo}"));
        }
    }
    out.join(" ")
}

/// The host list for a transient agent: the flag, `DISCOMY_HOSTS`, the config files, then
/// `DISTCC_HOSTS` (distcc's syntax, its servers used as `distcc://` hosts).
pub fn configured_hosts(flag: Option<&str>) -> Option<String> {
    configured_discomy_hosts(flag).or_else(|| {
        let distcc = from_distcc_hosts(&std::env::var("DISTCC_HOSTS").ok()?);
        (!distcc.is_empty()).then_some(distcc)
    })
}

fn configured_discomy_hosts(flag: Option<&str>) -> Option<String> {
    if let Some(h) = flag {
        return Some(h.to_string());
    }
    if let Ok(h) = std::env::var("DISCOMY_HOSTS") {
        return Some(h);
    }
    let mut files = Vec::new();
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        files.push(PathBuf::from(dir).join("discomy/hosts"));
    } else if let Some(home) = std::env::var_os("HOME") {
        files.push(PathBuf::from(home).join(".config/discomy/hosts"));
    }
    files.push(PathBuf::from("/etc/discomy/hosts"));
    files.iter().find_map(|f| {
        let text = std::fs::read_to_string(f).ok()?;
        let hosts: Vec<&str> = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .collect();
        Some(hosts.join(" "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(host: &str, port: u16, limit: usize) -> HostSpec {
        HostSpec { host: host.into(), port, limit, kind: HostKind::Native }
    }

    #[test]
    fn parses_distcc_syntax() {
        let hosts = parse_host_list("a, b:4000/8  127.0.0.1:1/2,[::1]:9/3").unwrap();
        assert_eq!(hosts[0], native("a", DEFAULT_PORT, DEFAULT_LIMIT));
        assert_eq!(hosts[1], native("b", 4000, 8));
        assert_eq!(hosts[2].address(), "127.0.0.1:1");
        assert_eq!(hosts[3].address(), "[::1]:9");
        assert_eq!(hosts[3].limit, 3);
        assert!(parse_host_list("").unwrap().is_empty());
    }

    #[test]
    fn parses_distcc_hosts() {
        let hosts =
            parse_host_list("distcc://127.0.0.1:3632,lzo,w1 distcc://d2/8 distcc://[::1]:5,lzo")
                .unwrap();
        assert_eq!(hosts.len(), 4);
        assert_eq!(hosts[0].kind, HostKind::Distcc { lzo: true });
        assert_eq!(hosts[0].address(), "127.0.0.1:3632");
        assert_eq!(hosts[1], native("w1", DEFAULT_PORT, DEFAULT_LIMIT));
        assert_eq!((hosts[2].port, hosts[2].limit), (3632, 8));
        assert_eq!(hosts[2].kind, HostKind::Distcc { lzo: false });
        assert_eq!(hosts[3].kind, HostKind::Distcc { lzo: true });
        assert_eq!(hosts[0].to_string(), "distcc://127.0.0.1:3632/4,lzo");
    }

    #[test]
    fn converts_distcc_hosts_variable() {
        let list = from_distcc_hosts(
            "localhost/2 --randomize a:4000/8,lzo b,cpp,lzo c=3 # comment d\n u@ssh e,down +zeroconf f",
        );
        assert_eq!(list, "distcc://a:4000/8,lzo distcc://b,lzo distcc://c/3 distcc://f");
        let hosts = parse_host_list(&list).unwrap();
        assert_eq!(hosts.len(), 4);
        assert!(hosts.iter().all(|h| matches!(h.kind, HostKind::Distcc { .. })));
    }

    #[test]
    fn refuses_nonsense() {
        for bad in [
            "a:x",
            "a/0",
            "a/x",
            "[::1",
            "--randomize",
            "http://x",
            "a,lzo",
            "lzo",
            "distcc://a,cpp,lzo",
            "distcc://",
        ] {
            assert!(parse_host_list(bad).is_err(), "{bad}");
        }
    }
}
