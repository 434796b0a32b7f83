//! Batches in build order, the way a Koji chain build or mockchain runs them. Within a batch, a
//! job depends on every other job of the batch that provides a name it requires (its
//! `BuildRequires`). It is not claimed before they succeeded; its builder installs their binary
//! RPMs (and those of their own dependencies) in the chroot first; it fails with them when one of
//! them fails or is cancelled; and a batch whose dependencies form a cycle is refused, naming the
//! cycle's members.

use std::collections::{BTreeMap, BTreeSet};

use discomy_protocol::ops::{BlobRef, Failure, FailureKind, JobEvent, JobState};
use rusqlite::{Connection, params};

use super::OpsError;
use super::job_queue::fail;

/// SQL: the job `j` has a dependency in its batch that has not succeeded (used by the claim).
pub const UNBUILT_DEPENDENCY: &str = "SELECT 1 FROM jobs k, json_each(k.provides) p, \
     json_each(j.requires) r WHERE j.batch IS NOT NULL AND k.batch = j.batch AND k.id != j.id \
     AND k.state != 'succeeded' AND p.value = r.value";

/// The jobs of `job`'s batch that provide something it requires.
pub fn waits_for(conn: &Connection, job: u64) -> Result<Vec<u64>, OpsError> {
    let mut stmt = conn.prepare(
        "SELECT DISTINCT k.id FROM jobs j, jobs k, json_each(k.provides) p, json_each(j.requires) r \
         WHERE j.id = ?1 AND j.batch IS NOT NULL AND k.batch = j.batch AND k.id != j.id \
         AND p.value = r.value ORDER BY k.id",
    )?;
    let rows = stmt.query_map([job as i64], |r| r.get::<_, i64>(0).map(|id| id as u64))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The binary RPMs of every job `job` waits for, transitively: what its chroot installs first.
pub fn dependency_rpms(conn: &Connection, job: u64) -> Result<Vec<BlobRef>, OpsError> {
    let mut seen = BTreeSet::new();
    let mut todo = waits_for(conn, job)?;
    while let Some(dep) = todo.pop() {
        if dep != job && seen.insert(dep) {
            todo.extend(waits_for(conn, dep)?);
        }
    }
    let mut rpms = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT a.name, a.blake3, a.size FROM artifacts a JOIN jobs k ON k.id = a.job \
         AND a.attempt = k.attempt WHERE k.id = ?1 AND k.state = 'succeeded' ORDER BY a.name",
    )?;
    for dep in seen {
        let rows = stmt.query_map([dep as i64], |r| {
            Ok(BlobRef { name: r.get(0)?, blake3: r.get(1)?, size: r.get::<_, i64>(2)? as u64 })
        })?;
        for blob in rows {
            let blob = blob?;
            if is_installable(&blob.name) {
                rpms.push(blob);
            }
        }
    }
    Ok(rpms)
}

/// A binary RPM worth installing for a build (not the source RPM, not debug information).
pub(super) fn is_installable(name: &str) -> bool {
    name.ends_with(".rpm")
        && !name.ends_with(".src.rpm")
        && !name.contains("-debuginfo-")
        && !name.contains("-debugsource-")
}

/// Refuses (rolls back, by returning an error) when `batch`'s unfinished jobs depend on each
/// other in a cycle; the error names the cycle.
pub fn refuse_cycles(conn: &Connection, batch: &str) -> Result<(), OpsError> {
    let mut names = BTreeMap::new();
    let mut graph: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    {
        let mut stmt = conn.prepare(
            "SELECT id, name FROM jobs WHERE batch = ?1 AND state NOT IN ('succeeded', 'failed', \
             'cancelled')",
        )?;
        let rows = stmt.query_map([batch], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))?;
        for row in rows {
            let (id, name): (u64, String) = row?;
            names.insert(id, name);
        }
    }
    for &id in names.keys() {
        let deps = waits_for(conn, id)?.into_iter().filter(|d| names.contains_key(d)).collect();
        graph.insert(id, deps);
    }
    refuse_cycle_in(batch, &names, &graph)
}

