//! Writing a file so that readers see the old content or the new, never a part: a temporary
//! file in the same directory, named uniquely per writer (process, counter, random), created with
//! `O_EXCL` (a file or link someone made first is never followed or reused), then renamed over
//! the target. With [`WriteOptions::durable`] the file is fsynced before the rename and the directory
//! after it, for state that must survive a crash.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// How to write.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Permission bits of the new file, whatever the umask; default 0o644 less the umask.
    pub mode: Option<u32>,
    /// fsync the file before the rename and its directory after it.
    pub durable: bool,
    /// Never replace an existing `path`: the new file is linked in place, and an existing one
    /// makes the write fail with [`io::ErrorKind::AlreadyExists`] (put-if-absent).
    pub keep_existing: bool,
}

/// Writes `bytes` to `path` atomically (no fsync: outputs and caches, which are rebuilt when
/// lost).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomically_with(path, &[bytes], WriteOptions::default())
}

/// Writes the concatenation of `parts` to `path` atomically, as `how` says.
pub fn write_atomically_with(path: &Path, parts: &[&[u8]], how: WriteOptions) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no file", path.display()))
    })?;
    let (tmp, mut file) = create_temp(&dir, name, how.mode.unwrap_or(0o644))?;
    let written = (|| {
        if let Some(mode) = how.mode {
            // Exactly these bits, whatever the umask (blobs must be readable by sandboxed users).
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        for part in parts {
            file.write_all(part)?;
        }
        if how.durable {
            file.sync_all()?;
        }
        drop(file);
        if how.keep_existing {
            // link(2) fails on an existing target, atomically; the temporary name goes after.
            std::fs::hard_link(&tmp, path)?;
            std::fs::remove_file(&tmp)
        } else {
            std::fs::rename(&tmp, path)
        }
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if how.durable {
        File::open(&dir)?.sync_all()?;
    }
    Ok(())
}

/// A new temporary file next to `name` in `dir`: created exclusively, under a name no other
/// writer (thread, process, host sharing the directory) picks.
pub fn create_temp(dir: &Path, name: &std::ffi::OsStr, mode: u32) -> io::Result<(PathBuf, File)> {
    for _ in 0..16 {
        let tmp = dir.join(unique_temp_name(name));
        match OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free temporary name"))
}

/// `.NAME.PID.COUNTER.RANDOM.tmp`: unique per writer; the leading dot keeps it out of globs.
pub fn unique_temp_name(name: &std::ffi::OsStr) -> OsString {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    let mut out = OsString::from(".");
    out.push(name);
    out.push(format!(".{}.{n}.{:016x}.tmp", std::process::id(), h.finish()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("discomy-plumbing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("f");
        write_atomically(&path, b"one").expect("write");
        write_atomically_with(
            &path,
            &[b"tw", b"o"],
            WriteOptions { mode: Some(0o600), durable: true, keep_existing: false },
        )
        .expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let left: Vec<_> = std::fs::read_dir(&dir).expect("list").collect();
        assert_eq!(left.len(), 1, "temporary files left: {left:?}");
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    #[test]
    fn names_differ_between_writers() {
        let a = unique_temp_name("x".as_ref());
        let b = unique_temp_name("x".as_ref());
        assert_ne!(a, b);
        let threads: Vec<_> =
            (0..8).map(|_| std::thread::spawn(|| unique_temp_name("x".as_ref()))).collect();
        let names: std::collections::BTreeSet<_> =
            threads.into_iter().map(|t| t.join().expect("thread")).collect();
        assert_eq!(names.len(), 8);
    }

    #[test]
    fn a_pre_made_link_at_the_temporary_name_is_not_followed() {
        let dir = std::env::temp_dir().join(format!("discomy-plumbing-l-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"keep").expect("victim");
        let (tmp, _file) = create_temp(&dir, "t".as_ref(), 0o600).expect("temp");
        std::fs::remove_file(&tmp).expect("rm");
        std::os::unix::fs::symlink(&victim, &tmp).expect("link");
        let again = OpenOptions::new().write(true).create_new(true).open(&tmp);
        assert!(again.is_err(), "create_new followed a link");
        assert_eq!(std::fs::read(&victim).expect("read"), b"keep");
        std::fs::remove_dir_all(&dir).expect("clean");
    }
}
