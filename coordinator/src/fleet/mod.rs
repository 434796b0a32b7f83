//! The working fleet (issue 17): the farm CA the coordinator owns, join tokens, join requests
//! waiting for an operator, approved nodes and their certificates, revocation.
//!
//! On disk, in the fleet directory (`--fleet-dir`):
//! - `ca.pem`, `ca.key` (0600): the farm CA, made on first start (or the operator's own);
//! - `admin.pem`, `admin.key` (0600): the operator's certificate for `discomy nodes`;
//! - `fleet.json` (0600, written durably): tokens (hashed), requests, nodes, serials.
//!
//! The coordinator's own certificate is issued afresh at each start and never written.
//! [`serve`] holds the wire side: what each message may do, given the peer's certificate.

mod names;
pub mod serve;
mod state;
pub mod tenant;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use discomy_protocol::fleet::{FleetAnswer, FleetCommand, FleetRole, JoinRequest, JoinState};
use discomy_protocol::plumbing::fs::{WriteOptions, write_atomically_with};
use discomy_protocol::tls::{Ca, CertInfo, ClientAuth, FarmTls, Issued, TlsError, Transport, pki};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use names::{https_names, valid_dns_name};
use state::{Entry, NodeState, State, Token};

/// What can go wrong opening the fleet directory.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A certificate or key.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A file.
    #[error("{path}: {err}")]
    File {
        /// The file.
        path: String,
        /// Why.
        err: std::io::Error,
    },
    /// `fleet.json` does not parse.
    #[error("{0}: not a fleet state file: {1}")]
    State(String, String),
}

/// How long a node's certificate lives unless configured (it renews at two thirds).
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long the HTTPS certificate of the build queue's API lives.
pub const HTTPS_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// How often the coordinator gives its HTTPS a fresh certificate.
pub const HTTPS_RENEW: Duration = Duration::from_secs(86_400);
/// Most join requests waiting for an operator at once.
pub const MAX_PENDING: usize = 1024;
/// Most join tokens alive at once.
pub const MAX_TOKENS: usize = 256;
/// Most records kept (requests, nodes, rejected and revoked ones).
pub const MAX_RECORDS: usize = 20_000;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn random_hex(bytes: usize) -> Result<String, String> {
    discomy_protocol::handshake::random_hex(bytes).map_err(|e| format!("randomness: {e}"))
}

/// The fleet: CA, records, and the TLS the coordinator serves with.
pub struct Fleet {
    dir: PathBuf,
    ca: Ca,
    tls: Arc<FarmTls>,
    lifetime: Duration,
    state: Mutex<State>,
    /// Node name → kill switches of its open connections (revocation closes them).
    sessions: Mutex<HashMap<String, Vec<CancellationToken>>>,
    /// Every revoked serial, for nodes and agents to refuse (sent after login and on change).
    revoked: tokio::sync::watch::Sender<Arc<Vec<String>>>,
    /// The tenant tokens' keeper (the build queue), once the coordinator has one.
    tenants: std::sync::OnceLock<tenant::Tenants>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// Records a pending request, unless too many wait or its name is taken; its id.
fn record_request(
    state: &mut State,
    req: JoinRequest,
    from: SocketAddr,
    now: u64,
) -> Result<u64, String> {
    if state.pending() >= MAX_PENDING || state.nodes.len() >= MAX_RECORDS {
        return Err("too many join requests wait for an operator; try later".into());
    }
    if state.nodes.iter().any(|n| n.record.name == req.name && n.state().holds_name()) {
        return Err(format!("a node named {} is already pending or approved", req.name));
    }
    let request = state.next_id;
    state.next_id += 1;
    state.nodes.push(Entry::pending(request, req, from.to_string(), now));
    Ok(request)
}

fn write_secret(path: &Path, text: &str, mode: u32) -> Result<(), FleetError> {
    let how = WriteOptions { mode: Some(mode), durable: true, keep_existing: false };
    write_atomically_with(path, &[text.as_bytes()], how)
        .map_err(|err| FleetError::File { path: path.display().to_string(), err })
}

impl Fleet {
    /// Opens (or makes) the fleet directory of `farm`.
    pub fn open(dir: &Path, farm: &str, lifetime: Duration) -> Result<Fleet, FleetError> {
        let file = |err| FleetError::File { path: dir.display().to_string(), err };
        std::fs::create_dir_all(dir).map_err(file)?;
        let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
        let ca = if ca_pem.exists() {
            let cert = discomy_protocol::tls::read_pem_file(&ca_pem, false)?;
            let key = discomy_protocol::tls::read_pem_file(&ca_key, true)?;
            Ca::load(&cert, &key)?
        } else {
            let (ca, key) = Ca::create(farm)?;
            write_secret(&ca_key, &key, 0o600)?;
            write_secret(&ca_pem, ca.pem(), 0o644)?;
            info!(dir = %dir.display(), "made the farm CA");
            ca
        };
        let (admin_pem, admin_key) = (dir.join("admin.pem"), dir.join("admin.key"));
        if !admin_pem.exists() {
            let year = Duration::from_secs(365 * 86_400);
            let (issued, key) = ca.issue_with_key("admin", &[FleetRole::Admin], year)?;
            write_secret(&admin_key, &key, 0o600)?;
            write_secret(&admin_pem, &issued.pem, 0o600)?;
        }
        let (own, key) = ca.issue_with_key(
            "coordinator",
            &[FleetRole::Coordinator],
            Duration::from_secs(30 * 86_400),
        )?;
        let tls = Arc::new(FarmTls::new(ca.pem(), &own.pem, &key, ClientAuth::Optional)?);
        let state = State::load(&dir.join("fleet.json"))?;
        let serials = state.revoked_serials();
        for serial in &serials {
            tls.revoked().insert(serial.clone());
        }
        let (revoked, _) = tokio::sync::watch::channel(Arc::new(serials));
        Ok(Fleet {
            dir: dir.to_path_buf(),
            ca,
            tls,
            lifetime,
            state: Mutex::new(state),
            sessions: Mutex::new(HashMap::new()),
            revoked,
            tenants: std::sync::OnceLock::new(),
        })
    }

