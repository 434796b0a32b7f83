//! Coordinators under test: a `discomy-coordinator` on loopback (not advertised), the farm as
//! `discomy status --json` shows it, and waiting for its nodes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{Proc, bin, clean_command};

/// Starts a coordinator on `listen` (not advertised, `extra` flags) and waits for its address
/// file.
pub fn start_coordinator(
    dir: &Path,
    name: &str,
    listen: &str,
    extra: &[&str],
) -> (Proc, SocketAddr) {
    let addr_file = dir.join(format!("{name}.addr"));
    let _ = std::fs::remove_file(&addr_file);
    let mut cmd = clean_command(bin("discomy-coordinator"));
    // Loopback farms are not advertised: other tests' nodes must not find them.
    cmd.args(["--no-mdns", "--listen", listen, "--addr-file"]).arg(&addr_file).args(extra);
    let mut proc = Proc::spawn(name, &mut cmd, dir);
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&addr_file).unwrap_or_default();
        if text.ends_with('\n') {
            let addr = text.trim().parse().unwrap_or_else(|e| panic!("{name}: {text:?}: {e}"));
            return (proc, addr);
        }
        assert!(proc.try_wait().is_none(), "{name} exited:\n{}", proc.logs(40));
        assert!(start.elapsed() < Duration::from_secs(20), "{name} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `discomy status --json` against `addr`, parsed; its stderr when it fails.
pub fn farm_status(addr: SocketAddr, token: Option<&str>) -> Result<serde_json::Value, String> {
    let mut cmd = clean_command(bin("discomy"));
    cmd.args(["status", "--json", "--coordinator", &addr.to_string()]);
    if let Some(t) = token {
        cmd.env("DISCOMY_TOKEN", t);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// How many nodes the coordinator at `addr` has (0 when it does not answer).
pub fn node_count(addr: SocketAddr) -> usize {
    farm_status(addr, None).ok().and_then(|s| s["nodes"].as_array().map(Vec::len)).unwrap_or(0)
}

/// Waits until the coordinator at `addr` has `n` nodes; fails the test after `within`.
pub fn wait_nodes(addr: SocketAddr, n: usize, within: Duration) {
    let start = Instant::now();
    while node_count(addr) != n {
        assert!(start.elapsed() < within, "the farm did not reach {n} nodes within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
