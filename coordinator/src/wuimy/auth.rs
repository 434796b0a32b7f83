//! Who may see and act in the web UI. It mirrors the API's rule: a client proves the farm token
//! or a tenant token (once, on the login form) and gets a session; without a farm token
//! configured, loopback clients get a session without logging in. A tenant token's session
//! holds its scopes (operators' actions need `admin`) and ends when the token is revoked or
//! expires (checked at each page and action, `Ui::token_live`).
//!
//! Sessions live in memory (lost on restart), bounded in number ([`MAX_SESSIONS`], the oldest
//! go first) and age ([`MAX_AGE`]); the cookie is `HttpOnly; SameSite=Strict` (and `Secure`
//! under a working fleet, whose UI is HTTPS only) and holds 32
//! random bytes from the kernel (no fallback: without them no session is made). Every form carries a CSRF token derived from the session id
//! with a key known only to this process (keyed blake3), checked in constant time on POST,
//! together with the `Origin` header when the browser sends one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};

/// Most sessions held; a new one beyond evicts the oldest.
pub const MAX_SESSIONS: usize = 1024;
/// A session's lifetime from its login.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// The session cookie's name.
pub const COOKIE: &str = "wuimy_session";

/// Why a session cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The kernel's random source failed.
    #[error("no randomness for a session id: {0}")]
    Random(#[from] std::io::Error),
}

/// A session: who it is and since when.
#[derive(Debug, Clone)]
pub struct Session {
    /// The cookie's value.
    pub id: String,
    /// The session's CSRF token (what forms carry).
    pub csrf: String,
    /// Logged in (else: a loopback client of a coordinator without a farm token).
    pub login: bool,
    /// Logged in with this tenant token (else: the farm token, or loopback).
    pub tenant: Option<u64>,
    /// May act as an operator (cancel, retry, priority): the farm token, loopback, or a tenant
    /// token with the `admin` scope.
    pub admin: bool,
}

/// What a session was made from: [`Session`]'s `login`, `tenant` and `admin`.
#[derive(Debug, Clone, Copy)]
struct Grant {
    login: bool,
    tenant: Option<u64>,
    admin: bool,
}

/// The sessions and the CSRF key.
pub struct Sessions {
    map: Mutex<HashMap<String, (Instant, Grant)>>,
    csrf_key: [u8; 32],
    token: Option<blake3::Hash>,
    /// Cookies carry `Secure` (the UI is served over HTTPS: a working fleet).
    secure: bool,
}

/// What a request may do.
pub enum Access {
    /// A valid session (existing, or just made: then its cookie must be set).
    Session {
        /// The session.
        session: Session,
        /// `Set-Cookie` for a session made for this request.
        set_cookie: Option<HeaderValue>,
    },
    /// Log in first (with the farm token, or a tenant token).
    Login,
    /// Refused: no farm token configured, and a loopback client asks for a stream or an action
    /// without a session.
    Refused,
}

fn random_hex() -> Result<String, AuthError> {
    Ok(discomy_protocol::handshake::random_hex(32)?)
}

impl Sessions {
    /// Sessions for a UI whose farm token hashes to `token` (`None`: loopback only).
    pub fn new(token: Option<blake3::Hash>) -> Result<Sessions, AuthError> {
        let csrf_key = discomy_protocol::handshake::random_bytes()?;
        Ok(Sessions { map: Mutex::new(HashMap::new()), csrf_key, token, secure: false })
    }

    /// Cookies marked `Secure` (sent over HTTPS only), for a UI served over HTTPS.
    pub fn with_secure(mut self, secure: bool) -> Sessions {
        self.secure = secure;
        self
    }

