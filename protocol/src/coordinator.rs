//! Messages between the coordinator and its peers: nodes (worker role), agents and `discomy
//! status`. Same preamble, handshake and framing as every other connection.
//!
//! ```text
//! node   → NodeLogin, then Load every second (and ToolchainAdded)   ← Welcome | Refused
//! agent  → AgentLogin, then Place / Done / Status, any number,      ← Welcome, then Placed (by tag),
//!          pipelined (Status: the farm view the agent remembers)       Hedge, Status
//! status → Status                                                    ← Status
//! joiner → Join / JoinPoll; node → Renew; admin → Fleet              (see [`crate::fleet`])
//! ```
//!
//! Enum variants are append-only: never reorder or remove one (postcard encodes the index).

use serde::{Deserialize, Serialize};

use crate::Digest;

/// The mDNS service type coordinators advertise.
pub const MDNS_SERVICE: &str = "_discomy._tcp.local.";
/// The coordinator's default port.
pub const DEFAULT_PORT: u16 = 3634;

/// What a peer asks of the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CoordRequest {
    /// A worker joins the farm. First message of a node connection.
    NodeLogin(NodeLogin),
    /// A node's periodic load report; also its heartbeat.
    Load(LoadReport),
    /// An agent joins as a submitter. First message of an agent connection.
    AgentLogin {
        /// Its host id (matches the host id of a worker on the same machine).
        host: String,
    },
    /// Where should this unit run? Answered with [`CoordResponse::Placed`] carrying the same
    /// tag, possibly after other answers (units wait in the farm's queue when it is full).
    Place(PlaceRequest),
    /// A placed unit ended (no answer).
    Done(JobDone),
    /// The farm as the coordinator sees it; answered with [`CoordResponse::Status`].
    Status,
    /// A node installed a toolchain (no answer).
    ToolchainAdded(Digest),
    /// From an agent: a node's object differed from a local compile of the same unit. The node
    /// is dropped and refused from then on, farm-wide (no answer). Since version 8.
    Quarantine {
        /// The node's worker address, as placements name it.
        node: String,
        /// What was found, for the operator.
        reason: String,
    },
    /// A host asks to join the fleet (farms with a CA; no client certificate needed). Answered
    /// with [`CoordResponse::Join`]. Since version 10.
    Join(crate::fleet::JoinRequest),
    /// Where does this join request stand? Answered with [`CoordResponse::Join`].
    JoinPoll {
        /// The id the coordinator gave the request.
        request: u64,
        /// The ticket the joiner chose in its [`crate::fleet::JoinRequest`].
        ticket: String,
    },
    /// A node renews its certificate before it expires (over mutual TLS, with the current one):
    /// same name and roles, new key. Answered with [`CoordResponse::Join`].
    Renew {
        /// A PEM certificate request signed by the node's new key.
        csr_pem: String,
    },
    /// An operator's command (admin certificate). Answered with [`CoordResponse::Fleet`].
    Fleet(crate::fleet::FleetCommand),
    /// Any fleet certificate: tell me every revoked serial now and at each change. Answered
    /// with [`CoordResponse::Revoked`] at once and again whenever the list grows, until either
    /// side closes; for hosts with no node or agent session (a host-list agent). Since
    /// version 12.
    WatchRevoked,
}

/// The coordinator's answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CoordResponse {
    /// Login accepted.
    Welcome {
        /// The farm's name.
        farm: String,
        /// The id the coordinator gave this peer.
        id: u64,
    },
    /// Login refused; the reason is for the operator.
    Refused {
        /// Why.
        reason: String,
    },
    /// A placement.
    Placed(Placement),
    /// The farm's state.
    Status(FarmStatus),
    /// A second placement for a unit already placed (tag of its `Place`), because its node has
    /// stalled: the agent runs the unit there too, keeps the first answer, and reports both jobs
    /// with `Done` (the loser with `ok: false`).
    Hedge(Placement),
    /// Where a join or renewal stands. Since version 10.
    Join(crate::fleet::JoinState),
    /// The answer to an operator's command.
    Fleet(crate::fleet::FleetAnswer),
    /// To nodes and agents of a fleet: certificate serials (hex) revoked so far (after login,
    /// then on each revocation). A worker refuses their holders from then on, also on
    /// connections already open.
    Revoked {
        /// The serials.
        serials: Vec<String>,
    },
}

/// A worker's login.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeLogin {
    /// Host id (the hostname unless configured).
    pub host: String,
    /// `IP:PORT` where agents reach its worker; the coordinator connects back to check it.
    pub address: String,
    /// CPU cores.
    pub cores: u32,
    /// Concurrent compiles.
    pub slots: u32,
    /// Memory, MiB.
    pub memory_mb: u64,
    /// Compilers it holds (manifest digests).
    pub toolchains: Vec<Digest>,
}