    /// The TLS of the coordinator's HTTPS (build queue API, web UI, builders' uploads): a
    /// certificate of role coordinator that also names `names` (the host names and addresses
    /// clients dial), issued afresh at each start like the farm listener's and never written;
    /// clients' certificates are checked against the fleet's revocations.
    pub fn https(&self, names: &[String]) -> Result<Arc<FarmTls>, FleetError> {
        let (own, key) = self.https_certificate(names)?;
        let tls = FarmTls::https(self.ca.pem(), &own.pem, &key, self.tls.revoked().clone())?;
        Ok(Arc::new(tls))
    }

    /// Swaps a fresh certificate (same names) into `tls`, made by [`Fleet::https`]; the
    /// coordinator does it every [`HTTPS_RENEW`], well within the certificate's life.
    pub fn renew_https(&self, tls: &FarmTls, names: &[String]) -> Result<(), FleetError> {
        let (own, key) = self.https_certificate(names)?;
        tls.reload(&own.pem, &key)?;
        Ok(())
    }

    fn https_certificate(&self, names: &[String]) -> Result<(Issued, String), FleetError> {
        Ok(self.ca.issue_server_with_key(
            "coordinator",
            &[FleetRole::Coordinator],
            HTTPS_LIFETIME,
            names,
        )?)
    }

    /// The farm CA's certificate (PEM), which clients trust.
    pub fn ca_pem(&self) -> &str {
        self.ca.pem()
    }

    /// The transport the coordinator's listener serves with.
    pub fn transport(&self) -> Transport {
        Transport::Tls(self.tls.clone())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, state: &State) -> Result<(), String> {
        state
            .save(&self.dir.join("fleet.json"))
            .map_err(|e| format!("the fleet state could not be saved: {e}"))
    }

    /// A host asks to join with a join token.
    pub fn join(&self, req: JoinRequest, from: SocketAddr) -> Result<JoinState, String> {
        req.check()?;
        pki::check_request(&req.csr_pem).map_err(|e| e.to_string())?;
        let mut state = self.state();
        let now = now();
        state.tokens.retain(|t| t.expires_at > now && t.uses_left > 0);
        let (id, secret) = req.token.split_once('.').ok_or("a join token is ID.SECRET")?;
        let hash = blake3::hash(secret.as_bytes());
        let Some(at) = state.tokens.iter().position(|t| t.id == id && t.matches(&hash)) else {
            return Err("join token unknown, expired or used up".into());
        };
        // A request refused for what it asks does not use the token up.
        let request = record_request(&mut state, req, from, now)?;
        state.tokens[at].uses_left -= 1;
        self.save(&state)?;
        info!(request, %from, "join request waits for an operator");
        Ok(JoinState::Pending { request })
    }

    /// Where request `request` stands, for the joiner that shows its `ticket` (anyone else
    /// learns nothing, not even whether the request exists).
    pub fn poll(&self, request: u64, ticket: &str) -> JoinState {
        let state = self.state();
        match state.nodes.iter().find(|n| n.record.request == request) {
            Some(n) if n.ticket_matches(ticket) => n.join_state(),
            _ => JoinState::Rejected {
                reason: format!("no join request {request} with this ticket"),
            },
        }
    }

