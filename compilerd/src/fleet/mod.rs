//! This host in the working fleet (issue 17): its TLS identity, joining, and renewal.
//!
//! - [`install`] / [`transport`]: the process's one [`Transport`]. A compilerd process has one
//!   identity (one host, one fleet directory), set once at start-up; every link it dials or
//!   accepts goes through [`connect`] or [`transport`]`().accept`. Unset: plain TCP.
//! - [`join`]: `discomy-compilerd join`: a new key and certificate request, sent with the
//!   host's facts and a join token; waits until an operator decides.
//! - [`renew_in_background`]: asks the coordinator for a new certificate (new key) once two
//!   thirds of the current one's life has passed, and swaps it in.
//!
//! - [`home`]: the coordinator the host enrolled with, where a daemon without a coordinator
//!   session of its own (a host-list agent) renews and watches revocations.
//! - [`cli`]: `discomy nodes`, the operator's commands; [`bundle`]: the provisioning bundle.
//!
//! A node's fleet directory holds `ca.pem` (the farm CA it enrolled with), `node.key` (0600),
//! `node.pem`, `coordinator` (the address it joined through), and `request.json` while a
//! request waits.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use discomy_protocol::asyncio::{client_handshake, recv, send};
use discomy_protocol::coordinator::{CoordRequest, CoordResponse};
use discomy_protocol::fleet::{FleetRole, HostFacts, JoinRequest, JoinState};
use discomy_protocol::plumbing::fs::{WriteOptions, write_atomically_with};
use discomy_protocol::tls::{
    ClientAuth, FarmStream, FarmTls, TlsError, Transport, pki, read_pem_file,
};
use discomy_protocol::{AuthConfig, ProtocolError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub mod bundle;
pub mod cli;
pub mod home;

static TRANSPORT: OnceLock<Transport> = OnceLock::new();

/// What can go wrong joining or renewing.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Certificates or TLS.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Talking to the coordinator.
    #[error("coordinator {addr}: {source}")]
    Protocol {
        /// Where.
        addr: String,
        /// What.
        source: ProtocolError,
    },
    /// The coordinator said no.
    #[error("coordinator {addr} refused: {reason}")]
    Refused {
        /// Where.
        addr: String,
        /// Its reason.
        reason: String,
    },
    /// A value given on the command line.
    #[error("{0}")]
    Input(String),
    /// A file of the fleet directory.
    #[error("{path}: {err}")]
    File {
        /// The file.
        path: String,
        /// Why.
        err: io::Error,
    },
}

/// Sets the process's transport (once; later calls are ignored and say so).
pub fn install(transport: Transport) {
    if TRANSPORT.set(transport).is_err() {
        warn!("the fleet transport was set twice; the first stays");
    }
}

/// [`install`]s the TLS of a fleet directory (its `node.pem`, else its `admin.pem`).
pub fn install_dir(dir: PathBuf) -> Result<(), FleetError> {
    let tls = FleetDir(dir).tls(ClientAuth::Required)?;
    install(Transport::Tls(Arc::new(tls)));
    Ok(())
}

/// The process's transport: the fleet's TLS once [`install`]ed, plain TCP otherwise.
pub fn transport() -> &'static Transport {
    TRANSPORT.get_or_init(Transport::default)
}

/// Most revoked serials a host keeps (a coordinator sends them all on each change).
const MAX_REVOKED: usize = 1 << 20;

/// Serials the coordinator revoked: refused by this host's TLS from now on, and on connections
/// already open by [`is_revoked`].
pub fn learn_revoked(serials: Vec<String>) {
    let Some(tls) = transport().tls() else { return };
    for serial in serials.into_iter().take(MAX_REVOKED) {
        if serial.len() <= 64 && !tls.revoked().contains(&serial) {
            warn!(%serial, "a certificate of the fleet was revoked");
            tls.revoked().insert(serial);
        }
    }
}

/// Whether the peer certificate with `serial` was revoked.
pub fn is_revoked(serial: &str) -> bool {
    transport().tls().is_some_and(|tls| tls.revoked().contains(serial))
}

/// Whether the peer of an open connection was revoked since it was opened (an idle connection
/// kept for reuse is dropped then, not used). Reads the peer's certificate only when anything
/// was revoked at all.
pub fn peer_revoked(stream: &FarmStream) -> bool {
    let Some(tls) = transport().tls() else { return false };
    if tls.revoked().is_empty() {
        return false;
    }
    stream.peer_cert().is_some_and(|cert| tls.revoked().contains(&cert.serial))
}

/// Dials a server of `role` through the process's transport.
pub async fn connect(addr: &str, role: FleetRole) -> io::Result<FarmStream> {
    transport().connect(addr, role).await
}

/// The files of a fleet directory.
#[derive(Debug, Clone)]
pub struct FleetDir(pub PathBuf);