/// A node's load.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// CPU load not caused by the farm's units, 0–1000.
    pub foreign_load: u16,
    /// Units compiling now.
    pub running: u32,
    /// Available memory, MiB.
    pub free_mem_mb: u64,
    /// Free disk in the work directory, MiB.
    pub free_disk_mb: u64,
}

/// An agent's question for one unit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlaceRequest {
    /// Chosen by the agent; echoed in the answer.
    pub tag: u64,
    /// The compiler.
    pub toolchain: Digest,
    /// Preprocessed size (what travels).
    pub bytes_in: u64,
    /// Work estimate: bytes of the unit from its main file.
    pub work: u64,
    /// Build priority, 0 first.
    pub priority: u8,
    /// The unit's key for the coordinator's cost history ([`unit_key`]); 0: none.
    pub unit: u64,
}

/// The key under which the coordinator remembers what a unit cost: its source's name, the
/// build's arguments and the compiler, so the same unit of the next rebuild of a package is
/// recognised. Never 0 (0 means "no key").
pub fn unit_key(toolchain: &Digest, source_name: &str, args: &[String]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(b"discomy unit key v1\0");
    h.update(&toolchain.0);
    h.update(source_name.as_bytes());
    for a in args {
        h.update(b"\0");
        h.update(a.as_bytes());
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(first).max(1)
}

/// Where a unit runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Placement {
    /// The request's tag.
    pub tag: u64,
    /// The coordinator's job id, for [`CoordRequest::Done`].
    pub job: u64,
    /// The worker's address; `None`: no node can take it, compile locally.
    pub worker: Option<String>,
}

/// How a placed unit ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct JobDone {
    /// The job.
    pub job: u64,
    /// The worker compiled it.
    pub ok: bool,
    /// Ask-to-answer wall time at the agent, transfer included.
    pub wall_ms: u64,
    /// The node's time on the unit as the agent measured it: from its last request handed to
    /// the socket to the answer read (the compile, its set-up and the object's transfer). Not
    /// the node's own `compile_ms`: a donor could make that up to draw work.
    pub cpu_ms: u64,
    /// Object bytes.
    pub bytes_out: u64,
}

/// The farm, for `discomy status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FarmStatus {
    /// Farm name.
    pub farm: String,
    /// Nodes.
    pub nodes: Vec<NodeStatus>,
    /// Submitters with placed or queued units.
    pub submitters: Vec<SubmitterStatus>,
    /// Units waiting for room.
    pub queued: u64,
    /// Second placements sent because a unit's node stalled, since the coordinator started.
    /// Since version 6.
    pub hedged: u64,
    /// Nodes that left the farm (connection dropped, or silent past `--node-timeout`), since
    /// the coordinator started. Since version 6.
    pub nodes_lost: u64,
    /// Worker addresses quarantined by agents' verification (refused from then on), sorted.
    /// Since version 8.
    pub quarantined: Vec<String>,
}

/// One node in [`FarmStatus`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Coordinator's id.
    pub id: u64,
    /// Host id.
    pub host: String,
    /// Worker address.
    pub address: String,
    /// Slots.
    pub slots: u32,
    /// Cores.
    pub cores: u32,
    /// Units placed there now (running and preloaded).
    pub assigned: u32,
    /// Last load report.
    pub load: LoadReport,
    /// Learned speed, work bytes per wall second (0 until measured).
    pub speed_wall_bps: f64,
    /// Learned speed, work bytes per CPU second.
    pub speed_cpu_bps: f64,
    /// Samples behind the speed.
    pub samples: u32,
    /// Units placed there since it joined.
    pub placed_total: u64,
    /// Units finished there since it joined.
    pub done_total: u64,
}

/// One submitter in [`FarmStatus`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubmitterStatus {
    /// Host id.
    pub host: String,
    /// Units placed.
    pub running: u64,
    /// Units queued.
    pub queued: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_keys_are_stable_and_tell_units_apart() {
        let gcc = Digest([1; 32]);
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let k = unit_key(&gcc, "lvm.c", &args(&["-O2", "-c", "lvm.c"]));
        assert_eq!(k, unit_key(&gcc, "lvm.c", &args(&["-O2", "-c", "lvm.c"])));
        assert_ne!(k, 0);
        assert_ne!(k, unit_key(&gcc, "lgc.c", &args(&["-O2", "-c", "lvm.c"])));
        assert_ne!(k, unit_key(&gcc, "lvm.c", &args(&["-O0", "-c", "lvm.c"])));
        assert_ne!(k, unit_key(&Digest([2; 32]), "lvm.c", &args(&["-O2", "-c", "lvm.c"])));
        // Argument boundaries count: ["-c", "x"] is not ["-cx"].
        assert_ne!(unit_key(&gcc, "a", &args(&["-c", "x"])), unit_key(&gcc, "a", &args(&["-cx"])));
    }
}
