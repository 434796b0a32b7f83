//! The names the coordinator's HTTPS certificate carries besides `coordinator.discomy`: what
//! clients put in `https://NAME:PORT` (ureq, browsers) is checked against them.
//!
//! From the API's listen address: its IP; when it is a wildcard (`0.0.0.0`, `::`), every
//! address of the host's interfaces; `localhost`, `127.0.0.1` and `::1` when loopback is among
//! them. Then the host name, and the operator's `--http-name NAME` (repeatable) for names only
//! DNS or a proxy knows.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether `name` can be a DNS name in a certificate: 1-253 of `A-Za-z0-9.-` in labels of 1-63
/// that neither start nor end with `-`.
pub fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The host's own addresses, from the kernel's tables (`/proc/net/fib_trie`: an address
/// followed by `/32 host LOCAL`; `/proc/net/if_inet6`: 32 hex digits per line); none when they
/// cannot be read.
fn interface_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/fib_trie") {
        let mut last: Option<Ipv4Addr> = None;
        for line in text.lines() {
            let line = line.trim();
            if let Some(ip) = line.strip_prefix("|-- ") {
                last = ip.parse().ok();
            } else if line.starts_with("/32 host LOCAL") {
                out.extend(last.take().map(IpAddr::V4));
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in text.lines() {
            let Some(hex) = line.split_whitespace().next().filter(|h| h.len() == 32) else {
                continue;
            };
            if let Ok(bits) = u128::from_str_radix(hex, 16) {
                out.push(IpAddr::V6(Ipv6Addr::from(bits)));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The host's name, when it is a valid DNS name.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_owned();
    valid_dns_name(&name).then_some(name)
}

/// The names for a listener on `listen`, plus `extra` (each an IP address or a DNS name; a
/// name that is neither is refused with the reason).
pub fn https_names(listen: SocketAddr, extra: &[String]) -> Result<Vec<String>, String> {
    let mut ips: Vec<IpAddr> = if listen.ip().is_unspecified() {
        let mut all = interface_addresses();
        all.extend([IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        all
    } else {
        vec![listen.ip()]
    };
    let mut names = BTreeSet::new();
    if ips.iter().any(IpAddr::is_loopback) {
        names.insert("localhost".to_owned());
        ips.extend([IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)]);
    }
    names.extend(host_name());
    for name in extra {
        let name = name.trim();
        if name.parse::<IpAddr>().is_err() && !valid_dns_name(name) {
            return Err(format!("--http-name {name:?}: not an IP address or a DNS name"));
        }
        names.insert(name.to_owned());
    }
    names.extend(ips.iter().map(IpAddr::to_string));
    Ok(names.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_for_loopback_and_given_names() {
        let names = https_names("127.0.0.1:3635".parse().unwrap(), &["ci.example".into()]);
        let names = names.unwrap_or_default();
        for n in ["localhost", "127.0.0.1", "::1", "ci.example"] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
        let one = https_names("192.0.2.7:3635".parse().unwrap(), &[]).unwrap_or_default();
        assert!(one.iter().any(|x| x == "192.0.2.7") && !one.iter().any(|x| x == "localhost"));
        assert!(https_names("127.0.0.1:1".parse().unwrap(), &["<x>".into()]).is_err());
        // A wildcard: the host's own addresses (loopback among them) and their names.
        let all = https_names("0.0.0.0:3635".parse().unwrap(), &[]).unwrap_or_default();
        assert!(all.iter().any(|x| x == "127.0.0.1") && all.iter().any(|x| x == "localhost"));
        assert!(!all.iter().any(|x| x == "0.0.0.0"), "{all:?}");
        assert!(interface_addresses().contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(valid_dns_name("build-1.farm.example") && !valid_dns_name("-a.b"));
    }
}
