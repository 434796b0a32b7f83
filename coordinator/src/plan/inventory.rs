//! Fleets for `discomy plan`: an inventory file (TOML or JSON) for a fleet that does not exist
//! yet, or the live fleet from the coordinator's status (nodes, slots, learned speeds, free
//! memory and disk; links are not measured by the coordinator, so they are assumed).
//!
//! ```toml
//! uplink = "10Gbit"          # optional: the shared link build hosts ship units over
//! [[nodes]]
//! name = "rack-a"            # with count > 1: rack-a-1 … rack-a-N
//! count = 20
//! cores = 16                 # slots default to cores
//! speed = 1.0                # against the host the costs were recorded on
//! memory = "64GB"
//! disk = "500GB"
//! link = "10Gbit"
//! latency_ms = 0.2
//! ```

use discomy_protocol::coordinator::FarmStatus;
use serde::Deserialize;

use super::PlanError;
use super::fleet::{PlanFleet, SimNode, parse_bandwidth};

/// At most this many nodes.
pub const MAX_NODES: u64 = 100_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inventory {
    #[serde(default)]
    uplink: Option<String>,
    nodes: Vec<NodeGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeGroup {
    name: String,
    #[serde(default = "one")]
    count: u64,
    cores: u32,
    #[serde(default)]
    slots: Option<u32>,
    #[serde(default = "unit_speed")]
    speed: f64,
    #[serde(default)]
    memory: Option<String>,
    #[serde(default)]
    disk: Option<String>,
    #[serde(default)]
    link: Option<String>,
    #[serde(default)]
    latency_ms: Option<f64>,
    #[serde(default)]
    foreign_load: u16,
}

fn one() -> u64 {
    1
}

fn unit_speed() -> f64 {
    1.0
}

/// Parses a size: `64GB`, `500G`, `2TiB`, `1048576` (bytes). At most 1 PB.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let scale = match unit.trim().trim_end_matches('B').trim_end_matches('i') {
        "" => 1.0,
        "k" | "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        "T" => 1024.0f64.powi(4),
        "P" => 1024.0f64.powi(5),
        _ => return None,
    };
    let bytes = num * scale;
    (bytes.is_finite() && (0.0..=1.2e15).contains(&bytes)).then_some(bytes as u64)
}

/// Parses an inventory: JSON when it starts with `{`, TOML otherwise. Refuses unknown fields,
/// more than [`MAX_NODES`] nodes, 0 or more than 4096 cores, speeds outside (0, 1000],
/// unparsable sizes and links.
pub fn parse(text: &str, source: &str) -> Result<PlanFleet, PlanError> {
    let inv: Inventory = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
            .map_err(|e| PlanError::Parse { what: source.into(), message: e.to_string() })?
    } else {
        toml::from_str(text)
            .map_err(|e| PlanError::Parse { what: source.into(), message: e.to_string() })?
    };
    let bad = |m: String| PlanError::Invalid(format!("{source}: {m}"));
    let total: u64 = inv.nodes.iter().map(|g| g.count).fold(0, u64::saturating_add);
    if total == 0 || total > MAX_NODES {
        return Err(bad(format!("{total} nodes: give 1 to {MAX_NODES}")));
    }
    let uplink = match &inv.uplink {
        Some(u) => Some(parse_bandwidth(u).ok_or_else(|| bad(format!("uplink {u:?}")))?),
        None => None,
    };
    let mut assumed = Vec::new();
    let mut nodes = Vec::new();
    for g in &inv.nodes {
        let what = |m: &str| bad(format!("node group {:?}: {m}", g.name));
        if !(1..=4096).contains(&g.cores) {
            return Err(what("cores must be 1 to 4096"));
        }
        let slots = g.slots.unwrap_or(g.cores);
        if !(1..=4096).contains(&slots) {
            return Err(what("slots must be 1 to 4096"));
        }
        if !(g.speed.is_finite() && g.speed > 0.0 && g.speed <= 1000.0) {
            return Err(what("speed must be above 0 and at most 1000"));
        }
        if g.foreign_load > 1000 {
            return Err(what("foreign_load is 0 to 1000"));
        }
        let size = |s: &Option<String>, name: &str| -> Result<u64, PlanError> {
            match s {
                Some(s) => parse_size(s).ok_or_else(|| what(&format!("{name} {s:?}"))),
                None => Ok(0),
            }
        };
        let (memory, disk) = (size(&g.memory, "memory")?, size(&g.disk, "disk")?);
        let mut template = SimNode::lan(&g.name, g.speed, slots);
        match &g.link {
            Some(l) => {
                template.bandwidth =
                    parse_bandwidth(l).ok_or_else(|| what(&format!("link {l:?}")))?
            }
            None => assumed.push(format!("{}: link 100 MB/s (not given)", g.name)),
        }
        match g.latency_ms {
            Some(ms) if ms.is_finite() && (0.0..=10_000.0).contains(&ms) => {
                template.latency_s = ms / 1000.0
            }
            Some(ms) => return Err(what(&format!("latency_ms {ms}"))),
            None => {}
        }
        template.memory_bytes = memory;
        template.disk_bytes = disk;
        template.foreign_load = g.foreign_load;
        for i in 0..g.count {
            let name = if g.count == 1 { g.name.clone() } else { format!("{}-{}", g.name, i + 1) };
            nodes.push(SimNode { name: name.clone(), host: name, ..template.clone() });
        }
    }
    Ok(PlanFleet { source: format!("inventory {source}"), nodes, uplink, assumed })
}

