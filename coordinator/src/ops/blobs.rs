//! Files the queue holds, named by their blake3: job sources (source RPMs, specs, tarballs) and
//! what builders upload (RPMs, build logs). An upload streams to a temporary file while it is
//! hashed and counted, is refused past its size limit or when its content is not the digest it
//! claims, and is renamed into place only after an fsync: nothing half-written or mislabelled is
//! ever visible, and memory stays bounded whatever a peer sends.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use discomy_protocol::ops::{BlobRef, is_blake3_hex};
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use super::OpsError;

/// The store: `DIR/xx/<64 hex digits>`, temporary files in `DIR/tmp/HOST-PID`, one directory
/// per coordinator process: several coordinators may share the directory (on shared storage,
/// with a PostgreSQL queue), and none may remove what another is writing.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
}

impl BlobStore {
    /// Opens the store at `dir`, creating it, and removes the temporary files that crashed
    /// coordinators of this host left (a process of another host is never judged from here).
    pub fn open(dir: &Path) -> io::Result<BlobStore> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().replace(['/', '-'], "_"))
            .unwrap_or_default();
        let tmp_root = dir.join("tmp");
        std::fs::create_dir_all(&tmp_root)?;
        for entry in std::fs::read_dir(&tmp_root)?.flatten() {
            let name = entry.file_name();
            let Some((of, pid)) = name.to_str().and_then(|n| n.rsplit_once('-')) else {
                continue;
            };
            // Not this process's own: another store of this process may be open on it.
            let dead = pid.parse::<u32>().is_ok_and(|pid| {
                pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists()
            });
            if of == host && dead {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        let tmp = tmp_root.join(format!("{host}-{}", std::process::id()));
        std::fs::create_dir_all(&tmp)?;
        Ok(BlobStore { dir: dir.to_path_buf(), tmp })
    }

    /// A directory of this process's own for scratch files that [`BlobStore::adopt`] takes
    /// (on the store's file system, so adopting is a rename).
    pub fn scratch(&self) -> &Path {
        &self.tmp
    }

    /// Takes the file at `path` (in [`BlobStore::scratch`]) as a blob: hashed, synced, renamed
    /// into place; returns its digest and size. Refused past `limit` bytes.
    pub fn adopt(&self, path: &Path, limit: u64) -> Result<(String, u64), OpsError> {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        if size > limit {
            let _ = std::fs::remove_file(path);
            return Err(OpsError::TooLarge(format!("{size} bytes; the limit is {limit}")));
        }
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        file.sync_all()?;
        let hex = hasher.finalize().to_hex().to_string();
        let final_path = self.path(&hex);
        std::fs::create_dir_all(final_path.parent().unwrap_or(&self.dir))?;
        std::fs::rename(path, &final_path)?;
        Ok((hex, size))
    }

    /// Where the blob `hex` lives (whether or not it exists). `hex` must be checked first.
    pub fn path(&self, hex: &str) -> PathBuf {
        self.dir.join(&hex[..2]).join(hex)
    }

    /// Whether the store holds `blob` with its size.
    pub fn has(&self, blob: &BlobRef) -> bool {
        is_blake3_hex(&blob.blake3)
            && std::fs::symlink_metadata(self.path(&blob.blake3))
                .is_ok_and(|m| m.is_file() && m.len() == blob.size)
    }

    /// Stores the stream's bytes as blob `hex`, refusing more than `limit` bytes, a size other
    /// than `size` when one is given, and content whose blake3 is not `hex`. Returns the size.
    pub async fn put<S, E>(
        &self,
        hex: &str,
        size: Option<u64>,
        limit: u64,
        mut body: S,
    ) -> Result<u64, OpsError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if !is_blake3_hex(hex) {
            return Err(OpsError::BadRequest(format!("{hex:?} is not a blake3 digest")));
        }
        if let Some(size) = size {
            if size > limit {
                return Err(OpsError::TooLarge(format!("{size} bytes; the limit is {limit}")));
            }
        }
        let final_path = self.path(hex);
        let tmp = self
            .tmp
            .join(discomy_protocol::plumbing::fs::unique_temp_name(std::ffi::OsStr::new(hex)));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut hasher = blake3::Hasher::new();
            let mut total = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| OpsError::BadRequest(format!("upload: {e}")))?;
                total += chunk.len() as u64;
                if total > limit || size.is_some_and(|s| total > s) {
                    return Err(OpsError::TooLarge(format!(
                        "more than {} bytes",
                        size.unwrap_or(limit).min(limit)
                    )));
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            if size.is_some_and(|s| s != total) {
                return Err(OpsError::BadRequest(format!(
                    "{total} bytes arrived, {} announced",
                    size.unwrap_or_default()
                )));
            }
            let got = hasher.finalize().to_hex();
            if got.as_str() != hex {
                return Err(OpsError::BadRequest(format!(
                    "content is {got}, not the announced {hex}"
                )));
            }
            file.sync_all().await?;
            drop(file);
            tokio::fs::create_dir_all(final_path.parent().unwrap_or(&self.dir)).await?;
            tokio::fs::rename(&tmp, &final_path).await?;
            Ok(total)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures_util::stream::iter(
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn stores_only_what_matches_its_digest_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let hex = blake3::hash(b"hello world").to_hex().to_string();
        let blob = BlobRef { name: "x".into(), blake3: hex.clone(), size: 11 };

        let wrong = blake3::hash(b"other").to_hex().to_string();
        let err = store.put(&wrong, None, 100, chunks(&[b"hello ", b"world"])).await;
        assert!(matches!(err, Err(OpsError::BadRequest(_))), "{err:?}");
        let err = store.put(&hex, None, 5, chunks(&[b"hello ", b"world"])).await;
        assert!(matches!(err, Err(OpsError::TooLarge(_))), "{err:?}");
        let err = store.put(&hex, Some(20), 100, chunks(&[b"hello ", b"world"])).await;
        assert!(matches!(err, Err(OpsError::BadRequest(_))), "{err:?}");
        assert!(!store.has(&blob));

        assert_eq!(
            store.put(&hex, Some(11), 100, chunks(&[b"hello ", b"world"])).await.unwrap(),
            11
        );
        assert!(store.has(&blob));
        assert!(!store.has(&BlobRef { size: 12, ..blob.clone() }));
        assert_eq!(std::fs::read(store.path(&hex)).unwrap(), b"hello world");
        assert_eq!(std::fs::read_dir(&store.tmp).unwrap().count(), 0, "no leftovers");
    }

    #[test]
    fn opening_spares_the_temporary_files_of_other_live_coordinators() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        let store = BlobStore::open(dir.path()).unwrap();
        let mine = store.tmp.join(".x.tmp");
        std::fs::write(&mine, b"being written").unwrap();
        // Another coordinator (on another host, or this one: pid 1 is alive) shares the store.
        let host = store.tmp.file_name().unwrap().to_str().unwrap().rsplit_once('-').unwrap().0;
        let other_host = tmp.join("elsewhere-4242");
        let live = tmp.join(format!("{host}-1"));
        let dead = tmp.join(format!("{host}-{}", u32::MAX - 1));
        for d in [&other_host, &live, &dead] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join(".y.tmp"), b"partial").unwrap();
        }
        let again = BlobStore::open(dir.path()).unwrap();
        assert!(other_host.exists() && live.exists(), "live writers' files stay");
        assert!(!dead.exists(), "a dead coordinator's leftovers go");
        assert!(mine.exists(), "another store of this process keeps its files");
        assert!(again.tmp.exists());
    }
}
