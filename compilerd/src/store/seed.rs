//! Seeding a worker's toolchain store with this host's own compilers.
//!
//! At start-up the worker packages every compiler on its PATH (the names a masquerade directory
//! would hold) with the same closure code the wrapper uses, and installs those toolchains into its
//! store (hard links, no copies where the file system allows). A client running an identical
//! compiler then gets the same toolchain identity, and no upload is needed.

use std::collections::BTreeMap;
use std::ffi::OsString;

use discomy_protocol::Digest;

use discomy_wrapper::invocation::find_on_path;
use discomy_wrapper::names::compiler_names_on_path;
use discomy_wrapper::toolchain;
use tracing::{debug, info, warn};

use crate::store::tools::{InstallStep, ToolStore};

/// Installs this host's compilers into `store`; returns how many distinct toolchains it holds.
pub async fn seed_local_compilers(store: &ToolStore, path_var: OsString) -> usize {
    let mut distinct: Vec<Digest> =
        seed_local_compilers_named(store, path_var, &[]).await.into_values().collect();
    distinct.sort();
    distinct.dedup();
    distinct.len()
}

/// [`seed_local_compilers`], returning the toolchain each compiler name on PATH resolves to
/// (how bare names from distcc clients, `gcc` or `x86_64-linux-gnu-gcc-12`, map to toolchains).
/// With `only` non-empty, just those names (`--seed-compilers`): the host may have compilers
/// its operator does not offer.
pub async fn seed_local_compilers_named(
    store: &ToolStore,
    path_var: OsString,
    only: &[String],
) -> BTreeMap<String, Digest> {
    let mut names = BTreeMap::new();
    let mut seeded = Vec::new();
    let mut drivers: Vec<(std::path::PathBuf, Digest)> = Vec::new();
    let wanted = |name: &String| only.is_empty() || only.contains(name);
    for name in compiler_names_on_path(&path_var).into_iter().filter(wanted) {
        // The path a wrapper would run (not canonicalised): its symlinks are part of the
        // toolchain identity, so seeding it lets an identical client skip the upload.
        let Some(driver) = find_on_path(&name, &path_var, None) else {
            continue;
        };
        if let Some((_, digest)) = drivers.iter().find(|(d, _)| *d == driver) {
            names.insert(name, *digest);
            continue;
        }
        let pv = path_var.clone();
        let d = driver.clone();
        let collected =
            tokio::task::spawn_blocking(move || toolchain::collect_cached(&d, &[], &pv)).await;
        let tc = match collected {
            Ok(Ok(tc)) => tc,
            Ok(Err(err)) => {
                debug!(%name, %err, "compiler skipped");
                continue;
            }
            Err(err) => {
                warn!(%name, %err, "toolchain collection panicked");
                continue;
            }
        };
        let digest = tc.manifest.digest();
        drivers.push((driver, digest));
        if seeded.contains(&digest) {
            names.insert(name, digest);
            continue;
        }
        let mut ok = true;
        for (blob, source) in &tc.sources {
            if let Err(err) = store.put_file(blob, source) {
                warn!(%name, %err, "failed to seed toolchain");
                ok = false;
                break;
            }
        }
        if ok && matches!(store.install(&tc.manifest).await, Ok(InstallStep::Ready)) {
            debug!(%name, toolchain = %digest, "local compiler seeded");
            seeded.push(digest);
            names.insert(name, digest);
        }
    }
    info!(toolchains = seeded.len(), "local compilers seeded into the toolchain store");
    names
}
