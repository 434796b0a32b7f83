//! `discomy status`: asks the coordinator for the farm as it sees it, and prints it.

use std::fmt::Write as _;
use std::time::Duration;

use discomy_protocol::AuthConfig;
use discomy_protocol::asyncio::{client_handshake, recv, send};
use discomy_protocol::coordinator::{CoordRequest, CoordResponse, FarmStatus};
use tokio::net::TcpStream;

/// Fetches the farm's status from the coordinator at `addr`.
pub async fn fetch(addr: &str, auth: &AuthConfig) -> Result<FarmStatus, String> {
    let attempt = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut conn = client_handshake(stream, auth).await.map_err(|e| e.to_string())?;
        send(&mut conn, &CoordRequest::Status).await.map_err(|e| e.to_string())?;
        match recv::<_, CoordResponse>(&mut conn).await.map_err(|e| e.to_string())? {
            CoordResponse::Status(s) => Ok(s),
            CoordResponse::Refused { reason } => Err(reason),
            other => Err(format!("unexpected answer {other:?}")),
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(r) => r.map_err(|e| format!("coordinator {addr}: {e}")),
        Err(_) => Err(format!("coordinator {addr}: timed out")),
    }
}

/// A human-readable table.
pub fn render(s: &FarmStatus) -> String {
    let mut out = String::new();
    let slots: u32 = s.nodes.iter().map(|n| n.slots).sum();
    let busy: u32 = s.nodes.iter().map(|n| n.assigned).sum();
    let _ = writeln!(
        out,
        "farm {}: {} nodes, {busy}/{slots} slots in use, {} queued",
        s.farm,
        s.nodes.len(),
        s.queued
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
