//! Publishing a batch: the next generation of `REPOS_ROOT/NAME` is made in
//! `NAME.d/.building-GEN-PID` (previous packages hard-linked after their sha256 is re-checked, new
//! ones copied from the blob store without following links and re-hashed, then signed),
//! `createrepo_c` and `gpg` add the signed metadata, the manifest is written, every file fsynced,
//! the directory renamed to `NAME.d/GEN`, and a new symlink renamed over `NAME`: readers see the
//! old generation or the new one, never a mix. [`Tree`] is that layout, shared with `sync`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cmd::Cmd;
use super::manifest::{
    FORMAT, FileKind, MANIFEST_NAME, Manifest, ManifestEntry, PUBLIC_KEY_NAME, open_nofollow,
    sha256_file, walk, write_synced,
};
use super::sign::Signer;
use super::{AggregatorError, Artefact, RepoConfig, plain_name, repo_name_ok};

/// What [`publish`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The symlink readers use (`REPOS_ROOT/NAME`).
    pub link: PathBuf,
    /// The generation it now points to.
    pub generation: u64,
    /// That generation's directory.
    pub path: PathBuf,
    /// The RPMs this batch added or replaced (paths inside the generation).
    pub added: Vec<String>,
    /// How many files the manifest lists.
    pub files: usize,
}

/// A published tree: `ROOT/NAME -> NAME.d/GEN`, generations in `ROOT/NAME.d/`.
pub(super) struct Tree {
    root: PathBuf,
    name: String,
}

impl Tree {
    pub(super) fn new(root: &Path, name: &str) -> Tree {
        Tree { root: root.to_path_buf(), name: name.to_string() }
    }

    pub(super) fn link(&self) -> PathBuf {
        self.root.join(&self.name)
    }

    fn generations_dir(&self) -> PathBuf {
        self.root.join(format!("{}.d", self.name))
    }

    /// The generation `NAME` points to, if any; anything but a symlink into `NAME.d` is refused.
    pub(super) fn current(&self) -> Result<Option<(u64, PathBuf)>, AggregatorError> {
        let link = self.link();
        match std::fs::symlink_metadata(&link) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(AggregatorError::Io { path: link, source: e }),
            Ok(m) if !m.file_type().is_symlink() => {
                return Err(AggregatorError::Damaged(format!(
                    "{} is not a symlink",
                    link.display()
                )));
            }
            Ok(_) => {}
        }
        let target = std::fs::read_link(&link).map_err(AggregatorError::io(&link))?;
        let prefix = format!("{}.d", self.name);
        let generation = target
            .strip_prefix(&prefix)
            .ok()
            .and_then(|g| g.to_str())
            .and_then(|g| g.parse::<u64>().ok())
            .ok_or_else(|| {
                AggregatorError::Damaged(format!(
                    "{} points to {}",
                    link.display(),
                    target.display()
                ))
            })?;
        Ok(Some((generation, self.generations_dir().join(format!("{generation:06}")))))
    }

    /// Numbered generations present, ascending.
    fn generations(&self) -> Result<Vec<u64>, AggregatorError> {
        let dir = self.generations_dir();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(AggregatorError::io(&dir))? {
            let entry = entry.map_err(AggregatorError::io(&dir))?;
            if let Some(g) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
                out.push(g);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Takes the tree's lock (held until the returned value is dropped), removes what an
    /// interrupted publication left, and returns the next generation's number and a fresh
    /// directory to build it in.
    pub(super) fn begin(
        &self,
    ) -> Result<(nix::fcntl::Flock<std::fs::File>, u64, PathBuf), AggregatorError> {
        std::fs::create_dir_all(self.generations_dir())
            .map_err(AggregatorError::io(self.generations_dir()))?;
        let lock_path = self.root.join(format!("{}.lock", self.name));
        let file = std::fs::OpenOptions::new()
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(AggregatorError::io(&lock_path))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| AggregatorError::Io { path: lock_path.clone(), source: e.into() })?;
        let dir = self.generations_dir();
        for entry in std::fs::read_dir(&dir).map_err(AggregatorError::io(&dir))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".building-") {
                std::fs::remove_dir_all(entry.path()).map_err(AggregatorError::io(entry.path()))?;
            }
        }
        let current = self.current()?.map_or(0, |(g, _)| g);
        let next = self.generations()?.last().copied().unwrap_or(0).max(current) + 1;
        let building = dir.join(format!(".building-{next:06}-{}", std::process::id()));
        std::fs::create_dir(&building).map_err(AggregatorError::io(&building))?;
        Ok((lock, next, building))
    }

    /// Renames `building` to generation `generation`, switches `NAME` to it with one rename(2),
    /// and removes all but the `keep` newest older generations.
    pub(super) fn commit(
        &self,
        building: &Path,
        generation: u64,
        keep: usize,
    ) -> Result<PathBuf, AggregatorError> {
        let dir = self.generations_dir();
        let final_dir = dir.join(format!("{generation:06}"));
        std::fs::rename(building, &final_dir).map_err(AggregatorError::io(&final_dir))?;
        sync_dir(&dir)?;
        let new_link = self.root.join(format!(".{}.new-{}", self.name, std::process::id()));
        let _ = std::fs::remove_file(&new_link);
        let target = PathBuf::from(format!("{}.d", self.name)).join(format!("{generation:06}"));
        std::os::unix::fs::symlink(&target, &new_link).map_err(AggregatorError::io(&new_link))?;
        std::fs::rename(&new_link, self.link()).map_err(AggregatorError::io(self.link()))?;
        sync_dir(&self.root)?;
        tracing::info!(link = %self.link().display(), generation, "switched");
        let old: Vec<u64> = self.generations()?.into_iter().filter(|g| *g < generation).collect();
        for g in old.iter().take(old.len().saturating_sub(keep.max(1))) {
            let path = dir.join(format!("{g:06}"));
            std::fs::remove_dir_all(&path).map_err(AggregatorError::io(&path))?;
        }
        Ok(final_dir)
    }
}