impl FleetDir {
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// This host's TLS from the directory: `node.pem`/`node.key`, or the operator's
    /// `admin.pem`/`admin.key` in a coordinator's directory.
    pub fn tls(&self, auth: ClientAuth) -> Result<FarmTls, FleetError> {
        let ca = self.path("ca.pem");
        for stem in ["node", "admin"] {
            let cert = self.path(&format!("{stem}.pem"));
            if cert.exists() {
                return Ok(FarmTls::from_files(
                    &ca,
                    &cert,
                    &self.path(&format!("{stem}.key")),
                    auth,
                )?);
            }
        }
        Err(FleetError::File {
            path: self.0.display().to_string(),
            err: io::Error::new(
                io::ErrorKind::NotFound,
                "no node.pem (not approved yet? run discomy-compilerd join) nor admin.pem",
            ),
        })
    }

    fn write(&self, name: &str, text: &str, mode: u32) -> Result<(), FleetError> {
        let path = self.path(name);
        let how = WriteOptions { mode: Some(mode), durable: true, keep_existing: false };
        write_atomically_with(&path, &[text.as_bytes()], how)
            .map_err(|err| FleetError::File { path: path.display().to_string(), err })
    }
}

/// One request to the coordinator at `addr` over `transport`, one answer.
async fn ask(
    transport: &Transport,
    addr: &str,
    request: &CoordRequest,
) -> Result<CoordResponse, FleetError> {
    let protocol = |source| FleetError::Protocol { addr: addr.to_string(), source };
    let attempt = async {
        let stream =
            transport.connect(addr, FleetRole::Coordinator).await.map_err(ProtocolError::Io)?;
        let mut conn = client_handshake(stream, &AuthConfig::none()).await?;
        send(&mut conn, request).await?;
        recv::<_, CoordResponse>(&mut conn).await
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or(Err(ProtocolError::Timeout))
        .map_err(protocol)?;
    match answer {
        CoordResponse::Refused { reason } => {
            Err(FleetError::Refused { addr: addr.to_string(), reason })
        }
        other => Ok(other),
    }
}

/// What `discomy-compilerd join` asks for.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// The coordinator's address.
    pub coordinator: String,
    /// The join token the operator handed out.
    pub token: String,
    /// The farm CA certificate to trust (copied into the fleet directory).
    pub ca: PathBuf,
    /// Where the key, certificate and pending request are kept.
    pub dir: PathBuf,
    /// This node's name.
    pub name: String,
    /// Roles asked for.
    pub roles: Vec<FleetRole>,
    /// What the host says about itself.
    pub facts: HostFacts,
    /// Return once the request is pending instead of waiting for the operator.
    pub no_wait: bool,
    /// How long to wait for the operator.
    pub wait: Duration,
}

/// How a join ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JoinOutcome {
    /// `pending` or `approved`.
    pub state: String,
    /// The request's id.
    pub request: u64,
    /// The certificate's file, once approved.
    pub cert: Option<PathBuf>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Pending {
    request: u64,
    coordinator: String,
    /// The secret our polls show (the coordinator keeps its hash).
    ticket: String,
}

