//! The PostgreSQL side of tenant tokens: the same table and operations as `ops::tokens` on
//! SQLite, each one transaction. Creation takes an advisory lock, so two coordinators cannot
//! both pass the live-token bound with the last free place.

use postgres::Row;

use super::{LOCK_CLASS, PgStore};
use crate::ops::OpsError;
use crate::ops::tokens::{
    StoredToken, TOUCH_EVERY_SECS, TokenStore, hash_from_db, no_token, scopes_from_db, too_many,
};
use discomy_protocol::ops::{MAX_LIVE_TOKENS, TokenInfo, TokenScope};

/// The table (PostgreSQL), created at connect with the rest of the schema.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tokens (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    secret_blake3 TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION,
    last_used_at DOUBLE PRECISION
);
";

/// Token creation (its count of live tokens).
const TOKENS_LOCK: i32 = 3;

const COLUMNS: &str =
    "id, name, scopes, secret_blake3, created_at, expires_at, revoked_at, last_used_at";

fn stored(r: &Row) -> Result<StoredToken, OpsError> {
    let id = r.try_get::<_, i64>(0)? as u64;
    let info = TokenInfo {
        id,
        name: r.try_get(1)?,
        scopes: scopes_from_db(id, r.try_get(2)?)?,
        created_at: r.try_get(4)?,
        expires_at: r.try_get(5)?,
        revoked_at: r.try_get(6)?,
        last_used_at: r.try_get(7)?,
    };
    Ok(StoredToken { info, hash: hash_from_db(id, r.try_get(3)?)? })
}

impl TokenStore for PgStore {
    fn token_create(
        &mut self,
        name: &str,
        scopes: &[TokenScope],
        hash: &blake3::Hash,
        now: f64,
        expires_at: Option<f64>,
    ) -> Result<TokenInfo, OpsError> {
        let (id, _) = self.write(|tx| {
            tx.tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_CLASS, &TOKENS_LOCK])?;
            let live: i64 = tx
                .tx
                .query_one(
                    "SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL \
                     AND (expires_at IS NULL OR expires_at > $1)",
                    &[&now],
                )?
                .try_get(0)?;
            if live as u64 >= MAX_LIVE_TOKENS {
                return Err(too_many());
            }
            let row = tx.tx.query_one(
                "INSERT INTO tokens (name, scopes, secret_blake3, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[&name, &TokenScope::join(scopes), &hash.to_hex().as_str(), &now, &expires_at],
            )?;
            Ok(row.try_get::<_, i64>(0)? as u64)
        })?;
        Ok(TokenInfo {
            id,
            name: name.to_owned(),
            scopes: scopes.to_vec(),
            created_at: now,
            expires_at,
            revoked_at: None,
            last_used_at: None,
        })
    }

    fn token_get(&mut self, id: u64) -> Result<Option<StoredToken>, OpsError> {
        let sql = format!("SELECT {COLUMNS} FROM tokens WHERE id = $1");
        let row = self.client()?.query_opt(&sql, &[&(id as i64)])?;
        row.as_ref().map(stored).transpose()
    }

    fn token_list(&mut self) -> Result<Vec<TokenInfo>, OpsError> {
        let rows =
            self.client()?.query(&format!("SELECT {COLUMNS} FROM tokens ORDER BY id"), &[])?;
        rows.iter().map(|r| Ok(stored(r)?.info)).collect()
    }

    fn token_revoke(&mut self, id: u64, now: f64) -> Result<TokenInfo, OpsError> {
        self.write(|tx| {
            tx.tx.execute(
                "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                &[&now, &(id as i64)],
            )?;
            Ok(())
        })?;
        Ok(self.token_get(id)?.ok_or_else(|| no_token(id))?.info)
    }

    fn token_touch(&mut self, id: u64, now: f64) -> Result<(), OpsError> {
        self.write(|tx| {
            tx.tx.execute(
                "UPDATE tokens SET last_used_at = $1 WHERE id = $2 \
                 AND (last_used_at IS NULL OR last_used_at <= $3)",
                &[&now, &(id as i64), &(now - TOUCH_EVERY_SECS)],
            )?;
            Ok(())
        })?;
        Ok(())
    }
}
