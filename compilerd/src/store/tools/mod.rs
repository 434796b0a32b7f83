//! A node's toolchain store: content-addressed blobs, manifests, and installed trees, with
//! single-flight installs and a size bound enforced by least-recently-used eviction.
//!
//! Layout under the store directory:
//! - `blobs/<hex>`: file contents, named by blake3 digest, verified when written;
//! - `manifests/<hex>`: postcard-encoded [`ToolchainManifest`]s of installed toolchains;
//! - `trees/<hex>/…`: the files of a toolchain at their absolute paths (worker stores only).
//!
//! Two peers installing the same toolchain at once cause one transfer and one install: the first
//! becomes the uploader, the others wait for it (and take over if it goes away).

use discomy_protocol::plumbing::fs::{WriteOptions, unique_temp_name, write_atomically_with};
use discomy_protocol::stats::{Installed, StoreActivity};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use discomy_protocol::payload::MAX_RAW_LEN;
use discomy_protocol::{Digest, EntryKind, Payload, ToolchainManifest};
use tokio::sync::Notify;
use tracing::{info, warn};

/// How long a waiter trusts another peer's upload before taking it over.
pub const UPLOAD_PATIENCE: Duration = Duration::from_secs(120);

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// File-system failure.
    #[error("toolchain store: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The manifest or a blob is invalid.
    #[error("toolchain store: {0}")]
    Invalid(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// The result of asking for an install.
#[derive(Debug, PartialEq, Eq)]
pub enum InstallStep {
    /// Installed; nothing to send.
    Ready,
    /// The caller is the uploader and must send these blobs, then ask again.
    Missing(Vec<Digest>),
}

struct Pending {
    since: Instant,
    done: Arc<Notify>,
    /// Someone is building the tree now (all blobs are present).
    materializing: bool,
}

#[derive(Default)]
struct State {
    pending: HashMap<Digest, Pending>,
    last_used: HashMap<Digest, SystemTime>,
    in_use: HashMap<Digest, usize>,
    /// What `discomy stats` reports of this store.
    activity: StoreActivity,
    /// Blobs received so far, to count the ones received again (cleared when it reaches
    /// [`MAX_SEEN_BLOBS`], so a peer sending endless distinct blobs cannot grow it).
    seen_blobs: std::collections::HashSet<Digest>,
    /// The store's size as of the last count ([`ToolStore::size`]) plus the blobs written since:
    /// a blob upload checks the bound without walking the store.
    bytes: Option<u64>,
}

/// Most blob digests remembered for [`StoreActivity::blobs_received_again`].
const MAX_SEEN_BLOBS: usize = 1 << 16;

/// Digests of the toolchains installed in the store at `dir` (read without opening it, so the
/// node reporter sees what the worker installs).
pub fn installed_in(dir: &Path) -> Vec<Digest> {
    fs::read_dir(dir.join("manifests"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| Digest::from_hex(&e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default()
}

/// A toolchain store.
pub struct ToolStore {
    dir: PathBuf,
    max_bytes: u64,
    materialize: bool,
    state: Mutex<State>,
    /// How long a blob no installed toolchain uses is kept (its install may be on its way).
    orphan_grace: Duration,
}

/// How long a blob that no installed toolchain uses is kept: an upload sends the blobs an
/// install asked for, then installs, within seconds.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(600);

/// Keeps a tree from being evicted while a compile uses it.
pub struct TreeLease<'a> {
    store: &'a ToolStore,
    digest: Digest,
    /// Root of the tree.
    pub root: PathBuf,
    /// The manifest.
    pub manifest: ToolchainManifest,
}

impl Drop for TreeLease<'_> {
    fn drop(&mut self) {
        let mut state = self.store.lock();
        if let Some(n) = state.in_use.get_mut(&self.digest) {
            *n = n.saturating_sub(1);
        }
    }
}

impl ToolStore {
    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens (creating) a store. `materialize`: build trees (workers) or keep blobs only (agents).
    pub fn open(dir: &Path, max_bytes: u64, materialize: bool) -> Result<ToolStore, StoreError> {
        for sub in ["blobs", "manifests", "trees", "tmp"] {
            fs::create_dir_all(dir.join(sub))
                .map_err(io_err(format!("create {}", dir.display())))?;
        }
        // Leftovers of an interrupted install are garbage once they are old (a young one may
        // belong to another process sharing the store).
        if let Ok(entries) = fs::read_dir(dir.join("tmp")) {
            for e in entries.flatten() {
                let old =
                    e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
                if old.is_some_and(|age| age > Duration::from_secs(3600)) {
                    let _ =
                        make_writable_and_remove(&e.path()).or_else(|_| fs::remove_file(e.path()));
                }
            }
        }
        let store = ToolStore {
            dir: dir.to_path_buf(),
            max_bytes,
            materialize,
            state: Mutex::default(),
            orphan_grace: ORPHAN_GRACE,
        };
        let mut state = store.lock();
        for digest in store.installed() {
            let used = fs::metadata(store.manifest_path(&digest))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            state.last_used.insert(digest, used);
        }
        drop(state);
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs").join(d.to_hex())
    }

    fn manifest_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("manifests").join(d.to_hex())
    }

    fn tree_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("trees").join(d.to_hex())
    }

    /// Digests of installed toolchains.
    pub fn installed(&self) -> Vec<Digest> {
        installed_in(&self.dir)
    }

    /// Whether a blob is stored.
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Path of a stored blob.
    pub fn blob(&self, d: &Digest) -> Option<PathBuf> {
        let p = self.blob_path(d);
        p.is_file().then_some(p)
    }

    /// Stores a blob after checking its size cap and digest.
    pub fn put_blob(&self, payload: &Payload) -> Result<Digest, StoreError> {
        let raw =
            payload.decompress(MAX_RAW_LEN).map_err(|e| StoreError::Invalid(e.to_string()))?;
        {
            let mut state = self.lock();
            if state.seen_blobs.len() >= MAX_SEEN_BLOBS {
                state.seen_blobs.clear();
            }
            let again = !state.seen_blobs.insert(payload.digest);
            state.activity.blobs_received += 1;
            state.activity.blobs_received_again += u64::from(again);
            state.activity.blob_bytes_received += raw.len() as u64;
        }
        let path = self.blob_path(&payload.digest);
        if !path.is_file() {
            self.write_atomically(&path, &raw)?;
            // Uploads that are never installed must not fill the disk either.
            let counted = self.lock().bytes;
            let bytes = counted.unwrap_or_else(|| self.size()) + raw.len() as u64;
            self.lock().bytes = Some(bytes);
            if bytes > self.max_bytes {
                self.evict();
            }
        }
        Ok(payload.digest)
    }

    /// [`ToolStore::open`] keeping blobs no toolchain uses for `grace` instead of
    /// [`ORPHAN_GRACE`].
    pub fn with_orphan_grace(mut self, grace: Duration) -> ToolStore {
        self.orphan_grace = grace;
        self
    }

    /// Stores a blob from a local file whose digest the caller already knows (seeding from this
    /// host's own compilers, whose digests were computed or stat-validated moments ago). Uses a
    /// hard link where possible; the store never writes through it (writes are temp + rename).
    pub fn put_file(&self, digest: &Digest, source: &Path) -> Result<(), StoreError> {
        let path = self.blob_path(digest);
        if path.is_file() {
            return Ok(());
        }
        let tmp = self.dir.join("tmp").join(unique_temp_name(digest.to_hex().as_ref()));
        let _ = fs::remove_file(&tmp);
        if fs::hard_link(source, &tmp).is_ok() {
            return fs::rename(&tmp, &path).map_err(io_err("store blob"));
        }
        let raw = fs::read(source).map_err(io_err(format!("read {}", source.display())))?;
        if Digest::of(&raw) != *digest {
            return Err(StoreError::Invalid(format!(
                "{} changed while being stored",
                source.display()
            )));
        }
        self.write_atomically(&path, &raw)
    }

    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        // Blobs are read by the sandboxed compiler, which runs as an unprivileged user.
        let how = WriteOptions { mode: Some(0o644), ..WriteOptions::default() };
        write_atomically_with(path, &[bytes], how).map_err(io_err("store blob"))
    }

    /// The manifest of an installed toolchain.
    pub fn manifest(&self, d: &Digest) -> Option<ToolchainManifest> {
        let bytes = fs::read(self.manifest_path(d)).ok()?;
        let m: ToolchainManifest = postcard::from_bytes(&bytes).ok()?;
        (m.digest() == *d).then_some(m)
    }

    /// Whether the toolchain is installed (and, on a worker, its tree exists).
    pub fn is_installed(&self, d: &Digest) -> bool {
        self.manifest_path(d).is_file() && (!self.materialize || self.tree_path(d).is_dir())
    }

    /// An installed tree, held against eviction while the lease lives.
    pub fn lease(&self, d: &Digest) -> Option<TreeLease<'_>> {
        if !self.is_installed(d) {
            return None;
        }
        let manifest = self.manifest(d)?;
        let mut state = self.lock();
        *state.in_use.entry(*d).or_default() += 1;
        state.last_used.insert(*d, SystemTime::now());
        drop(state);
        let _ = fs::File::options()
            .append(true)
            .open(self.manifest_path(d))
            .and_then(|f| f.set_modified(SystemTime::now()));
        Some(TreeLease { store: self, digest: *d, root: self.tree_path(d), manifest })
    }

    /// Asks for `manifest` to be installed. Returns `Ready` when it is (possibly after waiting
    /// for another peer's upload), or `Missing` with the blobs the caller must now send.
    pub async fn install(&self, manifest: &ToolchainManifest) -> Result<InstallStep, StoreError> {
        manifest.validate().map_err(|e| StoreError::Invalid(e.to_string()))?;
        let digest = manifest.digest();
        loop {
            if self.is_installed(&digest) {
                return Ok(InstallStep::Ready);
            }
            let missing: Vec<Digest> =
                manifest.blobs().into_iter().filter(|b| !self.has_blob(b)).collect();
            let wait_on = {
                let mut state = self.lock();
                let fresh = |p: &Pending| p.since.elapsed() < UPLOAD_PATIENCE;
                match state.pending.get_mut(&digest) {
                    // Someone is uploading, or building the tree: wait for them.
                    Some(p) if fresh(p) && (!missing.is_empty() || p.materializing) => {
                        Some(p.done.clone())
                    }
                    // All blobs are here and nobody is building: we build.
                    Some(p) if missing.is_empty() => {
                        p.materializing = true;
                        p.since = Instant::now();
                        None
                    }
                    None if missing.is_empty() => {
                        let done = Arc::new(Notify::new());
                        let pending = Pending { since: Instant::now(), done, materializing: true };
                        state.pending.insert(digest, pending);
                        None
                    }
                    // Blobs are missing and nobody (alive) is uploading: we upload.
                    _ => {
                        let done = Arc::new(Notify::new());
                        let pending = Pending { since: Instant::now(), done, materializing: false };
                        state.pending.insert(digest, pending);
                        return Ok(InstallStep::Missing(missing));
                    }
                }
            };
            match wait_on {
                Some(done) => {
                    let notified = done.notified();
                    let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
                }
                None => {
                    let this = self;
                    let m = manifest.clone();
                    // Materialising copies up to a few hundred MB: keep it off the async threads.
                    let result = tokio::task::block_in_place(|| this.materialize_now(&m));
                    let done = self.lock().pending.remove(&digest).map(|p| p.done);
                    if let Some(done) = done {
                        done.notify_waiters();
                    }
                    result?;
                    self.evict();
                    return Ok(InstallStep::Ready);
                }
            }
        }
    }

    fn materialize_now(&self, manifest: &ToolchainManifest) -> Result<(), StoreError> {
        let digest = manifest.digest();
        if self.is_installed(&digest) {
            return Ok(());
        }
        let started = Instant::now();
        if self.materialize {
            let tmp = tempfile::Builder::new()
                .prefix("tree-")
                .tempdir_in(self.dir.join("tmp"))
                .map_err(io_err("temp tree"))?;
            for entry in &manifest.entries {
                let rel = entry.path.trim_start_matches('/');
                let target = tmp.path().join(rel);
                create_parents_no_follow(tmp.path(), Path::new(rel))?;
                match &entry.kind {
                    EntryKind::File { digest, executable, .. } => {
                        let blob = self
                            .blob(digest)
                            .ok_or_else(|| StoreError::Invalid(format!("blob {digest} missing")))?;
                        // Blobs were verified when stored; a hard link with the right mode is the
                        // cheap path (no copy of a 30 MB cc1), a checked copy the general one.
                        let blob_exec =
                            fs::metadata(&blob).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
                        if blob_exec == *executable && fs::hard_link(&blob, &target).is_ok() {
                            continue;
                        }
                        let bytes = fs::read(&blob).map_err(io_err("read blob"))?;
                        if Digest::of(&bytes) != *digest {
                            let _ = fs::remove_file(&blob);
                            return Err(StoreError::Invalid(format!(
                                "stored blob {digest} is corrupt; dropped"
                            )));
                        }
                        let mut f = fs::File::options()
                            .write(true)
                            .create_new(true)
                            .open(&target)
                            .map_err(io_err(format!("create {}", entry.path)))?;
                        f.write_all(&bytes).map_err(io_err("write tree file"))?;
                        let mode = if *executable { 0o555 } else { 0o444 };
                        f.set_permissions(fs::Permissions::from_mode(mode))
                            .map_err(io_err("chmod"))?;
                    }
                    EntryKind::Symlink { target: link } => {
                        std::os::unix::fs::symlink(link, &target)
                            .map_err(io_err(format!("symlink {}", entry.path)))?;
                    }
                    EntryKind::Dir => match fs::symlink_metadata(&target) {
                        Ok(m) if m.is_dir() => {}
                        Ok(_) => {
                            return Err(StoreError::Invalid(format!(
                                "{} is not a directory",
                                entry.path
                            )));
                        }
                        Err(_) => fs::create_dir(&target).map_err(io_err("mkdir"))?,
                    },
                }
            }
            let final_path = self.tree_path(&digest);
            let kept = tmp.keep();
            fs::set_permissions(&kept, fs::Permissions::from_mode(0o755))
                .map_err(io_err("chmod tree"))?;
            if let Err(err) = fs::rename(&kept, &final_path) {
                let _ = make_writable_and_remove(&kept);
                // Another process sharing the store installed the same tree first: fine.
                if !final_path.is_dir() {
                    return Err(StoreError::Io { what: "install tree".into(), source: err });
                }
            }
        }
        let encoded =
            postcard::to_stdvec(manifest).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.write_atomically(&self.manifest_path(&digest), &encoded)?;
        self.lock().last_used.insert(digest, SystemTime::now());
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let bytes = manifest.content_size();
        info!(toolchain = %digest, name = %manifest.name, bytes, ms, "toolchain installed");
        self.lock().activity.note_install(Installed {
            name: manifest.name.clone(),
            digest: digest.to_hex(),
            bytes,
            ms,
            at_unix_ms: discomy_protocol::stats::unix_ms_now(),
        });
        Ok(())
    }

    /// What this store did since it was opened (`discomy stats`).
    pub fn activity(&self) -> StoreActivity {
        self.lock().activity.clone()
    }

    /// Counts a toolchain pushed to a peer, `ms` after the push began.
    pub fn note_pushed(&self, digest: &Digest, ms: u64) {
        self.lock().activity.note_push(discomy_protocol::stats::Pushed {
            digest: digest.to_hex(),
            ms,
            at_unix_ms: discomy_protocol::stats::unix_ms_now(),
        });
    }

    /// Bytes used by blobs and trees.
    pub fn size(&self) -> u64 {
        dir_size(&self.dir.join("blobs")) + dir_size(&self.dir.join("trees"))
    }

    /// Evicts least recently used toolchains not in use until the store fits its bound.
    pub fn evict(&self) {
        let mut size = self.size();
        self.lock().bytes = Some(size);
        if size <= self.max_bytes {
            return;
        }
        // Blobs per installed toolchain that uses them (read once, not once per eviction).
        let mut needed: HashMap<Digest, usize> = HashMap::new();
        for manifest in self.installed().iter().filter_map(|d| self.manifest(d)) {
            for blob in manifest.blobs() {
                *needed.entry(blob).or_insert(0) += 1;
            }
        }
        // First the blobs no toolchain uses (uploads never installed), once their grace is over.
        self.remove_orphans(&needed);
        size = self.size();
        let mut candidates: Vec<(SystemTime, Digest)> = {
            let state = self.lock();
            state
                .last_used
                .iter()
                .filter(|(d, _)| state.in_use.get(*d).copied().unwrap_or(0) == 0)
                .map(|(d, t)| (*t, *d))
                .collect()
        };
        candidates.sort();
        for (_, digest) in candidates {
            if size <= self.max_bytes {
                break;
            }
            let Some(manifest) = self.manifest(&digest) else { continue };
            let _ = fs::remove_file(self.manifest_path(&digest));
            let _ = fs::remove_dir_all(self.tree_path(&digest))
                .or_else(|_| make_writable_and_remove(&self.tree_path(&digest)));
            for blob in manifest.blobs() {
                let users = needed.entry(blob).or_insert(1);
                *users = users.saturating_sub(1);
                if *users == 0 {
                    let _ = fs::remove_file(self.blob_path(&blob));
                }
            }
            self.lock().last_used.remove(&digest);
            warn!(toolchain = %digest, name = %manifest.name, "evicted to keep the store within its bound");
            size = self.size();
        }
        self.lock().bytes = Some(size);
    }

    /// Removes blobs that no installed toolchain uses and that are older than the grace.
    fn remove_orphans(&self, needed: &HashMap<Digest, usize>) {
        let Ok(entries) = fs::read_dir(self.dir.join("blobs")) else { return };
        let mut removed = 0u64;
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(digest) = name.to_str().and_then(Digest::from_hex) else { continue };
            if needed.get(&digest).is_some_and(|n| *n > 0) {
                continue;
            }
            let age = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            if age.is_some_and(|a| a >= self.orphan_grace) && fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            warn!(blobs = removed, "removed uploaded blobs that no toolchain uses");
        }
    }
}

