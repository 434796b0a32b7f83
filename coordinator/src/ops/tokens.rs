//! Tenant tokens (`discomy_protocol::ops::TokenInfo`): who may call the build queue's API and
//! the web UI, and with what scopes, beside the farm token (every scope).
//!
//! - [`TokenStore`]: the `tokens` table, on SQLite here and on PostgreSQL in `pg::tokens`. A
//!   row holds the blake3 hash of the token's secret, never the secret.
//! - [`Caller`], [`Need`], [`Refusal`]: who a request is, what its route needs
//!   ([`need`], deny by default: a route not listed takes the farm token), why it is refused.
//! - [`check`]: a presented token against its row (hashes compared in constant time), and its
//!   `last_used_at`, written at most once a minute per token.

use axum::http::{Method, StatusCode};
use discomy_protocol::ops::{MAX_LIVE_TOKENS, TokenInfo, TokenScope};
use rusqlite::{OptionalExtension, params};

use super::db::Db;
use super::{Ops, OpsError, now};
use crate::fleet::Fleet;
use crate::fleet::tenant::{NoTenant, Tenant, TenantAsk};
use std::sync::Arc;

/// The table (SQLite). Append-only, like the rest of the schema.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    secret_blake3 TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    last_used_at REAL
);
";

/// `last_used_at` is written when it is older than this (seconds).
pub const TOUCH_EVERY_SECS: f64 = 60.0;

/// A token's row: its record and the hash of its secret.
#[derive(Debug, Clone)]
pub struct StoredToken {
    /// What is listed.
    pub info: TokenInfo,
    /// blake3 of the secret.
    pub hash: blake3::Hash,
}

/// The `tokens` table. Each method is one transaction.
pub trait TokenStore {
    /// Adds a token unless [`MAX_LIVE_TOKENS`] are alive at `now`; its record.
    fn token_create(
        &mut self,
        name: &str,
        scopes: &[TokenScope],
        hash: &blake3::Hash,
        now: f64,
        expires_at: Option<f64>,
    ) -> Result<TokenInfo, OpsError>;
    /// One token's row.
    fn token_get(&mut self, id: u64) -> Result<Option<StoredToken>, OpsError>;
    /// Every token, oldest first.
    fn token_list(&mut self) -> Result<Vec<TokenInfo>, OpsError>;
    /// Revokes a token (again: no change); its record.
    fn token_revoke(&mut self, id: u64, now: f64) -> Result<TokenInfo, OpsError>;
    /// Records a use at `now`, unless one was recorded in the last [`TOUCH_EVERY_SECS`].
    fn token_touch(&mut self, id: u64, now: f64) -> Result<(), OpsError>;
}

/// The scopes as stored (`submit,admin`); an unknown one is a database this version cannot read.
pub(super) fn scopes_from_db(id: u64, text: &str) -> Result<Vec<TokenScope>, OpsError> {
    text.split(',')
        .map(|s| {
            TokenScope::parse(s)
                .ok_or_else(|| OpsError::Corrupt(format!("token {id}: unknown scope {s:?}")))
        })
        .collect()
}

/// The hash as stored (hex).
pub(super) fn hash_from_db(id: u64, hex: &str) -> Result<blake3::Hash, OpsError> {
    blake3::Hash::from_hex(hex).map_err(|_| OpsError::Corrupt(format!("token {id}: bad hash")))
}

/// The refusal of a token the store does not hold.
pub(super) fn no_token(id: u64) -> OpsError {
    OpsError::Missing(format!("token {id}"))
}

/// The refusal of one token too many.
pub(super) fn too_many() -> OpsError {
    OpsError::Conflict(format!("{MAX_LIVE_TOKENS} tokens are alive already: revoke some first"))
}

const COLUMNS: &str =
    "id, name, scopes, secret_blake3, created_at, expires_at, revoked_at, last_used_at";

fn sqlite_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, String, String, TokenInfo)> {
    let info = TokenInfo {
        id: 0,
        name: String::new(),
        scopes: Vec::new(),
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
        revoked_at: r.get(6)?,
        last_used_at: r.get(7)?,
    };
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, info))
}

fn stored(row: (i64, String, String, String, TokenInfo)) -> Result<StoredToken, OpsError> {
    let (id, name, scopes, hash, mut info) = row;
    let id = id as u64;
    info.id = id;
    info.name = name;
    info.scopes = scopes_from_db(id, &scopes)?;
    Ok(StoredToken { info, hash: hash_from_db(id, &hash)? })
}

