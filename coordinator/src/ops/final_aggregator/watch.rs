//! The final_aggregator's decision for one batch: it waits (an outbox item, so a restart loses
//! nothing) until every job of the batch has ended; when all succeeded, their RPMs are published
//! to the target's repository (`CHROOT-ARCH` under `[ops.publish] repos_root`); when one failed
//! or was cancelled, nothing of the batch is published.

use serde::{Deserialize, Serialize};

use super::{Artefact, publish};
use crate::ops::store::QueueStore;
use crate::ops::{Ops, OpsError, now};

/// The outbox kind.
pub const PUBLISH: &str = "publish";

/// A batch waiting to be published.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publish {
    /// The batch.
    pub batch: String,
    /// The repository it goes to.
    pub repository: String,
    /// Its jobs.
    pub jobs: Vec<u64>,
}

/// One look at the batch. Blocking.
pub fn step(ops: &Ops, id: u64, payload: &str) {
    let with_db =
        |f: &mut dyn FnMut(&mut dyn QueueStore) -> Result<(), OpsError>| ops.blocking_db(f);
    let (Ok(watch), Some(config)) =
        (serde_json::from_str::<Publish>(payload), ops.config.publish.as_ref())
    else {
        let _ = with_db(&mut |db| db.outbox_done(id, now()));
        return;
    };
    let mut jobs = Vec::new();
    let read = with_db(&mut |db| {
        jobs = watch.jobs.iter().map(|&j| db.job(j)).collect::<Result<_, _>>()?;
        Ok(())
    });
    if let Err(err) = read {
        let _ = with_db(&mut |db| db.outbox_later(id, now() + 5.0, payload, &err.to_string()));
        return;
    }
    if jobs.iter().any(|j| !j.state.is_final()) {
        let _ = with_db(&mut |db| db.outbox_later(id, now() + 2.0, payload, ""));
        return;
    }
    if let Some(bad) = jobs.iter().find(|j| j.state != discomy_protocol::ops::JobState::Succeeded) {
        tracing::info!(
            batch = watch.batch,
            job = bad.id,
            "batch not published: a job did not succeed"
        );
        let _ = with_db(&mut |db| db.outbox_done(id, now()));
        return;
    }
    let artefacts: Vec<Artefact> = jobs
        .iter()
        .flat_map(|j| {
            j.artifacts.iter().map(|b| Artefact {
                name: b.name.clone(),
                blob_path: ops.blobs.path(&b.blake3),
                blake3: b.blake3.clone(),
                size: b.size,
                job: j.id,
            })
        })
        .collect();
    match publish(config, &watch.repository, &watch.batch, &artefacts) {
        Ok(published) => {
            tracing::info!(
                batch = watch.batch,
                repository = watch.repository,
                generation = published.generation,
                added = published.added.len(),
                "batch published"
            );
            let _ = with_db(&mut |db| db.outbox_done(id, now()));
        }
        Err(err) => {
            tracing::warn!(batch = watch.batch, %err, "publishing failed; trying again in a minute");
            let _ = with_db(&mut |db| db.outbox_later(id, now() + 60.0, payload, &err.to_string()));
        }
    }
}