/// fsyncs a directory.
pub(super) fn sync_dir(dir: &Path) -> Result<(), AggregatorError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(AggregatorError::io(dir))
}

/// Where an RPM goes inside a generation.
fn rpm_path(name: &str) -> (String, FileKind) {
    if name.ends_with(".src.rpm") || name.ends_with(".nosrc.rpm") {
        (format!("SRPMS/{name}"), FileKind::SourcePackage)
    } else {
        (format!("Packages/{name}"), FileKind::Package)
    }
}

/// Publishes the RPMs among `artefacts` (everything else, build logs included, is skipped) of
/// batch `batch` into the repository `repo` under `config.repos_root`, signed with
/// `config.signing`. Blocking (files and programs): call it from `spawn_blocking`.
pub fn publish(
    config: &RepoConfig,
    repo: &str,
    batch: &str,
    artefacts: &[Artefact],
) -> Result<Published, AggregatorError> {
    if !repo_name_ok(repo) {
        return Err(AggregatorError::Refused(format!("repository name {repo:?}")));
    }
    if batch.is_empty() || batch.len() > 200 || batch.chars().any(char::is_control) {
        return Err(AggregatorError::Refused(format!("batch name {batch:?}")));
    }
    let mut new: BTreeMap<String, (&Artefact, FileKind)> = BTreeMap::new();
    for a in artefacts {
        if !plain_name(&a.name) {
            return Err(AggregatorError::BadBlob {
                name: a.name.clone(),
                message: "not a plain file name".into(),
            });
        }
        if !a.name.ends_with(".rpm") {
            continue;
        }
        if !discomy_protocol::ops::is_blake3_hex(&a.blake3) {
            return Err(AggregatorError::BadBlob {
                name: a.name.clone(),
                message: "bad blake3".into(),
            });
        }
        let (path, kind) = rpm_path(&a.name);
        if new.insert(path, (a, kind)).is_some() {
            return Err(AggregatorError::BadBlob {
                name: a.name.clone(),
                message: "listed twice".into(),
            });
        }
    }
    if new.is_empty() {
        return Err(AggregatorError::Refused(format!("batch {batch} has no RPM to publish")));
    }
    let signer = Signer::new(&config.signing)?;
    let root = &config.repos_root;
    std::fs::create_dir_all(root).map_err(AggregatorError::io(root))?;
    let tree = Tree::new(root, repo);
    let (_lock, generation, building) = tree.begin()?;
    let result = build_generation(config, &signer, &tree, repo, batch, generation, &building, &new);
    let (manifest, added) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&building);
            return Err(e);
        }
    };
    let path = tree.commit(&building, generation, config.keep_generations)?;
    Ok(Published { link: tree.link(), generation, path, added, files: manifest.files.len() })
}