    /// Whether logging in is possible (a farm token is configured).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn csrf_of(&self, id: &str) -> String {
        blake3::keyed_hash(&self.csrf_key, id.as_bytes()).to_hex().to_string()
    }

    fn lookup(&self, id: &str) -> Option<Session> {
        let mut map = self.map.lock().ok()?;
        let (since, grant) = *map.get(id)?;
        if since.elapsed() > MAX_AGE {
            map.remove(id);
            return None;
        }
        Some(self.session(id.to_owned(), grant))
    }

    fn session(&self, id: String, g: Grant) -> Session {
        Session { csrf: self.csrf_of(&id), id, login: g.login, tenant: g.tenant, admin: g.admin }
    }

    /// A new session with every scope (`login`: with the farm token; else loopback) and its
    /// cookie.
    pub fn create(&self, login: bool) -> Result<(Session, HeaderValue), AuthError> {
        self.make(Grant { login, tenant: None, admin: true })
    }

    /// A new session of tenant token `id` (`admin`: it has the admin scope) and its cookie.
    pub fn create_tenant(&self, id: u64, admin: bool) -> Result<(Session, HeaderValue), AuthError> {
        self.make(Grant { login: true, tenant: Some(id), admin })
    }

    fn make(&self, grant: Grant) -> Result<(Session, HeaderValue), AuthError> {
        let id = random_hex()?;
        if let Ok(mut map) = self.map.lock() {
            map.retain(|_, (since, _)| since.elapsed() <= MAX_AGE);
            while map.len() >= MAX_SESSIONS {
                let oldest =
                    map.iter().min_by_key(|(_, (since, _))| *since).map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => map.remove(&k),
                    None => break,
                };
            }
            map.insert(id.clone(), (Instant::now(), grant));
        }
        let cookie = format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            MAX_AGE.as_secs(),
            if self.secure { "; Secure" } else { "" }
        );
        let cookie = HeaderValue::from_str(&cookie).unwrap_or(HeaderValue::from_static(""));
        Ok((self.session(id, grant), cookie))
    }

    /// Ends a session; returns the cookie that clears it.
    pub fn remove(&self, id: &str) -> HeaderValue {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
        HeaderValue::from_static("wuimy_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
    }

    /// Whether `given` is the farm token (compared through blake3, in constant time).
    pub fn token_ok(&self, given: &str) -> bool {
        self.token.as_ref().is_some_and(|expected| blake3::hash(given.as_bytes()) == *expected)
    }

    /// What the request from `peer` with `headers` may do. `make`: whether a loopback client
    /// without a session gets one now (pages); live streams and actions never make one.
    pub fn access(&self, peer: SocketAddr, headers: &HeaderMap, make: bool) -> Access {
        if let Some(session) = cookie(headers).and_then(|id| self.lookup(&id)) {
            // A loopback session is valid only from loopback.
            if session.login || peer.ip().is_loopback() {
                return Access::Session { session, set_cookie: None };
            }
        }
        match (&self.token, peer.ip().is_loopback()) {
            // Elsewhere, a tenant token may log in even without a farm token.
            (Some(_), _) | (None, false) => Access::Login,
            (None, true) if make => match self.create(false) {
                Ok((session, cookie)) => Access::Session { session, set_cookie: Some(cookie) },
                Err(err) => {
                    tracing::error!(%err, "web UI: no session");
                    Access::Refused
                }
            },
            (None, true) => Access::Refused,
        }
    }

    /// Whether a POST's `csrf` field belongs to `session` and its `Origin` (if sent) is the
    /// host it was sent to.
    pub fn csrf_ok(&self, session: &Session, given: Option<&str>, headers: &HeaderMap) -> bool {
        let Some(given) = given.and_then(|g| blake3::Hash::from_hex(g).ok()) else {
            return false;
        };
        let Ok(expected) = blake3::Hash::from_hex(&session.csrf) else { return false };
        // blake3::Hash compares in constant time.
        given == expected && same_origin(headers)
    }
}

/// The session id of the request's cookie.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
        line.split(';').find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| value.to_owned())
        })
    })
}

/// No `Origin`, or one whose host is the request's `Host`.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
    !host.is_empty() && origin_host == host
}

/// `application/x-www-form-urlencoded` fields (`+` and `%XX` decoded; bad escapes kept); an
/// undecodable body has none.
pub fn form_fields(body: &[u8]) -> HashMap<String, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .map(|pairs| pairs.into_iter().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode() {
        let f = form_fields(b"token=a%2Bb+c%3D&csrf=ff&x=%zz&y=%4");
        assert_eq!(f["token"], "a+b c=");
        assert_eq!(f["csrf"], "ff");
        assert_eq!(f["x"], "%zz");
        assert_eq!(f["y"], "%4");
    }

    #[test]
    fn csrf_is_tied_to_the_session() {
        let sessions = Sessions::new(None).unwrap();
        let (a, _) = sessions.create(false).unwrap();
        let (b, _) = sessions.create(false).unwrap();
        let headers = HeaderMap::new();
        assert!(sessions.csrf_ok(&a, Some(&a.csrf), &headers));
        assert!(!sessions.csrf_ok(&a, Some(&b.csrf), &headers));
        assert!(!sessions.csrf_ok(&a, None, &headers));
        let mut cross = HeaderMap::new();
        cross.insert(header::HOST, HeaderValue::from_static("127.0.0.1:1"));
        cross.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(!sessions.csrf_ok(&a, Some(&a.csrf), &cross));
    }
}
