//! The connection handshake: preamble (magic + version), then token challenge-response.
//!
//! ```text
//! client → server  preamble  "DSCM" version:u16be 0 0
//! server → client  preamble  "DSCM" version:u16be status:u8 0     (status 0 = go on)
//! server → client  frame     ServerHello { challenge, token_required }
//! client → server  frame     ClientAuth { nonce, proof }
//! server → client  frame     AuthOutcome
//! ```
//!
//! Proofs are blake3 keyed hashes (HMAC-like) under a key derived from the farm token, so the
//! token never crosses the wire. Both sides prove when a token is configured. With no token on
//! the server, only Unix-socket and loopback peers are accepted.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::frame::{read_exact_or_closed, read_frame, write_frame};
use crate::{Digest, ProtocolError, version};

/// The four magic bytes that open every connection.
pub const MAGIC: [u8; 4] = *b"DSCM";
/// Length of a preamble.
pub const PREAMBLE_LEN: usize = 8;

/// Preamble status: carry on with the handshake.
pub const STATUS_OK: u8 = 0;
/// Preamble status: the server speaks another version (its own is in the preamble).
pub const STATUS_VERSION_MISMATCH: u8 = 1;
/// Preamble status: the server speaks the farm's mutual TLS and this client came in plain
/// (sent in clear by a TLS listener that saw a plain preamble, so the client can say why).
pub const STATUS_TLS_REQUIRED: u8 = 3;

/// What a client says when the server answered [`STATUS_TLS_REQUIRED`].
pub const TLS_REQUIRED: &str = "the peer speaks the farm's mutual TLS and this host came in \
                                plain TCP: give it its fleet directory (--fleet-dir or \
                                DISCOMY_FLEET_DIR)";

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// A Unix-socket peer: trusted through the socket's file permissions.
    Unix,
    /// A TCP peer on a loopback address.
    Loopback,
    /// Any other TCP peer.
    Remote,
    /// A TCP peer behind the farm's TLS: who it is comes from its certificate (or, for a
    /// joiner without one, it may only ask to join), not from the token.
    Tls,
}

/// The farm token, if any.
#[derive(Clone, Default)]
pub struct AuthConfig {
    key: Option<[u8; 32]>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig").field("token", &self.key.map(|_| "<set>")).finish()
    }
}

impl AuthConfig {
    /// No token: only local peers are accepted.
    pub fn none() -> AuthConfig {
        AuthConfig { key: None }
    }

    /// A shared farm token. Empty strings mean "no token".
    pub fn with_token(token: &str) -> AuthConfig {
        let token = token.trim();
        if token.is_empty() {
            return AuthConfig::none();
        }
        AuthConfig { key: Some(blake3::derive_key("discomy farm token v1", token.as_bytes())) }
    }

    /// From an optional token.
    pub fn from_option(token: Option<&str>) -> AuthConfig {
        token.map(AuthConfig::with_token).unwrap_or_default()
    }

    /// Whether a token is configured.
    pub fn has_token(&self) -> bool {
        self.key.is_some()
    }

    fn proof(&self, role: &[u8], a: &[u8; 32], b: &[u8; 32]) -> Option<Digest> {
        let key = self.key.as_ref()?;
        let mut hasher = blake3::Hasher::new_keyed(key);
        hasher.update(role);
        hasher.update(a);
        hasher.update(b);
        Some(hasher.finalize().into())
    }

    /// The client's proof over the server's challenge and the client's nonce.
    pub fn client_proof(&self, challenge: &[u8; 32], nonce: &[u8; 32]) -> Option<Digest> {
        self.proof(b"discomy-client", challenge, nonce)
    }

    /// The server's proof over the client's nonce and the server's challenge.
    pub fn server_proof(&self, nonce: &[u8; 32], challenge: &[u8; 32]) -> Option<Digest> {
        self.proof(b"discomy-server", nonce, challenge)
    }

