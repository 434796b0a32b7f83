//! The farm's mutual TLS 1.3 (issue 17): who may open which link is decided by certificates the
//! farm CA signed, not by a shared token.
//!
//! - [`pki`]: the CA, certificate requests, issuing, reading roles back.
//! - [`stream`]: [`FarmStream`] (plain TCP or TLS, the same frames on top) and [`Transport`],
//!   which every daemon dials and accepts through.
//! - here: [`FarmTls`], one host's TLS identity (its certificate, reloadable when renewed; the
//!   CA it trusts; the serials it refuses) and the rustls configurations built from it.
//!
//! TLS 1.3 only, ring as the provider. The MAC of every record is what makes a rewritten byte
//! fail: the frame digests inside are not keyed.

pub mod pki;
pub mod stream;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};

pub use pki::{Ca, CertInfo, Issued};
pub use stream::{FarmStream, Transport};

/// What can go wrong with the farm's TLS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate, key or request could not be made, read or signed.
    #[error("certificates: {0}")]
    Pki(String),
    /// rustls refused a configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A file could not be read.
    #[error("{path}: {err}")]
    File {
        /// The file.
        path: String,
        /// Why.
        err: std::io::Error,
    },
    /// A private key file others can read.
    #[error("{0}: a private key readable by group or others (chmod 600 it)")]
    LooseKey(String),
}

/// Largest certificate or key file read, bytes.
pub const MAX_PEM_FILE: u64 = 64 * 1024;

/// Certificates in a PEM text.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pki(format!("PEM certificates: {e}")))
}

fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| TlsError::Pki(format!("PEM private key: {e}")))
}

/// Reads a PEM file (bounded, no symlinks); a key must not be readable by group or others.
pub fn read_pem_file(path: &Path, is_key: bool) -> Result<String, TlsError> {
    let file = |err| TlsError::File { path: path.display().to_string(), err };
    if is_key {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::symlink_metadata(path).map_err(file)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(TlsError::LooseKey(path.display().to_string()));
        }
    }
    let bytes = crate::plumbing::untrusted::read_untrusted(path, MAX_PEM_FILE).map_err(file)?;
    String::from_utf8(bytes).map_err(|_| TlsError::Pki(format!("{}: not PEM text", path.display())))
}

// ring's provider is deprecated upstream only for lacking post-quantum key exchange; aws-lc-rs
// would add a C/CMake build to every package build.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Serials the farm refuses, shared by the verifiers of one process.
#[derive(Debug, Clone, Default)]
pub struct Revoked(Arc<RwLock<HashSet<String>>>);

impl Revoked {
    /// Whether `serial` (lower-case hex) is refused.
    pub fn contains(&self, serial: &str) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).contains(serial)
    }
    /// Whether nothing is refused (the common case, checked before reading a peer's serial).
    pub fn is_empty(&self) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
    /// Refuses `serial` from now on.
    pub fn insert(&self, serial: String) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(serial);
    }
}

/// This host's certificate and key, swapped in place when renewed.
#[derive(Debug)]
struct Identity {
    current: RwLock<(Arc<CertifiedKey>, CertInfo)>,
}

impl Identity {
    fn new(cert_pem: &str, key_pem: &str) -> Result<Identity, TlsError> {
        Ok(Identity { current: RwLock::new(certified(cert_pem, key_pem)?) })
    }
    fn get(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }
}

/// Checks that `key_pem` is the key of the certificate in `cert_pem`, and what it says (for
/// clients that hand both to another TLS stack, such as the API's HTTP client).
pub fn check_key_pair(cert_pem: &str, key_pem: &str) -> Result<CertInfo, TlsError> {
    certified(cert_pem, key_pem).map(|(_, info)| info)
}

fn certified(cert_pem: &str, key_pem: &str) -> Result<(Arc<CertifiedKey>, CertInfo), TlsError> {
    let chain = certs_from_pem(cert_pem)?;
    let first = chain.first().ok_or_else(|| TlsError::Pki("no certificate in PEM".into()))?;
    let info = pki::read_der(first)?;
    let key = key_from_pem(key_pem)?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Pki(format!("private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsError::Pki(format!("key and certificate: {e}")))?;
    Ok((Arc::new(certified), info))
}

impl ResolvesServerCert for Identity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for Identity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// The handshake-signature methods of both verifier traits, handed to webpki's verifier.
macro_rules! signatures_from_inner {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

/// Checks a client's chain with webpki, then refuses revoked serials.
#[derive(Debug)]
struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Revoked,
    mandatory: bool,
}

fn refuse_revoked(revoked: &Revoked, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    let info = pki::read_der(cert)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if revoked.contains(&info.serial) {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
    }
    Ok(())
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        refuse_revoked(&self.revoked, end_entity)?;
        Ok(verified)
    }
    signatures_from_inner!();
}

/// Checks a server's chain and name with webpki, then refuses revoked serials.
#[derive(Debug)]
struct ServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    revoked: Revoked,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        refuse_revoked(&self.revoked, end_entity)?;
        Ok(verified)
    }
    signatures_from_inner!();
}

