//! The working fleet's wire types (issue 17): how a host asks to join, what an operator sees and
//! decides, and the roles a farm certificate can carry.
//!
//! ```text
//! joiner → Join(JoinRequest)        ← Join(Pending { request })      (TLS, server-authenticated)
//! joiner → JoinPoll { request, ticket } ← Join(Pending | Approved | Rejected)
//! node   → Renew { csr_pem }        ← Join(Approved)                 (mutual TLS, its own cert)
//! admin  → Fleet(FleetCommand)      ← Fleet(FleetAnswer) | Refused   (mutual TLS, admin cert)
//! ```
//!
//! Everything here arrives from a peer that may lie: the coordinator bounds every string and
//! list with [`JoinRequest::check`] before keeping any of it.

use serde::{Deserialize, Serialize};

/// What a farm certificate allows its holder to do. A certificate names one or more roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FleetRole {
    /// Serves compiles (the worker role) and may write the farm cache tier.
    Worker,
    /// Runs package builds.
    Builder,
    /// Asks for placements and sends units to workers (a build host's agent).
    Agent,
    /// Manages the fleet: approves, rejects and revokes nodes, makes join tokens, reads status.
    Admin,
    /// The coordinator itself (never granted to a node).
    Coordinator,
}

impl FleetRole {
    /// Every role, in a fixed order.
    pub const ALL: [FleetRole; 5] = [
        FleetRole::Worker,
        FleetRole::Builder,
        FleetRole::Agent,
        FleetRole::Admin,
        FleetRole::Coordinator,
    ];

    /// Its name in certificates, on command lines and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FleetRole::Worker => "worker",
            FleetRole::Builder => "builder",
            FleetRole::Agent => "agent",
            FleetRole::Admin => "admin",
            FleetRole::Coordinator => "coordinator",
        }
    }

    /// The role named `name`, if any.
    pub fn parse(name: &str) -> Option<FleetRole> {
        FleetRole::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for FleetRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The facts a host gives about itself when it asks to join (the "disco playlist").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// The donating organisation.
    pub organisation: String,
    /// Who to write to about this host.
    pub contact: String,
    /// CPU cores.
    pub cores: u32,
    /// Memory, bytes.
    pub memory_bytes: u64,
    /// Free disk where the node keeps its state, bytes.
    pub disk_bytes: u64,
    /// The address it will serve on, or a note on its network.
    pub network: String,
}

/// A host's request to join the fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The join token, `ID.SECRET`, as the operator handed it out.
    pub token: String,
    /// The node's name (also its certificate's common name).
    pub name: String,
    /// A PEM certificate request signed by the node's new key.
    pub csr_pem: String,
    /// The roles asked for.
    pub roles: Vec<FleetRole>,
    /// What the host says about itself.
    pub facts: HostFacts,
    /// A secret the joiner chose (16-64 hex digits): its polls must show it, so nobody else
    /// learns how its request stands. The coordinator keeps only its hash.
    pub ticket: String,
}

/// Longest node name, organisation, contact or network note kept.
pub const MAX_FACT_LEN: usize = 128;
/// Largest certificate request accepted, bytes of PEM.
pub const MAX_CSR_LEN: usize = 8192;

/// Whether `name` can name a node: 1 to 64 of `A-Za-z0-9._-`, not starting with `.` or `-`.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl JoinRequest {
    /// Refuses a request whose fields are out of bounds, with the reason.
    pub fn check(&self) -> Result<(), String> {
        if !valid_node_name(&self.name) {
            return Err(format!("node name {:?} is not 1-64 of A-Za-z0-9._-", self.name));
        }
        if self.csr_pem.len() > MAX_CSR_LEN {
            return Err(format!("certificate request over {MAX_CSR_LEN} bytes"));
        }
        if self.token.len() > MAX_FACT_LEN {
            return Err("join token too long".into());
        }
        if !(16..=64).contains(&self.ticket.len())
            || !self.ticket.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err("the poll ticket is not 16-64 hex digits".into());
        }
        let f = &self.facts;
        for (what, text) in
            [("organisation", &f.organisation), ("contact", &f.contact), ("network", &f.network)]
        {
            if text.len() > MAX_FACT_LEN || text.chars().any(char::is_control) {
                return Err(format!("{what}: over {MAX_FACT_LEN} bytes or control characters"));
            }
        }
        if self.roles.is_empty() || self.roles.len() > 3 {
            return Err("ask for one to three of the roles worker, builder, agent".into());
        }
        if (1..self.roles.len()).any(|i| self.roles[..i].contains(&self.roles[i])) {
            return Err("a role is named twice".into());
        }
        if self.roles.iter().any(|r| matches!(r, FleetRole::Admin | FleetRole::Coordinator)) {
            return Err("a node may ask for worker, builder and agent only".into());
        }
        Ok(())
    }
}