    /// Server side: decides whether a peer of `kind` that sent `proof` may go on.
    pub fn admit(
        &self,
        kind: PeerKind,
        challenge: &[u8; 32],
        auth: &ClientAuth,
    ) -> Result<(), Refused> {
        match (self.client_proof(challenge, &auth.nonce), auth.proof) {
            // Constant-time comparison through blake3::Hash's PartialEq.
            (Some(expected), Some(got)) => {
                if blake3::Hash::from_bytes(expected.0) == blake3::Hash::from_bytes(got.0) {
                    Ok(())
                } else {
                    Err(Refused::WrongToken)
                }
            }
            (Some(_), None) if matches!(kind, PeerKind::Unix | PeerKind::Tls) => Ok(()),
            (Some(_), None) => Err(Refused::TokenRequired),
            (None, _) if kind == PeerKind::Remote => Err(Refused::LoopbackOnly),
            (None, _) => Ok(()),
        }
    }
}

/// First frame from the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerHello {
    /// Random bytes the client must prove over.
    pub challenge: [u8; 32],
    /// Whether the server has a token (and will prove it).
    pub token_required: bool,
}

/// The client's answer to [`ServerHello`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientAuth {
    /// Random bytes the server proves over.
    pub nonce: [u8; 32],
    /// Keyed hash proving the token, when the client has one.
    pub proof: Option<Digest>,
}

/// The server's verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AuthOutcome {
    /// Go on; `proof` proves the server holds the token too (when it has one).
    Accepted {
        /// The server's proof.
        proof: Option<Digest>,
    },
    /// Refused; the reason is for the operator.
    Refused {
        /// Why.
        reason: String,
    },
}

/// Our preamble with the given status byte.
pub fn preamble(status: u8) -> [u8; PREAMBLE_LEN] {
    let v = version::CURRENT.to_be_bytes();
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1], status, 0]
}

/// Checks a received preamble: magic, then version. Returns the status byte.
pub fn check_preamble(bytes: &[u8; PREAMBLE_LEN]) -> Result<u8, ProtocolError> {
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let theirs = u16::from_be_bytes([bytes[4], bytes[5]]);
    if theirs != version::CURRENT {
        return Err(ProtocolError::VersionMismatch { ours: version::CURRENT, theirs });
    }
    Ok(bytes[6])
}

/// 32 bytes from the kernel's random source, or its error: for secrets that must not be guessed
/// (session ids, keys), which have no fallback.
pub fn random_bytes() -> std::io::Result<[u8; 32]> {
    let mut out = [0u8; 32];
    getrandom::fill(&mut out).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(out)
}

/// `bytes` (at most 32) random bytes from the kernel's source, in hex: for secrets, tickets and
/// ids that must not be guessed.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let random = random_bytes()?;
    Ok(crate::digest::hex(&random[..bytes.min(random.len())]))
}

/// Fresh random bytes for a challenge or nonce.
pub fn random_nonce() -> [u8; 32] {
    random_bytes().unwrap_or_else(|_| {
        // No entropy source: fall back to a hash of time and pid, still unpredictable enough to
        // prevent replay across connections.
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        *blake3::hash(seed.as_bytes()).as_bytes()
    })
}

/// Client side of the handshake over a blocking stream.
pub fn client_handshake<S: Read + Write>(
    stream: &mut S,
    auth: &AuthConfig,
) -> Result<(), ProtocolError> {
    stream.write_all(&preamble(STATUS_OK))?;
    stream.flush()?;
    let mut reply = [0u8; PREAMBLE_LEN];
    read_exact_or_closed(stream, &mut reply)?;
    if check_preamble(&reply)? == crate::handshake::STATUS_TLS_REQUIRED {
        return Err(ProtocolError::Auth(crate::handshake::TLS_REQUIRED.into()));
    }
    let hello: ServerHello = read_frame(stream)?;
    let nonce = random_nonce();
    let proof = auth.client_proof(&hello.challenge, &nonce);
    write_frame(stream, &ClientAuth { nonce, proof })?;
    let outcome: AuthOutcome = read_frame(stream)?;
    verify_outcome(auth, outcome, &nonce, &hello.challenge)
}

