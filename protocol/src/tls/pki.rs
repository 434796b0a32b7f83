//! The farm's certificates: the CA the coordinator owns, the requests nodes make, the
//! certificates it signs, and what a certificate says (name, roles, serial, expiry).
//!
//! Roles live in the certificate, signed by the farm CA, so a peer cannot claim one it was not
//! given:
//! - subject alternative name `urn:discomy:role:ROLE` per role, and `urn:discomy:node:NAME`;
//! - a DNS name `ROLE.discomy` per serving role (`coordinator`, `worker`), which is what a
//!   client verifies: an agent dialling a worker accepts only a certificate naming
//!   `worker.discomy`, a node dialling the coordinator only `coordinator.discomy`.
//!
//! What the request itself asks for is ignored: the coordinator builds every certificate from
//! its own records and takes only the request's public key (its signature is checked first).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::TlsError;
use crate::fleet::{FleetRole, valid_node_name};

const ROLE_URI: &str = "urn:discomy:role:";
const NODE_URI: &str = "urn:discomy:node:";

/// The DNS name a server of `role` carries, which clients dialling it verify.
pub fn server_name(role: FleetRole) -> String {
    format!("{}.discomy", role.as_str())
}

/// A certificate the CA signed.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub pem: String,
    /// Its serial number, lower-case hex.
    pub serial: String,
    /// When it expires (unix seconds).
    pub not_after: u64,
}

/// What a certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The node's name.
    pub name: String,
    /// Its roles.
    pub roles: Vec<FleetRole>,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// Expiry, unix seconds.
    pub not_after: u64,
}

impl CertInfo {
    /// Whether it carries `role`.
    pub fn has(&self, role: FleetRole) -> bool {
        self.roles.contains(&role)
    }
}

/// The farm CA: its certificate and its signing key.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn pki(what: &str) -> impl FnOnce(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::Pki(format!("{what}: {e}"))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn random_serial() -> Result<(SerialNumber, String), TlsError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| TlsError::Pki(format!("randomness: {e}")))?;
    bytes[0] &= 0x7f; // a positive INTEGER
    bytes[0] |= 0x01; // with no leading zero byte to strip
    Ok((SerialNumber::from_slice(&bytes), crate::digest::hex(&bytes)))
}

impl Ca {
    /// A new CA for `farm`: (the CA, its key as PEM).
    pub fn create(farm: &str) -> Result<(Ca, String), TlsError> {
        let key = KeyPair::generate().map_err(pki("CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("discomy farm CA {farm}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(3600)).into();
        params.not_after = (now + Duration::from_secs(20 * 365 * 86_400)).into();
        let (serial, _) = random_serial()?;
        params.serial_number = Some(serial);
        let cert = params.self_signed(&key).map_err(pki("CA certificate"))?;
        let key_pem = key.serialize_pem();
        let pem = cert.pem();
        Ok((Ca { cert, key, pem }, key_pem))
    }

    /// The CA from its certificate and key (PEM), as [`Ca::create`] wrote them.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(pki("CA key"))?;
        let params =
            CertificateParams::from_ca_cert_pem(cert_pem).map_err(pki("CA certificate"))?;
        // Re-signing gives an rcgen handle with the same subject and key to issue under; the
        // certificate handed out stays the original PEM.
        let cert = params.self_signed(&key).map_err(pki("CA certificate"))?;
        if cert.der().is_empty() {
            return Err(TlsError::Pki("empty CA certificate".into()));
        }
        Ok(Ca { cert, key, pem: cert_pem.to_string() })
    }

