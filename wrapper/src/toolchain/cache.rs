//! The per-compiler manifest cache: a record keyed by the driver, the extras and PATH, checked
//! against `stat` stamps of every file it covers before it is trusted.

use super::*;

/// One thing a cache hit re-checks.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Check {
    /// `identity::stamp` of a file or directory (size, mtime, mtime_nsec, inode).
    Stat { path: String, stamp: String },
    /// A symlink and its target.
    Link { path: String, target: String },
}

/// What `<key>.manifest` holds.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CacheRecord {
    pub(super) version: u32,
    pub(super) key: Digest,
    pub(super) manifest: ToolchainManifest,
    pub(super) checks: Vec<Check>,
}

pub(super) fn cache_key(driver: &Path, extras: &[PathBuf], path_var: &OsStr) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(b"discomy toolchain cache\0");
    h.update(&CACHE_VERSION.to_le_bytes());
    for part in std::iter::once(driver.as_os_str())
        .chain(extras.iter().map(|e| e.as_os_str()))
        .chain(std::iter::once(path_var))
    {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_encoded_bytes());
    }
    h.finalize().into()
}

pub(super) fn read_cache(file: &Path, key: Digest) -> Option<Toolchain> {
    let bytes = fs::read(file).ok()?;
    let record: CacheRecord = postcard::from_bytes(&bytes).ok()?;
    if record.version != CACHE_VERSION || record.key != key || record.checks.is_empty() {
        return None;
    }
    for check in &record.checks {
        let fresh = match check {
            Check::Stat { path, stamp } => {
                crate::identity::stamp(Path::new(path)).is_some_and(|s| &s == stamp)
            }
            Check::Link { path, target } => {
                fs::read_link(path).is_ok_and(|t| t.as_os_str() == OsStr::new(target))
            }
        };
        if !fresh {
            tracing::debug!(cache = %file.display(), ?check, "toolchain cache stale");
            return None;
        }
    }
    record.manifest.validate().ok()?;
    let sources = sources_of(&record.manifest);
    Some(Toolchain { manifest: record.manifest, sources })
}

/// Writes the record atomically; a cache we cannot write only costs speed.
pub(super) fn write_cache(file: &Path, record: &CacheRecord) {
    let Ok(bytes) = postcard::to_stdvec(record) else { return };
    let Some(dir) = file.parent() else { return };
    if let Err(err) = write_atomically(dir, file, &bytes) {
        tracing::debug!(cache = %file.display(), %err, "cannot write toolchain cache");
    }
}

/// Writes `bytes` to `file` in `dir` (made if missing), atomically.
pub(crate) fn write_atomically(dir: &Path, file: &Path, bytes: &[u8]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    discomy_protocol::plumbing::write_atomically(file, bytes)
}