    /// A node with a valid certificate asks for a new one (new key, same name and roles).
    pub fn renew(&self, peer: &CertInfo, csr_pem: &str) -> Result<JoinState, String> {
        let mut state = self.state();
        let entry = state
            .nodes
            .iter_mut()
            .find(|n| {
                n.record.name == peer.name
                    && n.record.serial.is_some()
                    && n.state() == NodeState::Approved
            })
            .ok_or("no approved node has this certificate")?;
        if !entry.serials.contains(&peer.serial) {
            return Err("this certificate is not one the node was given".into());
        }
        let issued = self
            .ca
            .issue_for_request(csr_pem, &entry.record.name, &entry.record.roles, self.lifetime)
            .map_err(|e| e.to_string())?;
        entry.approve(&issued);
        self.save(&state)?;
        Ok(JoinState::Approved { cert_pem: issued.pem })
    }

    /// The revoked serials, now and as they change.
    pub fn watch_revoked(&self) -> tokio::sync::watch::Receiver<Arc<Vec<String>>> {
        self.revoked.subscribe()
    }

    /// Registers an open connection of `peer`: the token is cancelled when it is revoked.
    pub fn session(&self, peer: &CertInfo) -> CancellationToken {
        let token = CancellationToken::new();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let list = sessions.entry(peer.name.clone()).or_default();
        // Connections that ended cancelled their own token (the caller's drop guard).
        list.retain(|t| !t.is_cancelled());
        list.push(token.clone());
        token
    }

    /// An operator's command.
    pub fn command(&self, cmd: FleetCommand) -> Result<FleetAnswer, String> {
        let mut state = self.state();
        let answer = match cmd {
            FleetCommand::List => {
                return Ok(FleetAnswer::Nodes(
                    state.nodes.iter().map(|n| n.record.clone()).collect(),
                ));
            }
            FleetCommand::CreateToken { uses, ttl_secs } => {
                if uses == 0 || uses > 10_000 || ttl_secs == 0 || ttl_secs > 30 * 86_400 {
                    return Err("a token admits 1-10000 joins within 1 s to 30 days".into());
                }
                let now = now();
                state.tokens.retain(|t| t.expires_at > now && t.uses_left > 0);
                if state.tokens.len() >= MAX_TOKENS {
                    return Err(format!("{MAX_TOKENS} join tokens are alive already"));
                }
                let (id, secret) = (random_hex(4)?, random_hex(16)?);
                let expires_at = now.saturating_add(ttl_secs);
                state.tokens.push(Token::new(id.clone(), &secret, uses, expires_at));
                FleetAnswer::Token { token: format!("{id}.{secret}"), expires_at }
            }
            FleetCommand::Approve { request } => {
                let entry = state.entry(request)?;
                if entry.state() != NodeState::Pending {
                    return Err(format!(
                        "request {request} is {}, not pending",
                        entry.record.state
                    ));
                }
                self.approve_entry(entry)?;
                info!(request, name = %entry.record.name, "node approved");
                FleetAnswer::Done { what: format!("approved {} ({request})", entry.record.name) }
            }
            FleetCommand::Reject { request, reason } => {
                let entry = state.entry(request)?;
                if entry.state() != NodeState::Pending {
                    return Err(format!(
                        "request {request} is {}, not pending",
                        entry.record.state
                    ));
                }
                entry.reject(discomy_protocol::sources::truncated(&reason, 256).to_string());
                FleetAnswer::Done { what: format!("rejected {} ({request})", entry.record.name) }
            }
            FleetCommand::Revoke { name } => {
                let Some(entry) = state
                    .nodes
                    .iter_mut()
                    .find(|n| n.record.name == name && n.state() == NodeState::Approved)
                else {
                    return Err(format!("no approved node named {name}"));
                };
                let closed = self.revoke_entry(entry, "revoked by the operator");
                FleetAnswer::Done { what: format!("revoked {name}; closed {closed} connections") }
            }
        };
        self.save(&state)?;
        Ok(answer)
    }

    /// Approves a pending request: a certificate for its key, with the name and roles recorded.
    fn approve_entry(&self, entry: &mut Entry) -> Result<(), String> {
        let record = &entry.record;
        let issued = self
            .ca
            .issue_for_request(&entry.csr_pem, &record.name, &record.roles, self.lifetime)
            .map_err(|e| e.to_string())?;
        entry.approve(&issued);
        Ok(())
    }

    /// Revokes an approved node: its serials are refused by the coordinator's TLS and pushed
    /// to every node and agent, and its open connections are closed; how many were.
    fn revoke_entry(&self, entry: &mut Entry, reason: &str) -> usize {
        entry.revoke(reason);
        for serial in &entry.serials {
            self.tls.revoked().insert(serial.clone());
        }
        let serials = entry.serials.clone();
        self.revoked.send_modify(|all| Arc::make_mut(all).extend(serials));
        let name = entry.record.name.clone();
        let closed = self.close_sessions(&name);
        warn!(%name, closed, reason, "node revoked");
        closed
    }

    fn close_sessions(&self, name: &str) -> usize {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let list = sessions.remove(name).unwrap_or_default();
        let open = list.iter().filter(|t| !t.is_cancelled()).count();
        for t in list {
            t.cancel();
        }
        open
    }
}
