//! The batch rules on PostgreSQL ([`crate::ops::batch`]'s, whose pure helpers they share):
//! cycles between a batch's jobs refused, jobs whose dependency failed failed too, and the RPMs
//! a job's dependencies built, for its chroot.

use std::collections::{BTreeMap, BTreeSet};

use discomy_protocol::ops::{BlobRef, JobState};
use postgres::GenericClient;

use super::queue::fail;
use super::{Tx, artifacts, small, waits_for};
use crate::ops::OpsError;
use crate::ops::batch::{is_installable, orphan_failure, refuse_cycle_in};

/// Refuses the batch when its unfinished jobs depend on each other in a cycle.
pub(super) fn refuse_cycles(tx: &mut Tx<'_>, batch: &str) -> Result<(), OpsError> {
    const OPEN: &str = "NOT IN ('succeeded', 'failed', 'cancelled')";
    let mut names = BTreeMap::new();
    let mut graph: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let sql = format!("SELECT id, name FROM jobs WHERE batch = $1 AND state {OPEN}");
    for r in tx.tx.query(&sql, &[&batch])? {
        let id = r.try_get::<_, i64>(0)? as u64;
        names.insert(id, r.try_get::<_, String>(1)?);
        graph.insert(id, Vec::new());
    }
    let sql = format!(
        "SELECT DISTINCT j.id, k.id FROM jobs j JOIN jobs k ON k.batch = j.batch \
         AND k.id <> j.id AND k.provides && j.requires \
         WHERE j.batch = $1 AND j.state {OPEN} AND k.state {OPEN} ORDER BY j.id, k.id"
    );
    for r in tx.tx.query(&sql, &[&batch])? {
        let (j, k) = (r.try_get::<_, i64>(0)? as u64, r.try_get::<_, i64>(1)? as u64);
        graph.entry(j).or_default().push(k);
    }
    refuse_cycle_in(batch, &names, &graph)
}

/// Waiting jobs one of whose dependencies failed or was cancelled fail too, saying which.
pub(super) fn fail_orphans(tx: &mut Tx<'_>, now: f64) -> Result<(), OpsError> {
    let orphans = tx.tx.query(
        "SELECT j.id, j.attempt FROM jobs j WHERE j.state = 'waiting' AND j.batch IS NOT NULL \
         AND EXISTS (SELECT 1 FROM jobs k WHERE k.batch = j.batch AND k.id <> j.id \
         AND k.state IN ('failed', 'cancelled') AND k.provides && j.requires) \
         ORDER BY j.id FOR UPDATE OF j SKIP LOCKED",
        &[],
    )?;
    for row in orphans {
        let (job, attempt) = (row.try_get::<_, i64>(0)?, small(row.try_get(1)?)?);
        let dep = tx.tx.query_one(
            "SELECT k.id, k.name, k.state FROM jobs j JOIN jobs k ON k.batch = j.batch \
             AND k.id <> j.id AND k.state IN ('failed', 'cancelled') \
             AND k.provides && j.requires WHERE j.id = $1 ORDER BY k.id LIMIT 1",
            &[&job],
        )?;
        let dep_id = dep.try_get::<_, i64>(0)? as u64;
        let failure = orphan_failure(dep.try_get(1)?, dep_id, dep.try_get(2)?);
        fail(tx, job as u64, JobState::Waiting, attempt, None, &failure, now)?;
    }
    Ok(())
}

/// The binary RPMs of every job `job` waits for, transitively (see batch).
pub(super) fn dependency_rpms(
    c: &mut impl GenericClient,
    job: u64,
) -> Result<Vec<BlobRef>, OpsError> {
    let mut seen = BTreeSet::new();
    let mut todo = waits_for(c, job)?;
    while let Some(dep) = todo.pop() {
        if dep != job && seen.insert(dep) {
            todo.extend(waits_for(c, dep)?);
        }
    }
    let mut rpms = Vec::new();
    for dep in seen {
        let row = c.query_one("SELECT attempt, state FROM jobs WHERE id = $1", &[&(dep as i64)])?;
        if row.try_get::<_, &str>(1)? != JobState::Succeeded.as_str() {
            continue;
        }
        let blobs = artifacts(c, dep, small(row.try_get(0)?)?)?;
        rpms.extend(blobs.into_iter().filter(|b| is_installable(&b.name)));
    }
    Ok(rpms)
}
