//! A node's store of source-mode file contents: blobs named by blake3 digest, a size bound kept
//! by least-recently-used eviction, and the per-unit trees built from them.
//!
//! Layout under the store directory: `blobs/<hex>` (mode 0644, verified when written, touched
//! when used) and `tmp/` for writes in progress. A unit's tree is made of hard links to blobs,
//! so evicting a blob never disturbs a unit that is already compiling.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

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

/// The outcome of building a unit's tree.
#[derive(Debug, PartialEq, Eq)]
pub enum Materialized {
    /// Every file is in place.
    Ready,
    /// These blobs must be sent first.
    Missing(Vec<Digest>),
}

/// Source blobs of one node.
pub struct SourceStore {
    dir: PathBuf,
    max_bytes: u64,
    /// Bytes stored, as far as this process knows (recomputed when evicting).
    used: Mutex<u64>,
}

impl SourceStore {
    /// Opens (creating) a store bounded to `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<SourceStore, SourceStoreError> {
        for sub in ["blobs", "tmp"] {
            fs::create_dir_all(dir.join(sub))
                .map_err(io_err(format!("create {}", dir.display())))?;
        }
        let store = SourceStore { dir: dir.to_path_buf(), max_bytes, used: Mutex::new(0) };
        *store.lock() = store.scan().iter().map(|(_, _, size)| size).sum();
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs").join(d.to_hex())
    }

    /// Whether a blob is stored.
    pub fn has(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
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

    /// Builds the unit tree under `root`: every file hard-linked (or copied) at its absolute
    /// path, and the working directory `cwd` created.
    pub fn materialize(
        &self,
        files: &[SourceFile],
        cwd: &str,
        root: &Path,
    ) -> Result<Materialized, SourceStoreError> {
        let missing = self.missing(files);
        if !missing.is_empty() {
            return Ok(Materialized::Missing(missing));
        }
        fs::create_dir_all(root.join(cwd.trim_start_matches('/')))
            .map_err(io_err(format!("create working directory {cwd}")))?;
        let now = SystemTime::now();
        let mut made: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
        for file in files {
            let dst = root.join(file.path.trim_start_matches('/'));
            if let Some(parent) = dst.parent() {
                if !made.contains(parent) {
                    fs::create_dir_all(parent)
                        .map_err(io_err(format!("create directory for {}", file.path)))?;
                    made.insert(parent.to_path_buf());
                }
            }
            let src = self.blob_path(&file.digest);
            if fs::hard_link(&src, &dst).is_err() {
                match fs::copy(&src, &dst) {
                    Ok(_) => {}
                    // Evicted between the check and now: ask for it again.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Ok(Materialized::Missing(vec![file.digest]));
                    }
                    Err(e) => return Err(io_err(format!("place {}", file.path))(e)),
                }
            }
            // Least recently used: a use refreshes the blob's modification time (at most every
            // few minutes: it is a metadata write).
            let stale = fs::metadata(&src)
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > TOUCH_AFTER);
            if stale {
                if let Ok(f) = fs::File::options().append(true).open(&src) {
                    let _ = f.set_modified(now);
                }
            }
        }
        Ok(Materialized::Ready)
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
    fn materializes_at_absolute_paths_after_missing_blobs_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let store = SourceStore::open(&dir.path().join("s"), 1 << 20).unwrap();
        let (a, pa) = file("/src/a.c", b"int a;\n");
        let (h, ph) = file("/usr/include/h.h", b"#define H 1\n");
        let files = vec![a.clone(), h.clone()];
        let root = dir.path().join("unit");
        match store.materialize(&files, "/src/build", &root).unwrap() {
            Materialized::Missing(m) => assert_eq!(m.len(), 2),
            other => panic!("{other:?}"),
        }
        store.put(&pa).unwrap();
        store.put(&ph).unwrap();
        assert_eq!(store.materialize(&files, "/src/build", &root).unwrap(), Materialized::Ready);
        assert_eq!(fs::read(root.join("src/a.c")).unwrap(), b"int a;\n");
        assert_eq!(fs::read(root.join("usr/include/h.h")).unwrap(), b"#define H 1\n");
        assert!(root.join("src/build").is_dir());
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
