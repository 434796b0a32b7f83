//! The fleet's records as kept in `fleet.json`: join tokens (only a hash of each secret),
//! requests and nodes with their certificates' serials. Read back bounded, as untrusted input.

use std::path::Path;

use discomy_protocol::fleet::{JoinRequest, JoinState, NodeRecord};
use discomy_protocol::plumbing::fs::{WriteOptions, write_atomically_with};
use discomy_protocol::tls::Issued;
use serde::{Deserialize, Serialize};

use super::FleetError;

/// Largest `fleet.json` read.
const MAX_STATE_FILE: u64 = 64 << 20;

/// A join token: its id in clear, its secret only as a blake3 hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Token {
    pub id: String,
    hash: String,
    pub uses_left: u32,
    pub expires_at: u64,
}

impl Token {
    pub fn new(id: String, secret: &str, uses: u32, expires_at: u64) -> Token {
        Token {
            id,
            hash: blake3::hash(secret.as_bytes()).to_hex().to_string(),
            uses_left: uses,
            expires_at,
        }
    }
    /// Constant-time comparison through blake3::Hash's PartialEq.
    pub fn matches(&self, hash: &blake3::Hash) -> bool {
        blake3::Hash::from_hex(&self.hash).is_ok_and(|h| h == *hash)
    }
}

/// Where a record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NodeState {
    Pending,
    Approved,
    Rejected,
    Revoked,
}

impl NodeState {
    fn parse(s: &str) -> NodeState {
        match s {
            "pending" => NodeState::Pending,
            "approved" => NodeState::Approved,
            "revoked" => NodeState::Revoked,
            _ => NodeState::Rejected,
        }
    }
    /// Whether a record in this state keeps its name from others.
    pub fn holds_name(self) -> bool {
        matches!(self, NodeState::Pending | NodeState::Approved)
    }
}

/// One request or node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Entry {
    pub record: NodeRecord,
    /// The request as sent, kept until it is decided.
    pub csr_pem: String,
    /// The newest certificate, for the node's polls.
    pub cert_pem: Option<String>,
    /// Every serial it was given (refused together on revocation).
    pub serials: Vec<String>,
    /// The operator's reason, once rejected.
    pub reason: Option<String>,
    /// blake3 of the joiner's poll ticket (hex).
    #[serde(default)]
    pub ticket_hash: String,
    /// The tenant token that enrolled it (an agent enrolled without an operator): its
    /// renewals need the token alive, and revoking the token revokes it.
    #[serde(default)]
    pub tenant: Option<u64>,
}

impl Entry {
    pub fn pending(request: u64, req: JoinRequest, from: String, now: u64) -> Entry {
        Entry {
            record: NodeRecord {
                request,
                name: req.name,
                roles: req.roles,
                facts: req.facts,
                state: "pending".into(),
                serial: None,
                not_after: None,
                asked_at: now,
                asked_from: from,
                enrolled_by: None,
            },
            csr_pem: req.csr_pem,
            cert_pem: None,
            serials: Vec::new(),
            reason: None,
            ticket_hash: blake3::hash(req.ticket.as_bytes()).to_hex().to_string(),
            tenant: None,
        }
    }
    /// Whether `ticket` is the one the joiner chose (constant time, through blake3::Hash).
    pub fn ticket_matches(&self, ticket: &str) -> bool {
        blake3::Hash::from_hex(&self.ticket_hash)
            .is_ok_and(|h| h == blake3::hash(ticket.as_bytes()))
    }
    pub fn state(&self) -> NodeState {
        NodeState::parse(&self.record.state)
    }
    pub fn approve(&mut self, issued: &Issued) {
        self.record.state = "approved".into();
        self.record.serial = Some(issued.serial.clone());
        self.record.not_after = Some(issued.not_after);
        self.cert_pem = Some(issued.pem.clone());
        self.serials.push(issued.serial.clone());
        self.csr_pem.clear();
    }
    pub fn reject(&mut self, reason: String) {
        self.record.state = "rejected".into();
        self.reason = Some(reason);
        self.csr_pem.clear();
    }
    pub fn revoke(&mut self, reason: &str) {
        self.record.state = "revoked".into();
        self.reason = Some(reason.into());
        self.cert_pem = None;
    }
    pub fn join_state(&self) -> JoinState {
        match (self.state(), &self.cert_pem) {
            (NodeState::Pending, _) => JoinState::Pending { request: self.record.request },
            (NodeState::Approved, Some(pem)) => JoinState::Approved { cert_pem: pem.clone() },
            _ => JoinState::Rejected {
                reason: self.reason.clone().unwrap_or_else(|| "rejected".into()),
            },
        }
    }
}

/// Everything in `fleet.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct State {
    pub next_id: u64,
    pub tokens: Vec<Token>,
    pub nodes: Vec<Entry>,
}

impl State {
    /// The state in `file`; empty when there is none yet.
    pub fn load(file: &Path) -> Result<State, FleetError> {
        let bytes =
            match discomy_protocol::plumbing::untrusted::read_untrusted(file, MAX_STATE_FILE) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(State { next_id: 1, ..State::default() });
                }
                Err(err) => return Err(FleetError::File { path: file.display().to_string(), err }),
            };
        let mut state: State = serde_json::from_slice(&bytes)
            .map_err(|e| FleetError::State(file.display().to_string(), e.to_string()))?;
        state.next_id =
            state.next_id.max(state.nodes.iter().map(|n| n.record.request + 1).max().unwrap_or(1));
        Ok(state)
    }

    /// Writes the state to `file`, atomically and durably, readable by its owner only.
    pub fn save(&self, file: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let how = WriteOptions { mode: Some(0o600), durable: true, keep_existing: false };
        write_atomically_with(file, &[&text], how)
    }

    /// Requests waiting for an operator.
    pub fn pending(&self) -> usize {
        self.nodes.iter().filter(|n| n.state() == NodeState::Pending).count()
    }

    /// Serials of revoked nodes.
    pub fn revoked_serials(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.state() == NodeState::Revoked)
            .flat_map(|n| n.serials.iter().cloned())
            .collect()
    }

    /// The record of request `request`.
    pub fn entry(&mut self, request: u64) -> Result<&mut Entry, String> {
        self.nodes
            .iter_mut()
            .find(|n| n.record.request == request)
            .ok_or_else(|| format!("no join request {request}"))
    }
}