/// Joins the fleet, or goes on waiting for a request made earlier (`request.json`).
pub async fn join(opts: &JoinOptions) -> Result<JoinOutcome, FleetError> {
    let dir = FleetDir(opts.dir.clone());
    std::fs::create_dir_all(&opts.dir)
        .map_err(|err| FleetError::File { path: opts.dir.display().to_string(), err })?;
    let ca_pem = read_pem_file(&opts.ca, false)?;
    dir.write("ca.pem", &ca_pem, 0o644)?;
    let joiner = Transport::Tls(Arc::new(FarmTls::joiner(&ca_pem)?));
    let pending_file = dir.path("request.json");
    let earlier = discomy_protocol::plumbing::read_untrusted(&pending_file, 4096)
        .ok()
        .and_then(|b| serde_json::from_slice::<Pending>(&b).ok());
    let (request, ticket) = match earlier {
        Some(p) => (p.request, p.ticket),
        None => {
            let ticket = discomy_protocol::handshake::random_hex(16)
                .map_err(|e| FleetError::Input(format!("randomness: {e}")))?;
            let (csr_pem, key_pem) = pki::new_request(&opts.name)?;
            dir.write("node.key.new", &key_pem, 0o600)?;
            let req = JoinRequest {
                token: opts.token.clone(),
                name: opts.name.clone(),
                csr_pem,
                roles: opts.roles.clone(),
                facts: opts.facts.clone(),
                ticket: ticket.clone(),
            };
            let request = match ask(&joiner, &opts.coordinator, &CoordRequest::Join(req)).await? {
                CoordResponse::Join(JoinState::Pending { request }) => request,
                other => return Err(unexpected(&opts.coordinator, &other)),
            };
            let pending =
                Pending { request, coordinator: opts.coordinator.clone(), ticket: ticket.clone() };
            let text = serde_json::to_string(&pending).map_err(|e| FleetError::File {
                path: pending_file.display().to_string(),
                err: io::Error::other(e),
            })?;
            dir.write("request.json", &text, 0o600)?;
            info!(request, "join request sent; waiting for an operator (discomy nodes approve)");
            (request, ticket)
        }
    };
    let deadline = tokio::time::Instant::now() + opts.wait;
    loop {
        match ask(
            &joiner,
            &opts.coordinator,
            &CoordRequest::JoinPoll { request, ticket: ticket.clone() },
        )
        .await?
        {
            CoordResponse::Join(JoinState::Approved { cert_pem }) => {
                let key = read_pem_file(&dir.path("node.key.new"), true)?;
                // The certificate must be for our key and chain to the CA we trust.
                FarmTls::new(&ca_pem, &cert_pem, &key, ClientAuth::Required)?;
                dir.write("node.key", &key, 0o600)?;
                dir.write("node.pem", &cert_pem, 0o644)?;
                dir.write_enrolled_coordinator(&opts.coordinator)?;
                let _ = std::fs::remove_file(dir.path("node.key.new"));
                let _ = std::fs::remove_file(&pending_file);
                let cert = Some(dir.path("node.pem"));
                return Ok(JoinOutcome { state: "approved".into(), request, cert });
            }
            CoordResponse::Join(JoinState::Rejected { reason }) => {
                let _ = std::fs::remove_file(&pending_file);
                return Err(FleetError::Refused { addr: opts.coordinator.clone(), reason });
            }
            CoordResponse::Join(JoinState::Pending { .. }) => {}
            other => return Err(unexpected(&opts.coordinator, &other)),
        }
        if opts.no_wait || tokio::time::Instant::now() >= deadline {
            return Ok(JoinOutcome { state: "pending".into(), request, cert: None });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn bad_input(why: String) -> FleetError {
    FleetError::Input(why)
}

fn unexpected(addr: &str, answer: &CoordResponse) -> FleetError {
    FleetError::Refused { addr: addr.to_string(), reason: format!("unexpected answer {answer:?}") }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Where the coordinators are, looked up again at each renewal (discovery may move them).
pub type Coordinators = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<String>> + Send>>
        + Send
        + Sync,
>;

/// Renews this host's certificate from one of `coordinators` whenever two thirds of its
/// remaining life has passed, writing the new key and certificate into `dir` and swapping them
/// into `tls`.
pub fn renew_in_background(
    tls: Arc<FarmTls>,
    dir: PathBuf,
    coordinators: Coordinators,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let Some(own) = tls.own() else { return };
            let life = own.not_after.saturating_sub(unix_now());
            // Two thirds of the remaining life (at least 1 s; every 10 s after a failure).
            let wait = if failures > 0 { 10 } else { (life * 2 / 3).max(1) };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(wait)) => {}
            }
            let mut outcome = Err(FleetError::Input("no coordinator found".into()));
            for target in coordinators().await {
                outcome = renew(&tls, &dir, &target).await;
                if outcome.is_ok() {
                    break;
                }
            }
            match outcome {
                Ok(serial) => {
                    failures = 0;
                    info!(%serial, "certificate renewed");
                }
                Err(err) => {
                    failures += 1;
                    warn!(%err, "certificate renewal failed; trying again in 10 s");
                }
            }
        }
    });
}

/// Holds `dir/.renew.lock`: daemons sharing one fleet directory renew one at a time.
fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, FleetError> {
    let path = dir.join(".renew.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| FleetError::File { path: path.display().to_string(), err })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, errno)| {
        FleetError::File { path: path.display().to_string(), err: io::Error::from(errno) }
    })
}

/// One renewal; returns the serial now in use. Under the directory's lock: when another daemon
/// sharing the directory has just renewed, its certificate is taken instead of asking again (so
/// the key and certificate on disk always belong together).
pub async fn renew(
    tls: &Arc<FarmTls>,
    dir: &Path,
    coordinator: &str,
) -> Result<String, FleetError> {
    let own = tls.own().ok_or_else(|| TlsError::Pki("no certificate to renew".into()))?;
    let locked = dir.to_path_buf();
    let lock = tokio::task::spawn_blocking(move || lock_dir(&locked))
        .await
        .map_err(|e| FleetError::Input(format!("renewal lock: {e}")))??;
    let fleet = FleetDir(dir.to_path_buf());
    // Another daemon sharing the directory renewed first: take its certificate (read once).
    let on_disk = read_pem_file(&fleet.path("node.pem"), false).ok();
    let newer = on_disk.as_deref().and_then(|pem| pki::read_pem(pem).ok());
    if let (Some(cert), Some(disk)) = (&on_disk, newer)
        && disk.serial != own.serial
        && disk.not_after > own.not_after
    {
        let key = read_pem_file(&fleet.path("node.key"), true)?;
        let info = tls.reload(cert, &key)?;
        drop(lock);
        return Ok(info.serial);
    }
    let (csr_pem, key_pem) = pki::new_request(&own.name)?;
    let transport = Transport::Tls(tls.clone());
    let answer = ask(&transport, coordinator, &CoordRequest::Renew { csr_pem }).await?;
    let CoordResponse::Join(JoinState::Approved { cert_pem }) = answer else {
        return Err(unexpected(coordinator, &answer));
    };
    let info = tls.reload(&cert_pem, &key_pem)?;
    fleet.write("node.key", &key_pem, 0o600)?;
    fleet.write("node.pem", &cert_pem, 0o644)?;
    drop(lock);
    Ok(info.serial)
}
