//! A node's store of source-mode file contents: blobs named by blake3 digest, a size bound kept
//! by least-recently-used eviction, and the lists the sandbox helper builds unit trees from.
//!
//! Layout under the store directory: `blobs/<hex>` (mode 0644, verified when written, touched
//! when used) and `tmp/` for writes in progress. The helper copies a unit's blobs into a tmpfs
//! of its own; a blob evicted before it did makes the run fail, and the worker then asks the
//! client for the blobs again.
//!
//! The store remembers the blobs this process wrote or found, and when it last refreshed their
//! time, so that a unit's files (dozens, the same headers unit after unit) cost no `stat` each
//! time. Only this process writes or evicts in its directory; [`SourceStore::missing_on_disk`]
//! asks the disk itself where a blob turned out to be gone.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use discomy_protocol::payload::MAX_RAW_LEN;
use discomy_protocol::{Digest, Payload, SourceFile};
use tracing::{debug, warn};

/// A failure of the source store.
#[derive(Debug, thiserror::Error)]
pub enum SourceStoreError {
    /// File-system failure.
    #[error("source store: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A blob that does not match its digest or size.
    #[error("source store: {0}")]
    Invalid(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SourceStoreError {
    let what = what.into();
    move |source| SourceStoreError::Io { what, source }
}

/// A blob's use is recorded (for eviction order) when its last record is older than this.
const TOUCH_AFTER: std::time::Duration = std::time::Duration::from_secs(300);
/// Most blobs remembered; past that the memory starts again empty.
const MAX_KNOWN: usize = 1 << 18;

/// The outcome of listing a unit's tree.
#[derive(Debug, PartialEq, Eq)]
pub enum Materialized {
    /// Every blob is stored: the list for the sandbox helper.
    Ready(Vec<u8>),
    /// These blobs must be sent first.
    Missing(Vec<Digest>),
}

/// Source blobs of one node.
pub struct SourceStore {
    dir: PathBuf,
    max_bytes: u64,
    /// Bytes stored, as far as this process knows (recomputed when evicting).
    used: Mutex<u64>,
    /// Blobs known to be stored, with when their time was last refreshed (`None`: not by this
    /// process).
    known: Mutex<HashMap<Digest, Option<Instant>>>,
}

impl SourceStore {
    /// Opens (creating) a store bounded to `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<SourceStore, SourceStoreError> {
        for sub in ["blobs", "tmp"] {
            fs::create_dir_all(dir.join(sub))
                .map_err(io_err(format!("create {}", dir.display())))?;
        }
        let store = SourceStore {
            dir: dir.to_path_buf(),
            max_bytes,
            used: Mutex::new(0),
            known: Mutex::new(HashMap::new()),
        };
        *store.lock() = store.scan().iter().map(|(_, _, size)| size).sum();
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs").join(d.to_hex())
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Option<Instant>>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, d: Digest, touched: Option<Instant>) {
        let mut known = self.known();
        if known.len() >= MAX_KNOWN {
            known.clear();
        }
        known.insert(d, touched);
    }

    /// Whether a blob is stored.
    pub fn has(&self, d: &Digest) -> bool {
        if self.known().contains_key(d) {
            return true;
        }
        let stored = self.blob_path(d).is_file();
        if stored {
            self.remember(*d, None);
        }
        stored
    }

    /// Path of a stored blob.
    pub fn path(&self, d: &Digest) -> Option<PathBuf> {
        let p = self.blob_path(d);
        p.is_file().then_some(p)
    }

    /// The blobs among `files` this store lacks.
    pub fn missing(&self, files: &[SourceFile]) -> Vec<Digest> {
        let mut missing: Vec<Digest> =
            files.iter().map(|f| f.digest).filter(|d| !self.has(d)).collect();
        missing.sort_by_key(|d| d.0);
        missing.dedup();
        missing
    }

    /// [`SourceStore::missing`], asking the disk (after a blob was found gone).
    pub fn missing_on_disk(&self, files: &[SourceFile]) -> Vec<Digest> {
        for file in files {
            if !self.blob_path(&file.digest).is_file() {
                self.known().remove(&file.digest);
            }
        }
        self.missing(files)
    }

    /// Stores a blob after checking its size cap and digest.
    pub fn put(&self, payload: &Payload) -> Result<Digest, SourceStoreError> {
        let raw = payload
            .decompress(MAX_RAW_LEN)
            .map_err(|e| SourceStoreError::Invalid(e.to_string()))?;
        let path = self.blob_path(&payload.digest);
        if !path.is_file() {
            let mut tmp = tempfile::NamedTempFile::new_in(self.dir.join("tmp"))
                .map_err(io_err("temp file"))?;
            tmp.write_all(&raw).map_err(io_err("write blob"))?;
            // Read by the sandboxed compiler, which runs as an unprivileged user.
            tmp.as_file()
                .set_permissions(fs::Permissions::from_mode(0o644))
                .map_err(io_err("chmod blob"))?;
            tmp.persist(&path)
                .map_err(|e| SourceStoreError::Io { what: "store blob".into(), source: e.error })?;
            self.remember(payload.digest, Some(Instant::now()));
            let over = {
                let mut used = self.lock();
                *used += raw.len() as u64;
                *used > self.max_bytes
            };
            if over {
                self.evict();
            }
        }
        Ok(payload.digest)
    }

    /// The unit tree as a list for the sandbox helper (`--overlay-files`): NUL-separated pairs
    /// of an absolute path and the stored blob that goes there, and `cwd` paired with nothing
    /// (a directory). The helper copies them into a tmpfs of its own, so the tree costs no
    /// directories or links on this disk and needs no removal.
    pub fn tree_list(&self, files: &[SourceFile], cwd: &str) -> Materialized {
        let now = SystemTime::now();
        let mut blobs = Vec::with_capacity(files.len());
        let mut missing = Vec::new();
        for file in files {
            let src = self.blob_path(&file.digest);
            let fresh = self.known().get(&file.digest).copied().flatten();
            if fresh.is_some_and(|t| t.elapsed() < TOUCH_AFTER) {
                blobs.push((file.path.as_str(), src));
                continue;
            }
            // One stat per blob: whether it is here, and when it was last used.
            let Ok(modified) = fs::metadata(&src).and_then(|m| m.modified()) else {
                missing.push(file.digest);
                continue;
            };
            // Least recently used: a use refreshes the blob's modification time (at most every
            // few minutes: it is a metadata write).
            let age = now.duration_since(modified).unwrap_or_default();
            let touched = if age > TOUCH_AFTER {
                if let Ok(f) = fs::File::options().append(true).open(&src) {
                    let _ = f.set_modified(now);
                }
                Instant::now()
            } else {
                Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
            };
            self.remember(file.digest, Some(touched));
            blobs.push((file.path.as_str(), src));
        }
        if !missing.is_empty() {
            missing.sort_by_key(|d| d.0);
            missing.dedup();
            return Materialized::Missing(missing);
        }
        let pairs =
            blobs.iter().flat_map(|(path, src)| [path.as_bytes(), src.as_os_str().as_bytes()]);
        Materialized::Ready(crate::sandbox::nul_joined(pairs.chain([cwd.as_bytes(), b""])))
    }

    fn scan(&self) -> Vec<(SystemTime, PathBuf, u64)> {
        let Ok(rd) = fs::read_dir(self.dir.join("blobs")) else { return Vec::new() };
        rd.flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), e.path(), m.len()))
            })
            .collect()
    }

    /// Removes least recently used blobs until the store is within 90 % of its bound.
    pub fn evict(&self) {
        let mut blobs = self.scan();
        let mut total: u64 = blobs.iter().map(|(_, _, s)| s).sum();
        let target = self.max_bytes / 10 * 9;
        blobs.sort();
        let mut removed = 0usize;
        for (_, path, size) in blobs {
            if total <= target {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(size);
                removed += 1;
            }
        }
        *self.lock() = total;
        // Whatever went, the disk says again.
        self.known().clear();
        if removed > 0 {
            debug!(removed, bytes = total, "source blobs evicted");
        }
        if total > self.max_bytes {
            warn!(bytes = total, bound = self.max_bytes, "source store still over its bound");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &[u8]) -> (SourceFile, Payload) {
        let payload = Payload::compress(content);
        let f =
            SourceFile { path: path.into(), digest: payload.digest, size: content.len() as u64 };
        (f, payload)
    }

    #[test]
    fn lists_blobs_at_absolute_paths_after_missing_blobs_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let store = SourceStore::open(&dir.path().join("s"), 1 << 20).unwrap();
        let (a, pa) = file("/src/a.c", b"int a;\n");
        let (h, ph) = file("/usr/include/h.h", b"#define H 1\n");
        let files = vec![a.clone(), h.clone()];
        match store.tree_list(&files, "/src/build") {
            Materialized::Missing(m) => assert_eq!(m.len(), 2),
            other => panic!("{other:?}"),
        }
        store.put(&pa).unwrap();
        store.put(&ph).unwrap();
        let Materialized::Ready(list) = store.tree_list(&files, "/src/build") else {
            panic!("blobs are stored")
        };
        let fields: Vec<String> =
            list.split(|&b| b == 0).map(|f| String::from_utf8_lossy(f).into_owned()).collect();
        assert_eq!(fields.len(), 7, "{fields:?}");
        assert_eq!(fields[0], "/src/a.c");
        assert_eq!(fs::read(&fields[1]).unwrap(), b"int a;\n");
        assert_eq!(fields[2], "/usr/include/h.h");
        assert_eq!(fs::read(&fields[3]).unwrap(), b"#define H 1\n");
        assert_eq!(&fields[4..], ["/src/build", "", ""]);
    }

    /// Known blobs cost no `stat`; one removed behind the store's back is still listed (the
    /// helper then fails to copy it), and the disk check the worker makes then finds it gone.
    #[test]
    fn remembered_blobs_and_the_disk_check_after_a_removal() {
        let dir = tempfile::tempdir().unwrap();
        let store = SourceStore::open(&dir.path().join("s"), 1 << 20).unwrap();
        let (a, pa) = file("/src/a.c", b"int a;\n");
        store.put(&pa).unwrap();
        let files = vec![a.clone()];
        assert!(matches!(store.tree_list(&files, "/src"), Materialized::Ready(_)));
        fs::remove_file(store.blob_path(&a.digest)).unwrap();
        assert!(store.missing(&files).is_empty(), "remembered");
        assert_eq!(store.missing_on_disk(&files), vec![a.digest]);
        assert_eq!(store.missing(&files), vec![a.digest], "forgotten once found gone");
        match store.tree_list(&files, "/src") {
            Materialized::Missing(m) => assert_eq!(m, vec![a.digest]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_corrupt_payload_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = SourceStore::open(dir.path(), 1 << 20).unwrap();
        let (_, mut p) = file("/a.c", b"int a;\n");
        p.digest = Digest::of(b"something else");
        assert!(store.put(&p).is_err());
        assert!(!store.has(&p.digest));
    }

    #[test]
    fn eviction_keeps_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = SourceStore::open(dir.path(), 10_000).unwrap();
        for i in 0..40u32 {
            let content = vec![i as u8; 1000];
            store.put(&Payload::compress(&content)).unwrap();
        }
        let total: u64 = store.scan().iter().map(|(_, _, s)| s).sum();
        assert!(total <= 10_000, "{total}");
    }
}
