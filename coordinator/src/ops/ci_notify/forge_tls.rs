//! The trust commit statuses are posted under: the system's root certificates, loaded once per
//! process with rustls-native-certs (Debian's `ca-certificates`, /etc/ssl/certs; `SSL_CERT_FILE`
//! and `SSL_CERT_DIR` when set), plus the operator's `forge_ca_file` (`[ops]`) for a forge under
//! a private CA. Each CA file gets one ureq agent, built once and kept, so its connections are
//! reused. Nothing here panics: a forge that cannot be verified is an error, and retried.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use discomy_protocol::tls::{TlsError, certs_from_pem};
use rustls_native_certs::CertificateResult;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

/// The largest `forge_ca_file` read, bytes (a whole system bundle is about 220 KiB).
const MAX_CA_FILE: u64 = 1 << 20;

/// What can be wrong with the forges' trust.
#[derive(Debug, thiserror::Error)]
pub enum ForgeTlsError {
    /// `forge_ca_file` cannot be read.
    #[error("forge_ca_file {path}: {err}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// `forge_ca_file` is not PEM certificates.
    #[error("forge_ca_file {path}: {err}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        err: TlsError,
    },
    /// `forge_ca_file` holds no certificate.
    #[error("forge_ca_file {0}: no certificate in it (PEM, `-----BEGIN CERTIFICATE-----`)")]
    Empty(PathBuf),
}

/// The certificates of a `forge_ca_file` (PEM; anything else in it is skipped).
pub fn read_ca_file(path: &Path) -> Result<Vec<Certificate<'static>>, ForgeTlsError> {
    let read = |err| ForgeTlsError::Read { path: path.into(), err };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_CA_FILE {
        let why = format!("{len} bytes, more than {MAX_CA_FILE}");
        return Err(read(std::io::Error::new(std::io::ErrorKind::InvalidData, why)));
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let certs =
        certs_from_pem(&text).map_err(|err| ForgeTlsError::Pem { path: path.into(), err })?;
    if certs.is_empty() {
        return Err(ForgeTlsError::Empty(path.into()));
    }
    Ok(certs.iter().map(|c| Certificate::from_der(c).to_owned()).collect())
}

/// The system's root certificates, loaded (and logged) on first use.
pub fn system_roots() -> &'static [Certificate<'static>] {
    static ROOTS: OnceLock<Vec<Certificate<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let CertificateResult { certs, errors, .. } = rustls_native_certs::load_native_certs();
        for err in &errors {
            tracing::warn!(%err, "forge TLS: a system root certificate could not be loaded");
        }
        if certs.is_empty() {
            tracing::warn!(
                "forge TLS: no system root certificate; commit statuses to forges over https \
                 fail until ca-certificates is installed, SSL_CERT_FILE is set or forge_ca_file \
                 names the forge's CA"
            );
        } else {
            tracing::info!(roots = certs.len(), "forge TLS: system root certificates loaded");
        }
        certs.iter().map(|c| Certificate::from_der(c).to_owned()).collect()
    })
}

/// An HTTP client for forges: an agent and how many roots it trusts.
#[derive(Clone)]
pub struct ForgeClient {
    agent: ureq::Agent,
    roots: usize,
}

impl ForgeClient {
    /// A client trusting `roots`.
    pub fn new(roots: Vec<Certificate<'static>>) -> ForgeClient {
        let count = roots.len();
        let tls = TlsConfig::builder().root_certs(RootCerts::from(roots)).build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            // A status API answers where it is asked; a redirect (elsewhere, or to plain
            // http) would carry the token along, so it is an answer, not followed.
            .max_redirects(0)
            .tls_config(tls)
            .build()
            .into();
        ForgeClient { agent, roots: count }
    }

    /// The client for `ca_file` (none: the system roots only), built once per file.
    pub fn for_ca_file(ca_file: Option<&Path>) -> Result<ForgeClient, ForgeTlsError> {
        static CLIENTS: Mutex<Vec<(Option<PathBuf>, ForgeClient)>> = Mutex::new(Vec::new());
        let key = ca_file.map(Path::to_path_buf);
        let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, client)) = clients.iter().find(|(k, _)| *k == key) {
            return Ok(client.clone());
        }
        let mut roots = system_roots().to_vec();
        if let Some(file) = ca_file {
            let extra = read_ca_file(file)?;
            tracing::info!(file = %file.display(), certs = extra.len(), "forge TLS: forge_ca_file");
            roots.extend(extra);
        }
        let client = ForgeClient::new(roots);
        clients.push((key, client.clone()));
        Ok(client)
    }

    /// POSTs `body` to `url` with `headers`; any 2xx is success.
    pub fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: &[u8],
    ) -> Result<(), String> {
        if self.roots == 0 && url.starts_with("https:") {
            return Err(format!(
                "{url}: no root certificate to verify it (install ca-certificates, set \
                 SSL_CERT_FILE, or name the forge's CA in forge_ca_file)"
            ));
        }
        let mut call = self.agent.post(url);
        for (k, v) in headers {
            call = call.header(*k, v);
        }
        match call.send(body) {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => Err(format!("{url} answered {}", resp.status())),
            Err(e) => Err(format!("{url}: {e}")),
        }
    }
}
