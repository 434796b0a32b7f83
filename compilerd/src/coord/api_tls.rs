//! How the API client trusts a working fleet's HTTPS: the farm CA ([`ApiTls`]), this host's
//! farm certificate when it has one, and the ureq agent built from them, rebuilt when renewal
//! replaces the certificate on disk ([`Agents`]). Only the farm CA is ever trusted: ureq's
//! default roots are not compiled in, and an `https://` URL without a CA is refused before any
//! of this runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::api::{ApiClient, ApiClientError, CALL_TIMEOUT, CONNECT_TIMEOUT, Result};

/// Where the coordinator's build queue API is, and the token and trust to reach it with: the
/// flags of every `discomy` command that calls the API.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// The coordinator's API (`http://HOST:PORT`, or `https://` for a working fleet's).
    #[arg(long, global = true, env = "DISCOMY_API", default_value = "http://127.0.0.1:3635")]
    pub api: String,
    /// A file holding the farm token (otherwise `DISCOMY_TOKEN`; never on the command line).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The farm CA that verifies an `https://` API (otherwise `--fleet-dir`'s `ca.pem`).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// A fleet directory: its `ca.pem` verifies an `https://` API, and this host's certificate
    /// in it (`node.pem`, else `admin.pem`) is shown.
    #[arg(long, global = true, env = "DISCOMY_FLEET_DIR", value_name = "DIR")]
    pub fleet_dir: Option<PathBuf>,
}

/// Why [`ApiArgs::client`] made no client.
#[derive(Debug, thiserror::Error)]
pub enum ApiArgsError {
    /// The token could not be read.
    #[error(transparent)]
    Token(#[from] discomy_protocol::plumbing::secret::SecretError),
    /// The URL or the trust is not usable.
    #[error(transparent)]
    Client(#[from] ApiClientError),
}

impl ApiArgs {
    /// The client these flags describe (the token from `--token-file` or `DISCOMY_TOKEN`).
    pub fn client(&self) -> std::result::Result<ApiClient, ApiArgsError> {
        let env = std::env::var("DISCOMY_TOKEN").ok().filter(|t| !t.is_empty());
        let (token, _) =
            discomy_protocol::plumbing::secret::token(env, self.token_file.as_deref())?;
        let (ca, dir) = (self.ca.as_deref(), self.fleet_dir.as_deref());
        Ok(ApiClient::from_args(&self.api, token, ca, dir)?)
    }
}

/// How a client trusts the API's HTTPS and who it is: the farm CA, and this host's farm
/// certificate and key when it has them.
#[derive(Debug, Clone, Default)]
pub struct ApiTls {
    ca_pem: Option<String>,
    identity: Option<(PathBuf, PathBuf)>,
}

fn tls_err(e: impl std::fmt::Display) -> ApiClientError {
    ApiClientError::Tls(e.to_string())
}

impl ApiTls {
    /// Trusts the CA certificate(s) in `ca_file`; shows no certificate.
    pub fn ca_file(ca_file: &Path) -> Result<ApiTls> {
        let pem = discomy_protocol::tls::read_pem_file(ca_file, false).map_err(tls_err)?;
        discomy_protocol::tls::certs_from_pem(&pem).map_err(tls_err)?;
        Ok(ApiTls { ca_pem: Some(pem), identity: None })
    }

    /// A fleet directory: trusts its `ca.pem`, shows `node.pem` (`node.key`), else the
    /// operator's `admin.pem` (`admin.key`), when there.
    pub fn fleet_dir(dir: &Path) -> Result<ApiTls> {
        let mut tls = ApiTls::ca_file(&dir.join("ca.pem"))?;
        tls.identity = ["node", "admin"]
            .iter()
            .map(|stem| (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key"))))
            .find(|(cert, _)| cert.exists());
        if let Some((cert, key)) = &tls.identity {
            load_identity(cert, key)?;
        }
        Ok(tls)
    }

    /// From the command line: `--ca FILE` wins over `--fleet-dir DIR`; neither, none.
    pub fn from_args(ca: Option<&Path>, fleet_dir: Option<&Path>) -> Result<ApiTls> {
        match (ca, fleet_dir) {
            (Some(ca), _) => ApiTls::ca_file(ca),
            (None, Some(dir)) => ApiTls::fleet_dir(dir),
            (None, None) => Ok(ApiTls::default()),
        }
    }

    /// Whether a CA is trusted (an `https://` URL can be used).
    pub fn has_ca(&self) -> bool {
        self.ca_pem.is_some()
    }
}

/// This host's certificate and key as ureq takes them, checked to belong together.
fn load_identity(cert: &Path, key: &Path) -> Result<ureq::tls::ClientCert> {
    let cert_pem = discomy_protocol::tls::read_pem_file(cert, false).map_err(tls_err)?;
    let key_pem = discomy_protocol::tls::read_pem_file(key, true).map_err(tls_err)?;
    discomy_protocol::tls::check_key_pair(&cert_pem, &key_pem).map_err(tls_err)?;
    let chain = ureq::tls::parse_pem(cert_pem.as_bytes())
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect::<Vec<_>>();
    let key = ureq::tls::PrivateKey::from_pem(key_pem.as_bytes()).map_err(tls_err)?;
    Ok(ureq::tls::ClientCert::new_with_certs(&chain, key))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The ureq agent, rebuilt when this host's certificate file changes (renewal).
#[derive(Debug)]
pub(super) struct Agents {
    tls: ApiTls,
    current: Mutex<(Option<SystemTime>, ureq::Agent)>,
}

impl Agents {
    pub(super) fn new(tls: ApiTls) -> Result<Agents> {
        let stamp = tls.identity.as_ref().and_then(|(cert, _)| modified(cert));
        let agent = build_agent(&tls)?;
        Ok(Agents { tls, current: Mutex::new((stamp, agent)) })
    }

    pub(super) fn get(&self) -> ureq::Agent {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cert, _)) = &self.tls.identity {
            let stamp = modified(cert);
            if stamp != current.0 {
                // A renewal wrote a new certificate; until both files are in place the old
                // agent is kept (and the next call looks again).
                match build_agent(&self.tls) {
                    Ok(agent) => *current = (stamp, agent),
                    Err(err) => tracing::debug!(%err, "API client: certificate not reloaded yet"),
                }
            }
        }
        current.1.clone()
    }
}

fn build_agent(tls: &ApiTls) -> Result<ureq::Agent> {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(CALL_TIMEOUT))
        .user_agent(concat!("discomy/", env!("CARGO_PKG_VERSION")));
    // Only the farm CA, or nothing at all: ureq's default roots are not compiled in, and an
    // https URL without a CA was refused before this.
    let roots = match &tls.ca_pem {
        Some(pem) => ureq::tls::parse_pem(pem.as_bytes())
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect::<Vec<_>>(),
        None => Vec::new(),
    };
    let client = match &tls.identity {
        Some((cert, key)) => Some(load_identity(cert, key)?),
        None => None,
    };
    let tls_config = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
        .client_cert(client)
        .build();
    config = config.tls_config(tls_config);
    Ok(config.build().into())
}
