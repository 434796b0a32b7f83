//! `discomy status` and `discomy stats`: the farm as the coordinator sees it, and a build host's
//! agent counters (what each compiler call became, and why units stayed local).

use std::fmt::Write as _;
use std::time::Duration;

use discomy_protocol::AuthConfig;
use discomy_protocol::asyncio::{client_handshake, recv, send};
use discomy_protocol::coordinator::{CoordRequest, CoordResponse, FarmStatus};
use discomy_protocol::stats::{AgentStats, StoreActivity, WorkerStats};

use super::CoordError;
use discomy_protocol::fleet::FleetRole;

/// One request to a daemon at `addr` (`who` names it in errors), over TCP with the farm token,
/// within 5 s.
async fn ask<Q, A>(
    addr: &str,
    role: FleetRole,
    who: &str,
    auth: &AuthConfig,
    request: &Q,
) -> Result<A, CoordError>
where
    Q: serde::Serialize,
    A: serde::de::DeserializeOwned,
{
    let protocol = |source| CoordError::Protocol { addr: who.to_string(), source };
    let attempt = async {
        let stream = crate::fleet::connect(addr, role)
            .await
            .map_err(|source| CoordError::Connect { addr: who.to_string(), source })?;
        let mut conn = client_handshake(stream, auth).await.map_err(protocol)?;
        send(&mut conn, request).await.map_err(protocol)?;
        recv::<_, A>(&mut conn).await.map_err(protocol)
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Err(CoordError::Timeout(who.to_string())))
}

/// Fetches the farm's status from the coordinator at `addr`; of a comma-separated list of the
/// farm's coordinators, from the first that answers.
pub async fn fetch(addr: &str, auth: &AuthConfig) -> Result<FarmStatus, CoordError> {
    let mut last = None;
    for one in addr.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match fetch_one(one, auth).await {
            Ok(status) => return Ok(status),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| CoordError::Timeout(format!("coordinator {addr}"))))
}

async fn fetch_one(addr: &str, auth: &AuthConfig) -> Result<FarmStatus, CoordError> {
    let who = format!("coordinator {addr}");
    match ask(addr, FleetRole::Coordinator, &who, auth, &CoordRequest::Status).await? {
        CoordResponse::Status(s) => Ok(s),
        CoordResponse::Refused { reason } => Err(CoordError::Refused { addr: who, reason }),
        other => Err(CoordError::Unexpected { addr: who, answer: format!("{other:?}") }),
    }
}

/// A human-readable table.
pub fn render(s: &FarmStatus) -> String {
    let mut out = String::new();
    let slots: u32 = s.nodes.iter().map(|n| n.slots).sum();
    let busy: u32 = s.nodes.iter().map(|n| n.assigned).sum();
    let _ = writeln!(
        out,
        "farm {}: {} nodes, {busy}/{slots} slots in use, {} queued; {} units hedged, {} nodes lost",
        s.farm,
        s.nodes.len(),
        s.queued,
        s.hedged,
        s.nodes_lost
    );
    let _ = writeln!(
        out,
        "{:<4} {:<16} {:<22} {:>5} {:>5} {:>6} {:>8} {:>10} {:>7} {:>8}",
        "id",
        "host",
        "address",
        "slots",
        "used",
        "load‰",
        "free MiB",
        "speed kB/s",
        "samples",
        "done"
    );
    if !s.quarantined.is_empty() {
        let _ = writeln!(out, "quarantined by verification: {}", s.quarantined.join(", "));
    }
    for n in &s.nodes {
        let _ = writeln!(
            out,
            "{:<4} {:<16} {:<22} {:>5} {:>5} {:>6} {:>8} {:>10.0} {:>7} {:>8}",
            n.id,
            n.host,
            n.address,
            n.slots,
            n.assigned,
            n.load.foreign_load,
            n.load.free_mem_mb,
            n.speed_wall_bps / 1000.0,
            n.samples,
            n.done_total
        );
    }
    if !s.submitters.is_empty() {
        let _ = writeln!(out, "{:<16} {:>8} {:>8}", "submitter", "running", "queued");
        for sub in &s.submitters {
            let _ = writeln!(out, "{:<16} {:>8} {:>8}", sub.host, sub.running, sub.queued);
        }
    }
    out
}

/// An agent's counters (`discomy stats`), asked over its Unix socket: [`AgentStats`], then its
/// remembered farm and its LTRANS units (an agent that predates those questions refuses them:
/// zeros).
pub fn agent_stats(socket: &std::path::Path) -> Result<AgentStats, CoordError> {
    use discomy_protocol::{Request, Response};
    let who = format!("agent at {}", socket.display());
    let protocol = |source| CoordError::Protocol { addr: who.clone(), source };
    let mut client = discomy_wrapper::client::AgentClient::connect(socket).map_err(protocol)?;
    let mut stats = match client.call(&Request::Stats).map_err(protocol)? {
        Response::Stats(stats) => stats,
        other => {
            return Err(CoordError::Unexpected { addr: who.clone(), answer: format!("{other:?}") });
        }
    };
    match client.call(&Request::RememberedFarm).map_err(protocol)? {
        Response::RememberedFarm(remembered) => stats.remembered_farm = remembered,
        Response::Refused(_) => {}
        other => {
            return Err(CoordError::Unexpected { addr: who.clone(), answer: format!("{other:?}") });
        }
    }
    match client.call(&Request::LtransStats).map_err(protocol)? {
        Response::LtransStats(ltrans) => stats.ltrans = ltrans,
        Response::Refused(_) => {}
        other => {
            return Err(CoordError::Unexpected { addr: who.clone(), answer: format!("{other:?}") });
        }
    }
    Ok(stats)
}