fn make_writable_and_remove(path: &Path) -> io::Result<()> {
    for entry in walk(path) {
        if let Ok(m) = fs::symlink_metadata(&entry) {
            if m.is_dir() {
                let _ = fs::set_permissions(&entry, fs::Permissions::from_mode(0o755));
            }
        }
    }
    fs::remove_dir_all(path)
}

fn walk(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            if let Ok(rd) = fs::read_dir(&p) {
                out.extend(rd.flatten().map(|e| e.path()));
            }
        }
        i += 1;
    }
    out
}

fn dir_size(path: &Path) -> u64 {
    walk(path)
        .iter()
        .filter_map(|p| fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Creates the parent directories of `rel` under `root`, refusing to pass through anything
/// that is not a real directory (a symlink planted by an earlier entry cannot redirect writes).
fn create_parents_no_follow(root: &Path, rel: &Path) -> Result<(), StoreError> {
    let mut current = root.to_path_buf();
    let parent = rel.parent().unwrap_or(Path::new(""));
    for component in parent.components() {
        let Component::Normal(name) = component else {
            return Err(StoreError::Invalid(format!("bad path component in {}", rel.display())));
        };
        current.push(name);
        match fs::symlink_metadata(&current) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::Invalid(format!(
                    "{} passes through a non-directory inside the tree",
                    rel.display()
                )));
            }
            Err(_) => fs::create_dir(&current).map_err(io_err("mkdir"))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