/// Refuses `graph` (a batch's unfinished jobs → the jobs they wait for) when it has a cycle,
/// naming its members by `names`.
pub(super) fn refuse_cycle_in(
    batch: &str,
    names: &BTreeMap<u64, String>,
    graph: &BTreeMap<u64, Vec<u64>>,
) -> Result<(), OpsError> {
    if let Some(cycle) = find_cycle(graph) {
        let shown: Vec<String> = cycle
            .iter()
            .map(|id| format!("{} (job {id})", names.get(id).map_or("?", String::as_str)))
            .collect();
        return Err(OpsError::BadRequest(format!(
            "batch {batch:?} has a dependency cycle: {}",
            shown.join(" → ")
        )));
    }
    Ok(())
}

/// Why a waiting job fails with its dependency `name` (job `dep`), now `state`.
pub(super) fn orphan_failure(name: &str, dep: u64, state: &str) -> Failure {
    Failure {
        kind: FailureKind::Dependency,
        message: format!("{name} (job {dep}), which provides what it requires, {state}"),
    }
}

/// A cycle of `graph` (node → the nodes it depends on), first node repeated at the end.
pub fn find_cycle(graph: &BTreeMap<u64, Vec<u64>>) -> Option<Vec<u64>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    let mut marks: BTreeMap<u64, Mark> = BTreeMap::new();
    for &start in graph.keys() {
        if marks.contains_key(&start) {
            continue;
        }
        // Iterative depth-first search; `path` is the chain from `start`.
        let mut path: Vec<(u64, usize)> = vec![(start, 0)];
        marks.insert(start, Mark::Open);
        while let Some((node, next)) = path.last().copied() {
            let deps = graph.get(&node).map(Vec::as_slice).unwrap_or_default();
            if let Some(&dep) = deps.get(next) {
                if let Some(top) = path.last_mut() {
                    top.1 += 1;
                }
                match marks.get(&dep) {
                    Some(Mark::Open) => {
                        let at = path.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        let mut cycle: Vec<u64> = path[at..].iter().map(|&(n, _)| n).collect();
                        cycle.push(dep);
                        return Some(cycle);
                    }
                    Some(Mark::Done) => {}
                    None => {
                        marks.insert(dep, Mark::Open);
                        path.push((dep, 0));
                    }
                }
            } else {
                marks.insert(node, Mark::Done);
                path.pop();
            }
        }
    }
    None
}

/// Waiting jobs one of whose dependencies failed or was cancelled fail too, saying which.
pub fn fail_orphans(conn: &Connection, now: f64) -> Result<Vec<JobEvent>, OpsError> {
    let orphans: Vec<(u64, u32, u64, String, String)> = {
        let mut stmt = conn.prepare(
            "SELECT DISTINCT j.id, j.attempt, k.id, k.name, k.state \
             FROM jobs j, jobs k, json_each(k.provides) p, json_each(j.requires) r \
             WHERE j.state = 'waiting' AND j.batch IS NOT NULL AND k.batch = j.batch \
             AND k.id != j.id AND k.state IN ('failed', 'cancelled') AND p.value = r.value \
             GROUP BY j.id",
        )?;
        let rows = stmt.query_map(params![], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get(3)?,
                r.get(4)?,
            ))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let mut events = Vec::new();
    for (job, attempt, dep, name, state) in orphans {
        let failure = orphan_failure(&name, dep, &state);
        events.push(fail(conn, job, JobState::Waiting, attempt, None, &failure, now)?);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_found_with_their_members() {
        let g = |edges: &[(u64, &[u64])]| -> BTreeMap<u64, Vec<u64>> {
            edges.iter().map(|(n, d)| (*n, d.to_vec())).collect()
        };
        assert_eq!(find_cycle(&g(&[(1, &[]), (2, &[1]), (3, &[1, 2])])), None);
        assert_eq!(find_cycle(&g(&[(1, &[3]), (2, &[1]), (3, &[2])])), Some(vec![1, 3, 2, 1]));
        assert_eq!(find_cycle(&g(&[(1, &[]), (2, &[2])])), Some(vec![2, 2]));
        assert!(is_installable("lua-devel-5.4.4-1.x86_64.rpm"));
        assert!(!is_installable("lua-5.4.4-1.src.rpm"));
        assert!(!is_installable("lua-debuginfo-5.4.4-1.x86_64.rpm"));
    }
}
