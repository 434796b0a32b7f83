//! The outbox: messages the coordinator must deliver to the outside world however long it
//! takes (commit statuses to a forge) and watches it must keep (a push's jobs, until they end),
//! stored in the queue's database so that neither a restart nor a forge that is down loses one.
//! Items are claimed with a lease (another coordinator sharing the database skips them
//! meanwhile), then marked delivered or put back with a later time.
//!
//! This file holds the item type, the SQLite side (`pg` has the PostgreSQL side) and the loop
//! that hands due items to their owners: `watch` to [`super::ci_notify`], `publish` to
//! [`super::final_aggregator::watch`].

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior, params};
use tokio_util::sync::CancellationToken;

use super::{Ops, OpsError, now};

/// How long a claimed item is left to the coordinator that claimed it.
const LEASE_SECS: f64 = 120.0;

/// Runs until `shutdown`: every second, the due items, each to its owner.
pub async fn run(ops: Arc<Ops>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let items = match ops.db(|db, _| db.outbox_claim(now(), LEASE_SECS, 50)).await {
            Ok(items) => items,
            Err(err) => {
                tracing::warn!(%err, "outbox: reading it failed");
                continue;
            }
        };
        for item in items {
            let ops2 = Arc::clone(&ops);
            let task = tokio::task::spawn_blocking(move || match item.kind.as_str() {
                super::ci_notify::WATCH => {
                    super::ci_notify::step(&ops2, item.id, &item.payload, item.attempts)
                }
                super::final_aggregator::watch::PUBLISH => {
                    super::final_aggregator::watch::step(&ops2, item.id, &item.payload)
                }
                other => {
                    tracing::warn!(id = item.id, kind = other, "outbox: an item of no known kind");
                    let _ = ops2.blocking_db(&mut |db| db.outbox_done(item.id, now()));
                }
            });
            if let Err(err) = task.await {
                tracing::warn!(%err, "outbox: a task failed");
            }
        }
    }
}

/// The table (SQLite).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    created_at REAL NOT NULL,
    done_at REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (done_at, next_try);
";

/// One message or watch.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    /// Its id.
    pub id: u64,
    /// What it is (`status`, `watch`).
    pub kind: String,
    /// Its content (JSON).
    pub payload: String,
    /// Claims so far, this one included.
    pub attempts: u32,
}

/// Adds an item, due at once.
pub fn add(conn: &Connection, kind: &str, payload: &str, now: f64) -> Result<u64, OpsError> {
    conn.execute(
        "INSERT INTO outbox (kind, payload, next_try, created_at) VALUES (?1, ?2, ?3, ?3)",
        params![kind, payload, now],
    )?;
    Ok(conn.last_insert_rowid() as u64)
}

/// Claims up to `limit` due items for `lease` seconds.
pub fn claim(
    conn: &mut Connection,
    now: f64,
    lease: f64,
    limit: u32,
) -> Result<Vec<OutboxItem>, OpsError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let items: Vec<OutboxItem> = {
        let mut stmt = tx.prepare(
            "SELECT id, kind, payload, attempts FROM outbox WHERE done_at IS NULL AND next_try <= ?1 \
             ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![now, limit], |r| {
            Ok(OutboxItem {
                id: r.get::<_, i64>(0)? as u64,
                kind: r.get(1)?,
                payload: r.get(2)?,
                attempts: r.get::<_, u32>(3)? + 1,
            })
        })?;
        rows.collect::<Result<_, _>>()?
    };
    for item in &items {
        tx.execute(
            "UPDATE outbox SET next_try = ?1, attempts = attempts + 1 WHERE id = ?2",
            params![now + lease, item.id as i64],
        )?;
    }
    tx.commit()?;
    Ok(items)
}

/// Marks an item delivered (kept, for the record).
pub fn done(conn: &Connection, id: u64, now: f64) -> Result<(), OpsError> {
    conn.execute("UPDATE outbox SET done_at = ?1 WHERE id = ?2", params![now, id as i64])?;
    Ok(())
}

/// Puts an item back, due at `next_try`, with its new content and why it is not done.
pub fn later(
    conn: &Connection,
    id: u64,
    next_try: f64,
    payload: &str,
    error: &str,
) -> Result<(), OpsError> {
    conn.execute(
        "UPDATE outbox SET next_try = ?1, payload = ?2, last_error = ?3 WHERE id = ?4",
        params![next_try, payload, error, id as i64],
    )?;
    Ok(())
}