#[allow(clippy::too_many_arguments)]
fn build_generation(
    config: &RepoConfig,
    signer: &Signer,
    tree: &Tree,
    repo: &str,
    batch: &str,
    generation: u64,
    building: &Path,
    new: &BTreeMap<String, (&Artefact, FileKind)>,
) -> Result<(Manifest, Vec<String>), AggregatorError> {
    for sub in ["Packages", "SRPMS"] {
        let p = building.join(sub);
        std::fs::create_dir(&p).map_err(AggregatorError::io(&p))?;
    }
    // The previous generation's packages, re-checked, unless this batch replaces them.
    let mut entries: BTreeMap<String, ManifestEntry> = BTreeMap::new();
    if let Some((_, current)) = tree.current()? {
        let old = Manifest::read(&current)?;
        for entry in old.files {
            if !matches!(entry.kind, FileKind::Package | FileKind::SourcePackage)
                || new.contains_key(&entry.path)
            {
                continue;
            }
            let from = current.join(&entry.path);
            let (sha256, size) = sha256_file(&from)?;
            if sha256 != entry.sha256 || size != entry.size {
                return Err(AggregatorError::Damaged(format!(
                    "{} does not match its manifest (run verify)",
                    from.display()
                )));
            }
            let to = building.join(&entry.path);
            if std::fs::hard_link(&from, &to).is_err() {
                copy_file(&from, &to)?;
            }
            entries.insert(entry.path.clone(), entry);
        }
    }
    // This batch's RPMs, from the blob store.
    let mut to_sign = Vec::new();
    for (path, (artefact, kind)) in new {
        let to = building.join(path);
        copy_blob(artefact, &to)?;
        to_sign.push(to);
        entries.insert(
            path.clone(),
            ManifestEntry {
                path: path.clone(),
                kind: *kind,
                sha256: String::new(),
                size: 0,
                batch: batch.to_string(),
                job: Some(artefact.job),
                uploaded_blake3: Some(artefact.blake3.clone()),
                signed: true,
            },
        );
    }
    signer.sign_rpms(&to_sign)?;
    Cmd::new("createrepo_c")?
        .args(["--quiet", "--no-database", "--checksum", "sha256", "--"])
        .arg(building)
        .run()?;
    let repomd = building.join("repodata/repomd.xml");
    signer.detach_sign(&repomd, &building.join("repodata/repomd.xml.asc"))?;
    write_synced(&building.join(PUBLIC_KEY_NAME), signer.public_key()?.as_bytes())?;
    // Every file, hashed and fsynced; nothing but regular files.
    let mut files = Vec::new();
    for (path, regular) in walk(building)? {
        if !regular {
            return Err(AggregatorError::Damaged(format!(
                "{path} in the new generation is not a regular file"
            )));
        }
        let full = building.join(&path);
        let (sha256, size) = sha256_file(&full)?;
        open_nofollow(&full)?.sync_all().map_err(AggregatorError::io(&full))?;
        let entry = match entries.remove(&path) {
            Some(mut e) => {
                e.sha256 = sha256;
                e.size = size;
                e
            }
            None => {
                let kind = if path == PUBLIC_KEY_NAME {
                    FileKind::PublicKey
                } else if path == "repodata/repomd.xml.asc" {
                    FileKind::MetadataSignature
                } else if path.starts_with("repodata/") {
                    FileKind::Metadata
                } else {
                    return Err(AggregatorError::Damaged(format!(
                        "{path} appeared in the new generation"
                    )));
                };
                ManifestEntry {
                    path: path.clone(),
                    kind,
                    sha256,
                    size,
                    batch: batch.to_string(),
                    job: None,
                    uploaded_blake3: None,
                    signed: path == "repodata/repomd.xml",
                }
            }
        };
        files.push(entry);
    }
    if let Some(path) = entries.keys().next() {
        return Err(AggregatorError::Damaged(format!("{path} vanished from the new generation")));
    }
    for sub in ["", "Packages", "SRPMS", "repodata"] {
        sync_dir(&building.join(sub))?;
    }
    let manifest = Manifest {
        format: FORMAT,
        repository: repo.to_string(),
        generation,
        batch: batch.to_string(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        key_id: config.signing.key_id.clone(),
        files,
    };
    manifest.write(building)?;
    let added = new.keys().cloned().collect();
    tracing::info!(repo, batch, generation, files = manifest.files.len(), "generation built");
    debug_assert!(!manifest.files.iter().any(|f| f.path == MANIFEST_NAME));
    Ok((manifest, added))
}

/// Copies the artefact's blob to `to`: opened without following links, a regular file of the
/// announced size whose blake3 is the announced one.
fn copy_blob(a: &Artefact, to: &Path) -> Result<(), AggregatorError> {
    let bad = |message: String| AggregatorError::BadBlob { name: a.name.clone(), message };
    let mut file = open_nofollow(&a.blob_path).map_err(|e| bad(format!("blob: {e}")))?;
    let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("blob is not a regular file".into()));
    }
    if meta.len() != a.size {
        return Err(bad(format!("blob has {} bytes, {} announced", meta.len(), a.size)));
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(AggregatorError::io(to))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(AggregatorError::io(&a.blob_path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > a.size {
            return Err(bad("blob grew while read".into()));
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(AggregatorError::io(to))?;
    }
    if size != a.size || hasher.finalize().to_hex().as_str() != a.blake3 {
        return Err(bad("blob content is not the announced blake3".into()));
    }
    out.sync_all().map_err(AggregatorError::io(to))
}

/// Copies the regular file `from` (not followed if a link) to the new file `to`, fsynced.
pub(super) fn copy_file(from: &Path, to: &Path) -> Result<(), AggregatorError> {
    let mut src = open_nofollow(from)?;
    if !src.metadata().map_err(AggregatorError::io(from))?.is_file() {
        return Err(AggregatorError::Damaged(format!("{} is not a regular file", from.display())));
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(AggregatorError::io(to))?;
    std::io::copy(&mut src, &mut out).map_err(AggregatorError::io(to))?;
    out.sync_all().map_err(AggregatorError::io(to))
}