/// Where a join request stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinState {
    /// Waiting for an operator; poll with this id.
    Pending {
        /// The request's id.
        request: u64,
    },
    /// Approved: the node's certificate (PEM), signed by the farm CA.
    Approved {
        /// The certificate.
        cert_pem: String,
    },
    /// Rejected, or revoked before it was fetched.
    Rejected {
        /// The operator's reason.
        reason: String,
    },
}

/// An operator's command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FleetCommand {
    /// Every request and node the coordinator knows.
    List,
    /// Approves a pending request: the node gets its certificate on its next poll.
    Approve {
        /// The request's id.
        request: u64,
    },
    /// Rejects a pending request.
    Reject {
        /// The request's id.
        request: u64,
        /// Why, for the node's operator.
        reason: String,
    },
    /// Revokes an approved node: its certificates are refused from now on and its open
    /// connections are closed.
    Revoke {
        /// The node's name.
        name: String,
    },
    /// Makes a join token good for `uses` joins within `ttl_secs`.
    CreateToken {
        /// How many joins it admits (1 = single-use).
        uses: u32,
        /// Seconds it stays valid.
        ttl_secs: u64,
    },
}

/// One request or node, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The request's id.
    pub request: u64,
    /// The node's name.
    pub name: String,
    /// The roles asked for (and granted once approved).
    pub roles: Vec<FleetRole>,
    /// What the host said about itself.
    pub facts: HostFacts,
    /// `pending`, `approved`, `rejected` or `revoked`.
    pub state: String,
    /// The serial of its newest certificate (hex), once approved.
    pub serial: Option<String>,
    /// When its newest certificate expires (unix seconds).
    pub not_after: Option<u64>,
    /// When it asked (unix seconds).
    pub asked_at: u64,
    /// The peer address it asked from.
    pub asked_from: String,
    /// The tenant token that enrolled it (`token 7 (alice)`), for an agent enrolled without an
    /// operator; none for a node an operator approved.
    #[serde(default)]
    pub enrolled_by: Option<String>,
}

/// The coordinator's answer to a [`FleetCommand`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FleetAnswer {
    /// For `List`.
    Nodes(Vec<NodeRecord>),
    /// The command was carried out.
    Done {
        /// What was done, for the operator.
        what: String,
    },
    /// For `CreateToken`: the token (shown once; the coordinator keeps only its hash).
    Token {
        /// `ID.SECRET`.
        token: String,
        /// Unix seconds after which it is refused.
        expires_at: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> JoinRequest {
        JoinRequest {
            token: "abc.def".into(),
            name: "donor-1".into(),
            csr_pem: "x".into(),
            roles: vec![FleetRole::Worker],
            facts: HostFacts::default(),
            ticket: "0123456789abcdef".into(),
        }
    }

    #[test]
    fn requests_out_of_bounds_are_refused() {
        assert!(request().check().is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", &"n".repeat(65)] {
            let r = JoinRequest { name: bad.into(), ..request() };
            assert!(r.check().is_err(), "{bad:?}");
        }
        let r = JoinRequest { roles: vec![FleetRole::Admin], ..request() };
        assert!(r.check().is_err());
        let r = JoinRequest { roles: vec![], ..request() };
        assert!(r.check().is_err());
        let r = JoinRequest { roles: vec![FleetRole::Worker, FleetRole::Worker], ..request() };
        assert!(r.check().is_err());
        let mut r = request();
        r.facts.contact = "a\nb".into();
        assert!(r.check().is_err());
        let r = JoinRequest { csr_pem: "x".repeat(MAX_CSR_LEN + 1), ..request() };
        assert!(r.check().is_err());
        for ticket in ["", "short", &"g".repeat(20), &"a".repeat(65)] {
            let r = JoinRequest { ticket: ticket.into(), ..request() };
            assert!(r.check().is_err(), "{ticket:?}");
        }
    }

    #[test]
    fn role_names_round_trip() {
        for r in FleetRole::ALL {
            assert_eq!(FleetRole::parse(r.as_str()), Some(r));
        }
        assert_eq!(FleetRole::parse("root"), None);
    }
}