/// Client side: checks the server's verdict and, when we hold a token, the server's proof.
pub fn verify_outcome(
    auth: &AuthConfig,
    outcome: AuthOutcome,
    nonce: &[u8; 32],
    challenge: &[u8; 32],
) -> Result<(), ProtocolError> {
    match outcome {
        AuthOutcome::Refused { reason } => Err(ProtocolError::Auth(reason)),
        AuthOutcome::Accepted { proof } => match (auth.server_proof(nonce, challenge), proof) {
            (None, _) => Ok(()),
            (Some(expected), Some(got))
                if blake3::Hash::from_bytes(expected.0) == blake3::Hash::from_bytes(got.0) =>
            {
                Ok(())
            }
            (Some(_), _) => Err(ProtocolError::Auth("server did not prove the farm token".into())),
        },
    }
}

/// Why a server refuses a peer at the handshake (the text goes back to the peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The peer proved another token.
    #[error("wrong farm token")]
    WrongToken,
    /// The peer proved no token, and this node requires one.
    #[error("this node requires the farm token (set DISCOMY_TOKEN)")]
    TokenRequired,
    /// No token is configured here, and the peer is not on loopback.
    #[error("no farm token is configured on this node, so only loopback peers are accepted")]
    LoopbackOnly,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(token: Option<&str>, nonce: [u8; 32], challenge: &[u8; 32]) -> ClientAuth {
        ClientAuth { nonce, proof: AuthConfig::from_option(token).client_proof(challenge, &nonce) }
    }

    #[test]
    fn admission_rules() {
        let ch = random_nonce();
        let n = random_nonce();
        let open = AuthConfig::none();
        let farm = AuthConfig::with_token("s3cret");
        assert!(open.admit(PeerKind::Loopback, &ch, &auth(None, n, &ch)).is_ok());
        assert!(open.admit(PeerKind::Unix, &ch, &auth(None, n, &ch)).is_ok());
        assert!(open.admit(PeerKind::Remote, &ch, &auth(None, n, &ch)).is_err());
        assert!(farm.admit(PeerKind::Remote, &ch, &auth(Some("s3cret"), n, &ch)).is_ok());
        assert!(farm.admit(PeerKind::Remote, &ch, &auth(Some("wrong"), n, &ch)).is_err());
        assert!(farm.admit(PeerKind::Loopback, &ch, &auth(None, n, &ch)).is_err());
        assert!(farm.admit(PeerKind::Unix, &ch, &auth(None, n, &ch)).is_ok());
        // A proof over another challenge (a replay) is refused.
        let other = random_nonce();
        assert!(farm.admit(PeerKind::Remote, &ch, &auth(Some("s3cret"), n, &other)).is_err());
    }

    #[test]
    fn preamble_checks() {
        assert_eq!(check_preamble(&preamble(STATUS_OK)).unwrap(), STATUS_OK);
        let mut bad = preamble(STATUS_OK);
        bad[0] = b'X';
        assert!(matches!(check_preamble(&bad), Err(ProtocolError::BadMagic(_))));
        let mut newer = preamble(STATUS_OK);
        newer[5] = newer[5].wrapping_add(1);
        assert!(matches!(check_preamble(&newer), Err(ProtocolError::VersionMismatch { .. })));
    }

    #[test]
    fn server_must_prove_when_client_has_token() {
        let client = AuthConfig::with_token("t");
        let (n, ch) = (random_nonce(), random_nonce());
        let outcome = AuthOutcome::Accepted { proof: None };
        assert!(verify_outcome(&client, outcome, &n, &ch).is_err());
        let good = AuthOutcome::Accepted { proof: client.server_proof(&n, &ch) };
        assert!(verify_outcome(&client, good, &n, &ch).is_ok());
    }
}
