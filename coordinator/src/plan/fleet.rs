//! The simulated fleet: nodes (speed, slots, link, foreign load, failure, memory, disk), the
//! shared uplink the build hosts ship units over, what-ifs (more nodes, another link), and
//! link-speed parsing (`1Gbit`, `100Mbit/s`, `125MB/s`).

use serde::Serialize;

/// One simulated node.
#[derive(Debug, Clone, Serialize)]
pub struct SimNode {
    /// Name.
    pub name: String,
    /// The host it runs on (a submitter's name when it is that submitter's own machine).
    pub host: String,
    /// Compile speed relative to the recording host (1.0: as fast).
    pub speed: f64,
    /// Concurrent compiles.
    pub slots: u32,
    /// One-way latency, seconds.
    pub latency_s: f64,
    /// Link bandwidth, bytes per second.
    pub bandwidth: f64,
    /// Foreign CPU load, 0–1000: the node computes at `speed * (1 - load/1000)`.
    pub foreign_load: u16,
    /// When the node dies, if it does.
    #[serde(skip)]
    pub fails_at_s: Option<f64>,
    /// Memory, bytes (0: unknown).
    pub memory_bytes: u64,
    /// Disk for its object and toolchain stores, bytes (0: unknown).
    pub disk_bytes: u64,
}

impl SimNode {
    /// A node on a LAN (0.5 ms, 100 MB/s), speed and slots as given.
    pub fn lan(name: &str, speed: f64, slots: u32) -> SimNode {
        SimNode {
            name: name.into(),
            host: name.into(),
            speed,
            slots,
            latency_s: 0.0005,
            bandwidth: 100e6,
            foreign_load: 0,
            fails_at_s: None,
            memory_bytes: 0,
            disk_bytes: 0,
        }
    }

    /// A submitter's own machine: no link to cross.
    pub fn home(submitter: &str, speed: f64, slots: u32) -> SimNode {
        SimNode {
            latency_s: 0.0,
            bandwidth: f64::INFINITY,
            ..SimNode::lan(submitter, speed, slots)
        }
    }
}

/// A fleet to plan for.
#[derive(Debug, Clone, Serialize)]
pub struct PlanFleet {
    /// Where it came from (`inventory FILE`, `coordinator ADDR`).
    pub source: String,
    /// Its compile nodes.
    pub nodes: Vec<SimNode>,
    /// The shared link every shipped unit crosses (build hosts to the farm), bytes per second;
    /// `None`: only the nodes' own links.
    pub uplink: Option<f64>,
    /// What the fleet's source did not say and the plan assumed.
    pub assumed: Vec<String>,
}

impl PlanFleet {
    /// Compile slots in all.
    pub fn slots(&self) -> u64 {
        self.nodes.iter().map(|n| u64::from(n.slots)).sum()
    }

    /// Speed-weighted slots (capacity in recording-host core-seconds per second).
    pub fn capacity(&self) -> f64 {
        self.nodes.iter().map(|n| super::engine::effective_speed(n) * f64::from(n.slots)).sum()
    }

    /// Bytes per second the fleet can take in: the uplink, or all nodes' links together.
    pub fn ingress(&self) -> f64 {
        let links: f64 = self.nodes.iter().map(|n| n.bandwidth).sum();
        self.uplink.map_or(links, |u| u.min(links))
    }

    /// "20x16": 20 more nodes of 16 slots at speed 1.0 on a LAN link (the fleet's first node's
    /// link when it has one).
    pub fn add_nodes(&mut self, count: u32, slots: u32) {
        let template = self.nodes.iter().find(|n| n.bandwidth.is_finite()).cloned();
        for i in 0..count {
            let name = format!("added-{}", i + 1);
            let mut n = SimNode::lan(&name, 1.0, slots);
            if let Some(t) = &template {
                n.latency_s = t.latency_s;
                n.bandwidth = t.bandwidth;
                n.disk_bytes = t.disk_bytes;
                n.memory_bytes = t.memory_bytes;
            }
            self.nodes.push(n);
        }
    }

    /// Every node's link (and the uplink, when there is one) at `bps`.
    pub fn set_link(&mut self, bps: f64) {
        for n in &mut self.nodes {
            if n.bandwidth.is_finite() {
                n.bandwidth = bps;
            }
        }
        if let Some(u) = &mut self.uplink {
            *u = bps;
        }
    }

    /// The first `count` nodes (for the makespan-against-fleet-size curve).
    pub fn first(&self, count: usize) -> PlanFleet {
        PlanFleet { nodes: self.nodes.iter().take(count).cloned().collect(), ..self.clone() }
    }
}

/// Parses `NxS` (`20x16`: 20 nodes of 16 slots).
pub fn parse_add_nodes(text: &str) -> Option<(u32, u32)> {
    let (n, s) = text.trim().split_once(['x', 'X'])?;
    let (n, s) = (n.trim().parse::<u32>().ok()?, s.trim().parse::<u32>().ok()?);
    ((1..=100_000).contains(&n) && (1..=4096).contains(&s)).then_some((n, s))
}

/// Parses a link speed into bytes per second: `1Gbit`, `1 Gbit/s`, `100Mbit`, `10G` (bits),
/// `125MB/s`, `1.5GB` (bytes), a bare number (bits per second). `None` when it is not one, or
/// outside 1 kbit/s to 10 Tbit/s.
pub fn parse_bandwidth(text: &str) -> Option<f64> {
    let t = text.trim().trim_end_matches("/s").trim_end_matches("ps").trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let unit = unit.trim();
    let (scale, bytes) = match unit {
        "" | "bit" | "b" => (1.0, false),
        "k" | "K" | "kbit" | "Kbit" | "kb" => (1e3, false),
        "M" | "m" | "Mbit" | "mbit" | "Mb" => (1e6, false),
        "G" | "g" | "Gbit" | "gbit" | "Gb" => (1e9, false),
        "T" | "Tbit" | "Tb" => (1e12, false),
        "B" => (1.0, true),
        "kB" | "KB" => (1e3, true),
        "MB" => (1e6, true),
        "GB" => (1e9, true),
        _ => return None,
    };
    let bps = if bytes { num * scale } else { num * scale / 8.0 };
    (bps.is_finite() && (125.0..=1.25e12).contains(&bps)).then_some(bps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_speeds_parse() {
        assert_eq!(parse_bandwidth("1Gbit"), Some(125e6));
        assert_eq!(parse_bandwidth("1 Gbit/s"), Some(125e6));
        assert_eq!(parse_bandwidth("100Mbit"), Some(12.5e6));
        assert_eq!(parse_bandwidth("125MB/s"), Some(125e6));
        assert_eq!(parse_bandwidth("10G"), Some(1.25e9));
        assert_eq!(parse_bandwidth("fast"), None);
        assert_eq!(parse_bandwidth("1e400Gbit"), None);
        assert_eq!(parse_bandwidth("100Pbit"), None);
        assert_eq!(parse_add_nodes("20x16"), Some((20, 16)));
        assert_eq!(parse_add_nodes("0x16"), None);
        assert_eq!(parse_add_nodes("20x100000"), None);
    }
}
