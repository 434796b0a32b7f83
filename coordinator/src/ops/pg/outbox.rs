//! The PostgreSQL side of the outbox (commit statuses, publication watches) and of webhook
//! delivery ids: the same operations as `ops::outbox` on SQLite, each one transaction; claims
//! use `FOR UPDATE SKIP LOCKED`, so two coordinators never take the same item.

use super::PgStore;
use crate::ops::OpsError;
use crate::ops::outbox::OutboxItem;

impl PgStore {
    pub(super) fn add_to_outbox(
        &mut self,
        kind: &str,
        payload: &str,
        now: f64,
    ) -> Result<u64, OpsError> {
        let (id, _) = self.write(|tx| {
            let row = tx.tx.query_one(
                "INSERT INTO outbox (kind, payload, next_try, created_at) VALUES ($1, $2, $3, $3) \
                 RETURNING id",
                &[&kind, &payload, &now],
            )?;
            Ok(row.get::<_, i64>(0) as u64)
        })?;
        Ok(id)
    }

    pub(super) fn claim_outbox(
        &mut self,
        now: f64,
        lease: f64,
        limit: u32,
    ) -> Result<Vec<OutboxItem>, OpsError> {
        let (items, _) = self.write(|tx| {
            // SKIP LOCKED: what another coordinator is claiming right now is left to it.
            let rows = tx.tx.query(
                "UPDATE outbox SET next_try = $2, attempts = attempts + 1 WHERE id IN \
                 (SELECT id FROM outbox WHERE done_at IS NULL AND next_try <= $1 ORDER BY id \
                 LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING id, kind, payload, attempts",
                &[&now, &(now + lease), &i64::from(limit)],
            )?;
            let mut items: Vec<OutboxItem> = rows
                .iter()
                .map(|r| OutboxItem {
                    id: r.get::<_, i64>(0) as u64,
                    kind: r.get(1),
                    payload: r.get(2),
                    attempts: u32::try_from(r.get::<_, i64>(3)).unwrap_or(u32::MAX),
                })
                .collect();
            items.sort_by_key(|i| i.id);
            Ok(items)
        })?;
        Ok(items)
    }

    pub(super) fn outbox_item_done(&mut self, id: u64, now: f64) -> Result<(), OpsError> {
        self.write(|tx| {
            tx.tx.execute("UPDATE outbox SET done_at = $1 WHERE id = $2", &[&now, &(id as i64)])?;
            Ok(())
        })?;
        Ok(())
    }

    pub(super) fn outbox_item_later(
        &mut self,
        id: u64,
        next_try: f64,
        payload: &str,
        error: &str,
    ) -> Result<(), OpsError> {
        self.write(|tx| {
            tx.tx.execute(
                "UPDATE outbox SET next_try = $1, payload = $2, last_error = $3 WHERE id = $4",
                &[&next_try, &payload, &error, &(id as i64)],
            )?;
            Ok(())
        })?;
        Ok(())
    }

    pub(super) fn delivery_seen_first(
        &mut self,
        forge: &str,
        id: &str,
        now: f64,
    ) -> Result<bool, OpsError> {
        let (n, _) = self.write(|tx| {
            Ok(tx.tx.execute(
                "INSERT INTO deliveries (forge, id, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&forge, &id, &now],
            )?)
        })?;
        Ok(n == 1)
    }
}