/// Whether a server asks its clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must show a farm certificate (workers).
    Required,
    /// A client without one may connect, and may then only ask to join (the coordinator).
    Optional,
}

/// One host's TLS: the CA it trusts, its own certificate (absent for a host still joining) and
/// the serials it refuses.
#[derive(Debug)]
pub struct FarmTls {
    identity: Option<Arc<Identity>>,
    revoked: Revoked,
    client: Arc<ClientConfig>,
    server: Option<Arc<ServerConfig>>,
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pki("no CA certificate".into()));
    }
    Ok(Arc::new(roots))
}

fn client_config(
    roots: Arc<RootCertStore>,
    revoked: &Revoked,
    identity: Option<Arc<Identity>>,
) -> Result<ClientConfig, TlsError> {
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Pki(format!("server verifier: {e}")))?;
    let verifier = Arc::new(ServerVerifier { inner, revoked: revoked.clone() });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(id) => builder.with_client_cert_resolver(id),
        None => builder.with_no_client_auth(),
    };
    // No resumption: a resumed session skips certificate checks, so a revoked or expired peer
    // could come back on an old ticket. Links are long-lived and pooled; a full handshake each
    // time costs little.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

impl FarmTls {
    /// A host with a certificate: it dials with it, and serves with it asking clients for
    /// theirs as `auth` says.
    pub fn new(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        auth: ClientAuth,
    ) -> Result<FarmTls, TlsError> {
        FarmTls::build(ca_pem, cert_pem, key_pem, auth, Revoked::default(), Vec::new())
    }

    /// The coordinator's HTTPS (build queue API, web UI, builders' uploads): it serves
    /// `cert_pem` (which names the host names and addresses clients dial) offering HTTP/1.1 by
    /// ALPN; a client may show a farm certificate, which must then chain to the CA and not be in
    /// `revoked` (the fleet's own set, shared with the farm listener).
    pub fn https(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        revoked: Revoked,
    ) -> Result<FarmTls, TlsError> {
        let alpn = vec![b"http/1.1".to_vec()];
        FarmTls::build(ca_pem, cert_pem, key_pem, ClientAuth::Optional, revoked, alpn)
    }

    fn build(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
        auth: ClientAuth,
        revoked: Revoked,
        alpn: Vec<Vec<u8>>,
    ) -> Result<FarmTls, TlsError> {
        let roots = roots(ca_pem)?;
        let identity = Arc::new(Identity::new(cert_pem, key_pem)?);
        let client = client_config(roots.clone(), &revoked, Some(identity.clone()))?;
        let builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
        let builder = match auth {
            ClientAuth::Required => builder,
            ClientAuth::Optional => builder.allow_unauthenticated(),
        };
        let inner = builder.build().map_err(|e| TlsError::Pki(format!("client verifier: {e}")))?;
        let verifier = Arc::new(ClientVerifier {
            inner,
            revoked: revoked.clone(),
            mandatory: auth == ClientAuth::Required,
        });
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(identity.clone());
        // Every connection verifies the client's certificate anew (see `client_config`).
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        server.alpn_protocols = alpn;
        Ok(FarmTls {
            identity: Some(identity),
            revoked,
            client: Arc::new(client),
            server: Some(Arc::new(server)),
        })
    }

    /// A host still joining: it trusts the CA and dials without a certificate; it serves
    /// nothing.
    pub fn joiner(ca_pem: &str) -> Result<FarmTls, TlsError> {
        let revoked = Revoked::default();
        let client = client_config(roots(ca_pem)?, &revoked, None)?;
        Ok(FarmTls { identity: None, revoked, client: Arc::new(client), server: None })
    }

    /// [`FarmTls::new`] from files: the CA certificate, this host's certificate and its key
    /// (which must be mode 0600 or tighter).
    pub fn from_files(
        ca: &Path,
        cert: &Path,
        key: &Path,
        auth: ClientAuth,
    ) -> Result<FarmTls, TlsError> {
        let ca = read_pem_file(ca, false)?;
        let cert = read_pem_file(cert, false)?;
        let key = read_pem_file(key, true)?;
        FarmTls::new(&ca, &cert, &key, auth)
    }

    /// Swaps in a renewed certificate and key; connections made from now on use them.
    pub fn reload(&self, cert_pem: &str, key_pem: &str) -> Result<CertInfo, TlsError> {
        let identity = self.identity.as_ref().ok_or_else(|| TlsError::Pki("no identity".into()))?;
        let (key, info) = certified(cert_pem, key_pem)?;
        *identity.current.write().unwrap_or_else(|e| e.into_inner()) = (key, info.clone());
        Ok(info)
    }

    /// What this host's own certificate says (none while joining).
    pub fn own(&self) -> Option<CertInfo> {
        let identity = self.identity.as_ref()?;
        Some(identity.current.read().unwrap_or_else(|e| e.into_inner()).1.clone())
    }

    /// The serials this host refuses.
    pub fn revoked(&self) -> &Revoked {
        &self.revoked
    }
}