impl TokenStore for Db {
    fn token_create(
        &mut self,
        name: &str,
        scopes: &[TokenScope],
        hash: &blake3::Hash,
        now: f64,
        expires_at: Option<f64>,
    ) -> Result<TokenInfo, OpsError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let live: i64 = tx.query_row(
            "SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > ?1)",
            [now],
            |r| r.get(0),
        )?;
        if live as u64 >= MAX_LIVE_TOKENS {
            return Err(too_many());
        }
        tx.execute(
            "INSERT INTO tokens (name, scopes, secret_blake3, created_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![name, TokenScope::join(scopes), hash.to_hex().as_str(), now, expires_at],
        )?;
        let id = tx.last_insert_rowid() as u64;
        tx.commit()?;
        let info = TokenInfo {
            id,
            name: name.to_owned(),
            scopes: scopes.to_vec(),
            created_at: now,
            expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        Ok(info)
    }

    fn token_get(&mut self, id: u64) -> Result<Option<StoredToken>, OpsError> {
        let sql = format!("SELECT {COLUMNS} FROM tokens WHERE id = ?1");
        let row = self.conn.query_row(&sql, [id as i64], sqlite_row).optional()?;
        row.map(stored).transpose()
    }

    fn token_list(&mut self) -> Result<Vec<TokenInfo>, OpsError> {
        let mut stmt = self.conn.prepare(&format!("SELECT {COLUMNS} FROM tokens ORDER BY id"))?;
        let rows = stmt.query_map([], sqlite_row)?;
        rows.map(|row| Ok(stored(row?)?.info)).collect()
    }

    fn token_revoke(&mut self, id: u64, now: f64) -> Result<TokenInfo, OpsError> {
        self.conn.execute(
            "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
            params![now, id as i64],
        )?;
        Ok(self.token_get(id)?.ok_or_else(|| no_token(id))?.info)
    }

    fn token_touch(&mut self, id: u64, now: f64) -> Result<(), OpsError> {
        self.conn.execute(
            "UPDATE tokens SET last_used_at = ?1 WHERE id = ?2 \
             AND (last_used_at IS NULL OR last_used_at <= ?3)",
            params![now, id as i64, now - TOUCH_EVERY_SECS],
        )?;
        Ok(())
    }
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// The farm token, or a loopback client of a coordinator without one: every scope.
    Farm,
    /// A tenant token: only its scopes.
    Tenant {
        /// The token's id.
        id: u64,
        /// Its name.
        name: String,
        /// Its scopes.
        scopes: Vec<TokenScope>,
    },
}

impl Caller {
    /// Whether it holds `scope`.
    pub fn has(&self, scope: TokenScope) -> bool {
        match self {
            Caller::Farm => true,
            Caller::Tenant { scopes, .. } => scopes.contains(&scope),
        }
    }

    /// Whether it may make a request that needs `need`.
    pub fn allows(&self, need: Need) -> Result<(), Refusal> {
        match (self, need) {
            (Caller::Farm, _) | (_, Need::Read) => Ok(()),
            (Caller::Tenant { .. }, Need::Farm) => Err(Refusal::FarmOnly),
            (caller, Need::Scope(scope)) if caller.has(scope) => Ok(()),
            (_, Need::Scope(scope)) => Err(Refusal::Scope(scope)),
        }
    }

    /// Who acted, for a job's history.
    pub fn who(&self, via: &str) -> String {
        match self {
            Caller::Farm => via.to_owned(),
            Caller::Tenant { id, name, .. } => format!("{via} (token {id}, {name})"),
        }
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any valid token (reading).
    Read,
    /// A token with this scope.
    Scope(TokenScope),
    /// The farm token (builders' endpoints, and any route not listed in [`need`]).
    Farm,
}

/// What `method path` of the API needs. Deny by default: a route not named here takes the farm
/// token.
pub fn need(method: &Method, path: &str) -> Need {
    let rest = path.strip_prefix(discomy_protocol::ops::API_PREFIX).unwrap_or(path);
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let post = method == Method::POST;
    match parts.as_slice() {
        ["tokens", ..] => Need::Scope(TokenScope::Admin),
        _ if method == Method::GET || method == Method::HEAD => Need::Read,
        ["jobs"] | ["batches"] if post => Need::Scope(TokenScope::Submit),
        ["blobs", _] if method == Method::PUT => Need::Scope(TokenScope::Submit),
        ["jobs", _, "cancel" | "retry" | "priority"] if post => Need::Scope(TokenScope::Admin),
        _ => Need::Farm,
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or not the farm token and not a tenant token's form.
    Missing,
    /// A tenant token's form, but no live token with that id and secret.
    UnknownOrRevoked,
    /// The token expired.
    Expired,
    /// Valid, but without the scope the request needs.
    Scope(TokenScope),
    /// A builder's endpoint: the farm token only.
    FarmOnly,
}

impl Refusal {
    /// The HTTP status (401: who are you; 403: not allowed).
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Missing | Refusal::UnknownOrRevoked | Refusal::Expired => {
                StatusCode::UNAUTHORIZED
            }
            Refusal::Scope(_) | Refusal::FarmOnly => StatusCode::FORBIDDEN,
        }
    }

