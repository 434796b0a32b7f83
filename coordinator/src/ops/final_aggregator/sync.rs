//! `sync`: mirrors a published repository. To a directory `DEST`: the same layout as the source
//! (`DEST -> DEST.d/GEN`, switched with one rename(2), older mirror generations pruned). To an
//! rsync target (`host:path`, `rsync://…`): packages first without deleting anything, then the
//! metadata and the manifest with `--delete-after --delay-updates`, so a mirror's readers never
//! see metadata naming packages it does not have yet.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::AggregatorError;
use super::cmd::Cmd;
use super::manifest::{MANIFEST_NAME, Manifest, walk};
use super::publish::{Tree, copy_file, sync_dir};

/// Where a mirror goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncDest {
    /// A local directory path, made a symlink to its generations.
    Dir(PathBuf),
    /// An rsync destination, given to rsync as is.
    Rsync(String),
}

impl SyncDest {
    /// `rsync://…` and `[user@]host:path` (a `:` before any `/`) are rsync targets; anything
    /// else is a directory.
    pub fn parse(dest: &str) -> SyncDest {
        let colon = dest.find(':');
        let slash = dest.find('/');
        let remote = dest.starts_with("rsync://")
            || colon.is_some_and(|c| c > 0 && slash.is_none_or(|s| c < s));
        if remote { SyncDest::Rsync(dest.to_string()) } else { SyncDest::Dir(PathBuf::from(dest)) }
    }
}

/// What [`sync`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// The source generation.
    pub source: PathBuf,
    /// Its number.
    pub generation: u64,
    /// Files in it.
    pub files: usize,
    /// For a directory: the mirror's new generation directory.
    pub mirror: Option<PathBuf>,
}

/// Mirrors the published repository `repo` (its `NAME` symlink or a generation) to `dest`;
/// `keep` older mirror generations stay (directory mirrors). Blocking.
pub fn sync(repo: &Path, dest: &SyncDest, keep: usize) -> Result<SyncReport, AggregatorError> {
    let source = std::fs::canonicalize(repo).map_err(AggregatorError::io(repo))?;
    let manifest = Manifest::read(&source)?;
    let files = walk(&source)?;
    if let Some((path, _)) = files.iter().find(|(_, regular)| !regular) {
        return Err(AggregatorError::Damaged(format!(
            "{path} in {} is not a regular file",
            source.display()
        )));
    }
    let mirror = match dest {
        SyncDest::Dir(dir) => Some(to_dir(&source, dir, &files, keep)?),
        SyncDest::Rsync(target) => {
            to_rsync(&source, target)?;
            None
        }
    };
    tracing::info!(source = %source.display(), generation = manifest.generation, "synced");
    Ok(SyncReport { source, generation: manifest.generation, files: files.len(), mirror })
}

fn to_dir(
    source: &Path,
    dest: &Path,
    files: &[(String, bool)],
    keep: usize,
) -> Result<PathBuf, AggregatorError> {
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| super::repo_name_ok(n))
        .ok_or_else(|| AggregatorError::Refused(format!("mirror name {}", dest.display())))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(AggregatorError::io(&parent))?;
    let tree = Tree::new(&parent, name);
    let (_lock, generation, building) = tree.begin()?;
    let copied = (|| {
        let mut dirs = std::collections::BTreeSet::new();
        for (path, _) in files {
            let to = building.join(path);
            if let Some(dir) = to.parent() {
                std::fs::create_dir_all(dir).map_err(AggregatorError::io(dir))?;
                dirs.insert(dir.to_path_buf());
            }
            copy_file(&source.join(path), &to)?;
        }
        for dir in &dirs {
            sync_dir(dir)?;
        }
        debug_assert!(files.iter().any(|(p, _)| p == MANIFEST_NAME));
        Ok(())
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_dir_all(&building);
        return Err(e);
    }
    tree.commit(&building, generation, keep)
}

fn to_rsync(source: &Path, target: &str) -> Result<(), AggregatorError> {
    if target.starts_with('-') {
        return Err(AggregatorError::Refused(format!("rsync target {target:?}")));
    }
    let mut src = source.as_os_str().to_owned();
    src.push("/");
    let dest = if target.ends_with('/') { target.to_string() } else { format!("{target}/") };
    // Packages and the key: added, nothing deleted yet.
    Cmd::new("rsync")?
        .args(["-a", "--exclude=/repodata/", "--exclude=/discomy-manifest.json", "--"])
        .arg(&src)
        .arg(&dest)
        .run()?;
    // Then metadata and manifest; deletions only at the end.
    Cmd::new("rsync")?
        .args(["-a", "--delete-after", "--delay-updates", "--"])
        .arg(&src)
        .arg(&dest)
        .run()?;
    Ok(())
}