    /// The CA certificate, PEM (what every node trusts).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Signs a certificate for the key in `csr_pem`, naming `name` and `roles`, valid for
    /// `lifetime`. The request's signature is checked; nothing else of it is used.
    pub fn issue_for_request(
        &self,
        csr_pem: &str,
        name: &str,
        roles: &[FleetRole],
        lifetime: Duration,
    ) -> Result<Issued, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(pki("certificate request (bad PEM or signature)"))?;
        self.sign(&csr.public_key, name, roles, lifetime, Vec::new())
    }

    /// A new key and a certificate for it: (certificate, key PEM). For the coordinator's own
    /// identity and the operator's admin certificate, made where the CA key is.
    pub fn issue_with_key(
        &self,
        name: &str,
        roles: &[FleetRole],
        lifetime: Duration,
    ) -> Result<(Issued, String), TlsError> {
        self.issue_server_with_key(name, roles, lifetime, &[])
    }

    /// As [`Ca::issue_with_key`], with more names a client may dial the holder by: each of
    /// `names` becomes an IP address or a DNS name in the subject alternative names (for the
    /// coordinator's HTTPS, which clients reach by its host name or address).
    pub fn issue_server_with_key(
        &self,
        name: &str,
        roles: &[FleetRole],
        lifetime: Duration,
        names: &[String],
    ) -> Result<(Issued, String), TlsError> {
        let key = KeyPair::generate().map_err(pki("key"))?;
        let mut extra = Vec::with_capacity(names.len());
        for n in names {
            extra.push(match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    n.clone().try_into().map_err(pki("DNS name for the certificate"))?,
                ),
            });
        }
        let issued = self.sign(&key, name, roles, lifetime, extra)?;
        Ok((issued, key.serialize_pem()))
    }

    fn sign(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        name: &str,
        roles: &[FleetRole],
        lifetime: Duration,
        extra: Vec<SanType>,
    ) -> Result<Issued, TlsError> {
        if !valid_node_name(name) {
            return Err(TlsError::Pki(format!("invalid node name {name:?}")));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let uri = |s: String| {
            s.try_into().map(SanType::URI).map_err(|e: rcgen::Error| TlsError::Pki(e.to_string()))
        };
        let mut sans = vec![uri(format!("{NODE_URI}{name}"))?];
        for role in roles {
            sans.push(uri(format!("{ROLE_URI}{}", role.as_str()))?);
            if matches!(role, FleetRole::Coordinator | FleetRole::Worker) {
                let dns = server_name(*role).try_into().map_err(pki("DNS name"))?;
                sans.push(SanType::DnsName(dns));
            }
        }
        sans.extend(extra);
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = SystemTime::now();
        // A minute of slack for clocks a little behind ours.
        params.not_before = (now - Duration::from_secs(60)).into();
        let not_after = now + lifetime;
        params.not_after = not_after.into();
        let (serial_number, serial) = random_serial()?;
        params.serial_number = Some(serial_number);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(public_key, &self.cert, &self.key).map_err(pki("signing"))?;
        Ok(Issued { pem: cert.pem(), serial, not_after: unix(not_after) })
    }
}

/// A new key and a certificate request for `name`: (request PEM, key PEM).
pub fn new_request(name: &str) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate().map_err(pki("key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(pki("certificate request"))?;
    let pem = csr.pem().map_err(pki("certificate request"))?;
    Ok((pem, key.serialize_pem()))
}

/// Checks a certificate request's form and signature without signing it.
pub fn check_request(csr_pem: &str) -> Result<(), TlsError> {
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map(|_| ())
        .map_err(pki("certificate request (bad PEM or signature)"))
}

/// Reads what a DER certificate says. Only meaningful once the chain has been verified.
pub fn read_der(der: &[u8]) -> Result<CertInfo, TlsError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| TlsError::Pki(format!("certificate: {e}")))?;
    let mut name = None;
    let mut roles = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general in &san.value.general_names {
            if let GeneralName::URI(uri) = general {
                if let Some(role) = uri.strip_prefix(ROLE_URI) {
                    if let Some(role) = FleetRole::parse(role) {
                        if !roles.contains(&role) {
                            roles.push(role);
                        }
                    }
                } else if let Some(n) = uri.strip_prefix(NODE_URI) {
                    name = Some(n.to_string());
                }
            }
        }
    }
    let serial = crate::digest::hex(cert.raw_serial());
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    let name = name.ok_or_else(|| TlsError::Pki("certificate names no discomy node".into()))?;
    Ok(CertInfo { name, roles, serial, not_after })
}

/// Reads what the first certificate of a PEM file says.
pub fn read_pem(pem: &str) -> Result<CertInfo, TlsError> {
    let der = super::certs_from_pem(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::Pki("no certificate in PEM".into()))?;
    read_der(&der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_come_from_the_ca_not_the_request() {
        let (ca, key_pem) = Ca::create("t").unwrap();
        let (csr, _key) = new_request("donor-1").unwrap();
        let issued = ca
            .issue_for_request(&csr, "donor-1", &[FleetRole::Worker], Duration::from_secs(60))
            .unwrap();
        let info = read_pem(&issued.pem).unwrap();
        assert_eq!(info.name, "donor-1");
        assert_eq!(info.roles, vec![FleetRole::Worker]);
        assert_eq!(info.serial, issued.serial);
        // The CA reloads from what create() wrote and still issues.
        let again = Ca::load(ca.pem(), &key_pem).unwrap();
        let (other, _) =
            again.issue_with_key("admin", &[FleetRole::Admin], Duration::from_secs(60)).unwrap();
        assert_eq!(read_pem(&other.pem).unwrap().roles, vec![FleetRole::Admin]);
        assert_ne!(other.serial, issued.serial);
    }

    #[test]
    fn a_tampered_request_is_refused() {
        let (ca, _) = Ca::create("t").unwrap();
        let (csr, _) = new_request("donor-1").unwrap();
        let mut bytes = csr.into_bytes();
        let mid = bytes.len() / 2;
        bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
        let csr = String::from_utf8(bytes).unwrap();
        assert!(
            ca.issue_for_request(&csr, "donor-1", &[FleetRole::Worker], Duration::from_secs(60))
                .is_err()
        );
        assert!(
            ca.issue_for_request("junk", "donor-1", &[FleetRole::Worker], Duration::from_secs(60))
                .is_err()
        );
    }
}