/// The live fleet from `discomy status`: slots, learned speed (relative to the median of the
/// measured nodes; 1.0 before any measurement), foreign load, free memory and disk. The
/// coordinator does not measure links: every node gets `link` (bytes/s) and 0.5 ms, said in
/// `assumed`.
pub fn from_status(status: &FarmStatus, source: &str, link: f64) -> Result<PlanFleet, PlanError> {
    if status.nodes.is_empty() {
        return Err(PlanError::Invalid(format!("{source}: the farm has no nodes")));
    }
    if status.nodes.len() as u64 > MAX_NODES {
        return Err(PlanError::Invalid(format!(
            "{source}: {} nodes: more than {MAX_NODES}",
            status.nodes.len()
        )));
    }
    let mut measured: Vec<f64> = status
        .nodes
        .iter()
        .map(|n| n.speed_cpu_bps)
        .filter(|s| s.is_finite() && *s > 0.0)
        .collect();
    measured.sort_by(f64::total_cmp);
    let median = measured.get(measured.len() / 2).copied();
    let mut assumed = vec![format!(
        "links: {:.0} MB/s and 0.5 ms per node (the coordinator does not measure links)",
        link / 1e6
    )];
    if median.is_none() {
        assumed.push("speeds: 1.0 for every node (none measured yet)".into());
    }
    let nodes = status
        .nodes
        .iter()
        .map(|n| {
            let speed = match median {
                Some(m) if n.speed_cpu_bps > 0.0 && n.speed_cpu_bps.is_finite() => {
                    (n.speed_cpu_bps / m).clamp(0.01, 100.0)
                }
                _ => 1.0,
            };
            SimNode {
                name: n.address.clone(),
                host: n.host.clone(),
                speed,
                slots: n.slots.clamp(1, 4096),
                latency_s: 0.0005,
                bandwidth: link,
                foreign_load: n.load.foreign_load.min(1000),
                fails_at_s: None,
                memory_bytes: n.load.free_mem_mb.saturating_mul(1 << 20),
                disk_bytes: n.load.free_disk_mb.saturating_mul(1 << 20),
            }
        })
        .collect();
    assumed.push("memory and disk: what the nodes last reported free, not their totals".into());
    Ok(PlanFleet { source: format!("coordinator {source}"), nodes, uplink: None, assumed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("64GB"), Some(64 << 30));
        assert_eq!(parse_size("2TiB"), Some(2 << 40));
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_size("999999PB"), None);
    }

    #[test]
    fn live_fleet_is_bounded() {
        let node = discomy_protocol::coordinator::NodeStatus { slots: 8, ..Default::default() };
        let mut status = FarmStatus { nodes: vec![node; 3], ..Default::default() };
        assert_eq!(from_status(&status, "c", 125e6).expect("three nodes").nodes.len(), 3);
        status.nodes = Vec::new();
        assert!(from_status(&status, "c", 125e6).is_err());
        status.nodes = vec![Default::default(); MAX_NODES as usize + 1];
        let err = from_status(&status, "c", 125e6).expect_err("too many nodes").to_string();
        assert!(err.contains("more than"), "{err}");
    }
}