/// A worker's counters (`discomy stats --worker`), asked over TCP with the farm token.
pub async fn worker_stats(addr: &str, auth: &AuthConfig) -> Result<WorkerStats, CoordError> {
    let who = format!("worker {addr}");
    match ask(addr, FleetRole::Worker, &who, auth, &discomy_protocol::Request::Stats).await? {
        discomy_protocol::Response::WorkerStats(s) => Ok(s),
        other => Err(CoordError::Unexpected { addr: who, answer: format!("{other:?}") }),
    }
}

/// `discomy stats --json`: the counts at the top level, as in `discomy run`'s summary.
#[derive(serde::Serialize)]
pub struct AgentStatsJson<'a> {
    /// The compile units.
    #[serde(flatten)]
    pub counts: &'a discomy_protocol::stats::UnitCounts,
    /// Calls that were not compile units, by reason.
    pub other_calls: &'a std::collections::BTreeMap<String, u64>,
    /// The agent's toolchain store.
    pub store: &'a StoreActivity,
    /// Whether the agent is logged in to a coordinator.
    pub coordinator_joined: bool,
    /// Hosts put in backoff after a failed exchange.
    pub backoffs: u64,
    /// Seconds since the agent started.
    pub uptime_s: f64,
    /// Verification of remote results (requested, checked, mismatched, quarantined nodes).
    pub verification: &'a discomy_protocol::stats::VerifyCounts,
    /// The workers remembered from the coordinator and what was placed on them while no
    /// coordinator answered (`workers`, `placed`, `remote`, `coordinator_lost`, `failovers`,
    /// `coordinator`).
    pub remembered_farm: &'a discomy_protocol::stats::RememberedFarmStats,
    /// LTRANS units (partitions of LTO links) sent to the farm: `units`, `remote`, `fallback`.
    pub ltrans: &'a discomy_protocol::stats::LtransCounts,
}

impl<'a> From<&'a AgentStats> for AgentStatsJson<'a> {
    fn from(s: &'a AgentStats) -> Self {
        AgentStatsJson {
            counts: &s.counts,
            other_calls: &s.other_calls,
            store: &s.store,
            coordinator_joined: s.coordinator_joined,
            backoffs: s.backoffs,
            uptime_s: s.uptime_s,
            verification: &s.verification,
            remembered_farm: &s.remembered_farm,
            ltrans: &s.ltrans,
        }
    }
}

/// An agent's counters as text: the summary's line, then the reasons.
pub fn render_agent_stats(s: &AgentStats) -> String {
    let mut out = String::new();
    let c = &s.counts;
    let _ = writeln!(
        out,
        "units: {}, remote: {}, local: {}, fallback: {}, cache_hits: {}, failed: {} (agent up {:.0} s)",
        c.units, c.remote, c.local, c.fallback, c.cache_hits, c.failed, s.uptime_s
    );
    let v = &s.verification;
    let _ = writeln!(
        out,
        "verified: {} of {} asked, {} mismatched; quarantined: {}",
        v.checked,
        v.requested,
        v.mismatched,
        if v.quarantined.is_empty() { "none".to_owned() } else { v.quarantined.join(", ") }
    );
    let r = &s.remembered_farm;
    if r.workers > 0 || r.placed > 0 || r.coordinator_lost > 0 {
        let _ = writeln!(
            out,
            "coordinator: {}; remembered workers: {}, units placed on them without a coordinator: {} \
             ({} remote); coordinator lost {} times, {} failovers",
            r.coordinator.as_deref().unwrap_or("none"),
            r.workers,
            r.placed,
            r.remote,
            r.coordinator_lost,
            r.failovers
        );
    }
    let l = &s.ltrans;
    if l.units > 0 {
        let _ = writeln!(
            out,
            "ltrans (partitions of LTO links): {}, remote: {}, fallback: {}",
            l.units, l.remote, l.fallback
        );
    }
    for (title, map) in [
        ("local, by reason", &c.local_reasons),
        ("fallback, by reason", &c.fallback_reasons),
        ("other calls (not units)", &s.other_calls),
    ] {
        if map.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{title}:");
        for (reason, n) in map {
            let _ = writeln!(out, "  {reason:<18} {n}");
        }
    }
    out
}

/// `discomy stats --worker` as text: its toolchain store and its distcc jobs by result.
pub fn render_worker_stats(stats: &WorkerStats) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "toolchains pushed: {}", stats.store.toolchains_pushed);
    for t in &stats.store.installed {
        let _ = writeln!(out, "installed {} ({})", t.name, t.digest);
    }
    let _ = writeln!(
        out,
        "installs: {}, blobs received: {} ({} again)",
        stats.store.installs, stats.store.blobs_received, stats.store.blobs_received_again
    );
    for (result, n) in &stats.distcc {
        let _ = writeln!(out, "distcc {result}: {n}");
    }
    out
}
