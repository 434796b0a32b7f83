//! Client address allow-lists (`--allow CIDR`) for the distcc listener.
//!
//! distcc clients have no authentication, so the address is the only gate; the default is
//! loopback only (distccd 3.4, despite its log line, accepts everyone when `--allow` is absent).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One network, `ADDR/BITS` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

/// A network that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("bad network `{0}`: expected ADDR or ADDR/BITS (IPv4 or IPv6)")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let err = || CidrError(s.to_string());
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| err())?)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(err());
        }
        // An IPv4-mapped network is the IPv4 network it maps (addresses are compared as IPv4);
        // one wider than the mapped range would match nothing as written, so it is refused.
        if let IpAddr::V6(v6) = net
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            if bits < 96 {
                return Err(err());
            }
            return Ok(Cidr { net: IpAddr::V4(v4), bits: bits - 96 });
        }
        Ok(Cidr { net, bits })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.bits)
    }
}

impl Cidr {
    /// Whether `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.bits),
            _ => false,
        }
    }

    /// The default: loopback only.
    pub fn loopback() -> Vec<Cidr> {
        vec![
            Cidr { net: IpAddr::from([127, 0, 0, 0]), bits: 8 },
            Cidr { net: IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), bits: 128 },
        ]
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn matches_prefixes() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")));
        // An IPv4-mapped network is that IPv4 network (it used to match nothing).
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        assert!(mapped.contains(ip("10.9.8.7")) && mapped.contains(ip("::ffff:10.9.8.7")));
        assert!(!mapped.contains(ip("11.0.0.1")));
        let c: Cidr = "192.168.1.128/25".parse().unwrap();
        assert!(c.contains(ip("192.168.1.200")) && !c.contains(ip("192.168.1.100")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::loopback().iter().any(|c| c.contains(ip("::1"))));
        assert!(!Cidr::loopback().iter().any(|c| c.contains(ip("192.0.2.1"))));
    }

    #[test]
    fn refuses_nonsense() {
        for bad in
            ["", "10.0.0.0/33", "::/129", "host", "10.0.0.0/x", "1.2.3/8", "::ffff:10.0.0.0/95"]
        {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