    /// What the client is told.
    pub fn message(self) -> String {
        match self {
            Refusal::Missing => "the farm token (or a tenant token) is missing or wrong".into(),
            Refusal::UnknownOrRevoked => "the token is unknown or revoked".into(),
            Refusal::Expired => "the token has expired".into(),
            Refusal::Scope(s) => format!("the token lacks the {} scope", s.as_str()),
            Refusal::FarmOnly => "builders' endpoints take the farm token only".into(),
        }
    }
}

/// Whether a token may act at `now`: revoked ones are told apart from unknown ones by nobody,
/// expired ones are told so.
fn live(info: &TokenInfo, now: f64) -> Result<(), Refusal> {
    if info.revoked_at.is_some() {
        Err(Refusal::UnknownOrRevoked)
    } else if !info.is_live(now) {
        Err(Refusal::Expired)
    } else {
        Ok(())
    }
}

/// A presented tenant token (`id`, `secret`) against the store at `now`: the caller, or why not.
/// A use is recorded (at most once a minute); failing to record it refuses nothing.
pub fn check(
    store: &mut dyn TokenStore,
    id: u64,
    secret: &str,
    now: f64,
) -> Result<Result<Caller, Refusal>, OpsError> {
    let Some(row) = store.token_get(id)? else { return Ok(Err(Refusal::UnknownOrRevoked)) };
    // blake3::Hash compares in constant time.
    if blake3::hash(secret.as_bytes()) != row.hash {
        return Ok(Err(Refusal::UnknownOrRevoked));
    }
    if let Err(refusal) = live(&row.info, now) {
        return Ok(Err(refusal));
    }
    if row.info.last_used_at.is_none_or(|at| at <= now - TOUCH_EVERY_SECS)
        && let Err(err) = store.token_touch(id, now)
    {
        tracing::warn!(%err, token = id, "recording a token's use failed");
    }
    let TokenInfo { name, scopes, .. } = row.info;
    Ok(Ok(Caller::Tenant { id, name, scopes }))
}

impl Ops {
    /// Who presents `bearer` (an `Authorization: Bearer` value): the farm token, a live tenant
    /// token, a client on loopback of a coordinator without a farm token (`loopback`), or why
    /// none of them. A tenant token is checked as one wherever it comes from.
    pub(crate) async fn caller(
        self: &std::sync::Arc<Self>,
        bearer: Option<&str>,
        loopback: bool,
    ) -> Result<Result<Caller, Refusal>, OpsError> {
        if let (Some(given), Some(expected)) = (bearer, &self.token) {
            // blake3::Hash compares in constant time.
            if blake3::hash(given.as_bytes()) == *expected {
                return Ok(Ok(Caller::Farm));
            }
        }
        if let Some((id, secret)) = bearer.and_then(discomy_protocol::ops::parse_token) {
            let secret = secret.to_owned();
            return self.db(move |db, _| check(db.tokens(), id, &secret, now())).await;
        }
        Ok(if self.token.is_none() && loopback { Ok(Caller::Farm) } else { Err(Refusal::Missing) })
    }
}

