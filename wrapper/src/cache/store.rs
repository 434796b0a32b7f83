//! The local tier: one file per key under the cache directory, written through a temporary
//! file and a rename, and verified against its blake3 digest on every read. A corrupt entry is
//! removed and reported, never served. Eviction is least-recently-used by mtime (a hit touches
//! its entry).
//!
//! File layout: `<dir>/<first two hex digits>/<rest of the hex key>.<kind>`; contents are
//! [`MAGIC`], the blake3 digest of the body, then the body.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use discomy_protocol::plumbing::fs::{WriteOptions, write_atomically_with};

use super::stats::{self, Counter};

/// Format tag at the start of every entry; bump when an entry's encoding changes.
pub const MAGIC: &[u8; 8] = b"DSCMCE02";
const HEADER: usize = 8 + 32;

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A compile result.
    Result,
    /// A direct-mode manifest.
    Manifest,
}

impl Kind {
    fn ext(self) -> &'static str {
        match self {
            Kind::Result => "r",
            Kind::Manifest => "m",
        }
    }
}

/// Why a read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The entry exists but its digest does not match: it was removed.
    #[error("corrupt cache entry {0} (removed)")]
    Corrupt(PathBuf),
    /// File system trouble.
    #[error("cache I/O on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A cache directory with a size bound.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    max_size: u64,
}

impl Store {
    /// A store rooted at `root` holding at most `max_size` bytes.
    pub fn new(root: PathBuf, max_size: u64) -> Store {
        Store { root, max_size }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The size bound in bytes.
    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    fn path(&self, key: &[u8; 32], kind: Kind) -> PathBuf {
        let hex = blake3::Hash::from_bytes(*key).to_hex();
        self.root.join(&hex[..2]).join(format!("{}.{}", &hex[2..], kind.ext()))
    }

    /// Reads and verifies an entry. `Ok(None)` when absent; a corrupt entry is removed.
    pub fn get(&self, key: &[u8; 32], kind: Kind) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(key, kind);
        let mut bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let valid = bytes.len() >= HEADER
            && &bytes[..8] == MAGIC
            && blake3::hash(&bytes[HEADER..]).as_bytes()[..] == bytes[8..HEADER];
        if !valid {
            let _ = fs::remove_file(&path);
            return Err(StoreError::Corrupt(path));
        }
        // LRU: a read makes the entry young again.
        if kind == Kind::Result {
            if let Ok(f) = fs::File::open(&path) {
                let _ = f.set_modified(SystemTime::now());
            }
        }
        bytes.drain(..HEADER);
        Ok(Some(bytes))
    }

    /// Writes an entry atomically; returns the bytes written. Evicts when over the bound.
    pub fn put(&self, key: &[u8; 32], kind: Kind, body: &[u8]) -> Result<u64, StoreError> {
        self.put_with(key, kind, body, WriteOptions::default())
    }

    /// [`Store::put`] that never replaces an entry: `Ok(0)` when `key` is already stored. The
    /// farm tier stores this way, so a later put cannot overwrite an entry others read.
    pub fn put_if_absent(
        &self,
        key: &[u8; 32],
        kind: Kind,
        body: &[u8],
    ) -> Result<u64, StoreError> {
        let how = WriteOptions { keep_existing: true, ..WriteOptions::default() };
        match self.put_with(key, kind, body, how) {
            Err(StoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Ok(0)
            }
            other => other,
        }
    }

    fn put_with(
        &self,
        key: &[u8; 32],
        kind: Kind,
        body: &[u8],
        how: WriteOptions,
    ) -> Result<u64, StoreError> {
        let path = self.path(key, kind);
        let io = |source| StoreError::Io { path: path.clone(), source };
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(io)?;
        let old = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let digest = blake3::hash(body);
        let parts: [&[u8]; 3] = [MAGIC, digest.as_bytes(), body];
        write_atomically_with(&path, &parts, how).map_err(io)?;
        let len = (HEADER + body.len()) as u64;
        let delta = i64::try_from(len).unwrap_or(i64::MAX) - i64::try_from(old).unwrap_or(0);
        let mut deltas = vec![(Counter::Size, delta), (Counter::BytesStored, delta.max(0))];
        if kind == Kind::Result {
            deltas.push((Counter::Stored, 1));
        }
        if let Some(c) = stats::add(&self.root, &deltas) {
            if c.get(Counter::Size) > self.max_size {
                self.cleanup(self.max_size / 10 * 9);
            }
        }
        Ok(len)
    }