impl Ops {
    /// Makes this build queue the keeper of `fleet`'s tenant tokens: a token of scope
    /// `compile` enrols agents ([`crate::fleet::tenant`]), and revoking a token revokes the
    /// agents it enrolled. Holds the fleet; the fleet holds this queue weakly.
    pub fn attach_fleet(self: &Arc<Self>, fleet: &Arc<Fleet>) {
        if self.fleet.set(Arc::clone(fleet)).is_err() {
            tracing::warn!("the build queue was given a fleet twice; the first stays");
            return;
        }
        let ops = Arc::downgrade(self);
        fleet.set_tenants(Arc::new(move |ask| {
            let ops = ops.clone();
            Box::pin(async move {
                let ops = ops.upgrade().ok_or_else(|| NoTenant::Unavailable("stopping".into()))?;
                ops.tenant(ask).await
            })
        }));
    }

    /// A tenant token as the fleet asks about it.
    async fn tenant(self: &Arc<Self>, ask: TenantAsk) -> Result<Tenant, NoTenant> {
        let unavailable = |e: OpsError| NoTenant::Unavailable(e.to_string());
        let refused = |r: Refusal| NoTenant::Refused(r.message());
        let info = match ask {
            TenantAsk::Token(text) => {
                let Some((id, secret)) = discomy_protocol::ops::parse_token(&text) else {
                    return Err(NoTenant::Refused("not a tenant token's form".into()));
                };
                let secret = secret.to_owned();
                let caller = self.db(move |db, _| check(db.tokens(), id, &secret, now())).await;
                match caller.map_err(unavailable)?.map_err(refused)? {
                    Caller::Tenant { id, name, scopes } => (id, name, scopes),
                    // `check` answers for tenant tokens only.
                    Caller::Farm => return Err(refused(Refusal::UnknownOrRevoked)),
                }
            }
            TenantAsk::Live(id) => {
                let row = self.db(move |db, _| db.tokens().token_get(id)).await;
                let row = row.map_err(unavailable)?.ok_or(refused(Refusal::UnknownOrRevoked))?;
                live(&row.info, now()).map_err(refused)?;
                (row.info.id, row.info.name, row.info.scopes)
            }
        };
        let (id, name, scopes) = info;
        Ok(Tenant { id, name, compile: scopes.contains(&TokenScope::Compile) })
    }

    /// After token `id` was revoked: the agents it enrolled are revoked too; how many.
    pub(crate) fn token_revoked(&self, id: u64) -> usize {
        let Some(fleet) = self.fleet.get() else { return 0 };
        let why = format!("its tenant token {id} was revoked");
        fleet.revoke_enrolled_by(id, &why).unwrap_or_else(|err| {
            tracing::error!(token = id, %err, "revoking the agents a token enrolled failed");
            0
        })
    }
}

/// A new secret: 32 hex digits from the kernel's random source.
pub fn new_secret() -> std::io::Result<String> {
    discomy_protocol::handshake::random_hex(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_what_the_docs_say() {
        let (get, post, put, delete) = (Method::GET, Method::POST, Method::PUT, Method::DELETE);
        let admin = Need::Scope(TokenScope::Admin);
        let submit = Need::Scope(TokenScope::Submit);
        for (m, p, n) in [
            (&get, "/api/v1/jobs", Need::Read),
            (&get, "/api/v1/jobs/3/log", Need::Read),
            (&get, "/api/v1/tokens", admin),
            (&post, "/api/v1/tokens", admin),
            (&delete, "/api/v1/tokens/4", admin),
            (&post, "/api/v1/jobs", submit),
            (&post, "/api/v1/batches", submit),
            (&put, "/api/v1/blobs/ab", submit),
            (&post, "/api/v1/jobs/3/cancel", admin),
            (&post, "/api/v1/jobs/3/priority", admin),
            (&post, "/api/v1/jobs/3/log", Need::Farm),
            (&post, "/api/v1/jobs/3/finish", Need::Farm),
            (&put, "/api/v1/jobs/3/artifacts", Need::Farm),
            (&post, "/api/v1/builders/report", Need::Farm),
            (&delete, "/api/v1/jobs/3", Need::Farm),
        ] {
            assert_eq!(need(m, p), n, "{m} {p}");
        }
        let ci = Caller::Tenant { id: 1, name: "ci".into(), scopes: vec![TokenScope::Submit] };
        assert_eq!(ci.allows(submit), Ok(()));
        assert_eq!(ci.allows(admin), Err(Refusal::Scope(TokenScope::Admin)));
        assert_eq!(ci.allows(Need::Farm), Err(Refusal::FarmOnly));
        assert_eq!(Caller::Farm.allows(Need::Farm), Ok(()));
        assert_eq!(new_secret().map(|s| s.len()).ok(), Some(32));
    }
}