    /// Removes the least recently used entries until the store holds at most `target` bytes;
    /// recounts the size. Returns (entries removed, size after).
    pub fn cleanup(&self, target: u64) -> (u64, u64) {
        let mut files = self.entries();
        files.sort_by_key(|(_, _, mtime)| *mtime);
        let mut size: u64 = files.iter().map(|(_, len, _)| len).sum();
        let mut removed = 0u64;
        for (path, len, _) in &files {
            if size <= target {
                break;
            }
            if fs::remove_file(path).is_ok() {
                size = size.saturating_sub(*len);
                removed += 1;
            }
        }
        let _ = stats::update(&self.root, |c| {
            c.0[Counter::Size as usize] = size;
            c.0[Counter::Evictions as usize] += removed;
        });
        (removed, size)
    }

    /// Removes every entry (keeps the counters, size becomes 0).
    pub fn clear(&self) -> u64 {
        let files = self.entries();
        let n = files.iter().filter(|(p, _, _)| fs::remove_file(p).is_ok()).count() as u64;
        let _ = stats::update(&self.root, |c| c.0[Counter::Size as usize] = 0);
        n
    }

    /// Every entry file: (path, length, mtime).
    fn entries(&self) -> Vec<(PathBuf, u64, SystemTime)> {
        let mut out = Vec::new();
        let Ok(dirs) = fs::read_dir(&self.root) else { return out };
        for d in dirs.filter_map(Result::ok) {
            if !d.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(files) = fs::read_dir(d.path()) else { continue };
            for f in files.filter_map(Result::ok) {
                if let Ok(m) = f.metadata() {
                    if m.is_file() {
                        out.push((
                            f.path(),
                            m.len(),
                            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        ));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_verify_and_evict() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path().to_path_buf(), 1 << 20);
        let k = *blake3::hash(b"k").as_bytes();
        assert!(store.get(&k, Kind::Result).expect("get").is_none());
        store.put(&k, Kind::Result, b"hello").expect("put");
        assert_eq!(store.get(&k, Kind::Result).expect("get").as_deref(), Some(&b"hello"[..]));
        // Flip one body byte: detected, removed, never served.
        let path = store.path(&k, Kind::Result);
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, bytes).expect("write");
        assert!(matches!(store.get(&k, Kind::Result), Err(StoreError::Corrupt(_))));
        assert!(!path.exists());
        // A tiny bound evicts the oldest entries.
        let small = Store::new(dir.path().to_path_buf(), 200);
        for i in 0..10u8 {
            small.put(blake3::hash(&[i]).as_bytes(), Kind::Result, &[i; 60]).expect("put");
        }
        let c = stats::read(dir.path());
        assert!(c.get(Counter::Evictions) > 0);
        assert!(c.get(Counter::Size) <= 200, "{c:?}");
    }

    /// Issue 14's put race: writers once shared a temporary name per process (`.tmp.<pid>.r`),
    /// so two concurrent puts in one worker could store one entry under the other's key.
    /// 10,000 puts from 16 threads into one directory (every key starts with the same byte):
    /// each key reads back its own body.
    #[test]
    fn concurrent_puts_with_colliding_prefixes_keep_their_own_bodies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::new(dir.path().to_path_buf(), 1 << 30);
        let key = |i: u32| {
            let mut k = *blake3::hash(&i.to_le_bytes()).as_bytes();
            k[0] = 0xab;
            k
        };
        let body = |i: u32| format!("entry {i}").into_bytes();
        std::thread::scope(|scope| {
            for t in 0..16u32 {
                let store = &store;
                scope.spawn(move || {
                    for i in (t..10_000).step_by(16) {
                        store.put(&key(i), Kind::Result, &body(i)).expect("put");
                    }
                });
            }
        });
        for i in 0..10_000u32 {
            let got = store.get(&key(i), Kind::Result).expect("get");
            assert_eq!(got, Some(body(i)), "key {i}");
        }
    }
}
