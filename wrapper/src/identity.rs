//! Compiler identity: a blake3 digest over the compiler's parts, cached across calls.
//!
//! identity = blake3 over the driver binary, `cc1`, `cc1plus`, `as`, and the `-dumpmachine` and
//! `-dumpversion` output. Two hosts compile a unit only with identical compilers. Computing it
//! reads ~70 MB, so it is cached in a small file keyed by the driver's canonical path and
//! validated on every call by `stat` of each part (size, mtime, inode).

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use discomy_protocol::Digest;

/// Why an identity could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A part could not be read, or the driver could not be run.
    #[error("failed to identify compiler {path}: {source}")]
    Io {
        /// The file or program involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Returns the identity of `driver`, using and refreshing the on-disk cache.
pub fn compiler_identity(driver: &Path, path_var: &OsStr) -> Result<Digest, IdentityError> {
    let canonical = driver
        .canonicalize()
        .map_err(|source| IdentityError::Io { path: driver.to_path_buf(), source })?;
    let cache = cache_file(&canonical);
    if let Some(digest) = cache.as_deref().and_then(read_cached) {
        return Ok(digest);
    }
    let (digest, parts) = compute(&canonical, path_var)?;
    if let Some(cache) = cache {
        write_cached(&cache, digest, &parts);
    }
    Ok(digest)
}

/// Computes the identity without the cache; also returns the parts it hashed.
pub fn compute(driver: &Path, path_var: &OsStr) -> Result<(Digest, Vec<PathBuf>), IdentityError> {
    let mut parts = vec![driver.to_path_buf()];
    for prog in ["cc1", "cc1plus", "as"] {
        let answer = query(driver, path_var, &format!("-print-prog-name={prog}"))?;
        let candidate = if answer.contains('/') {
            Some(PathBuf::from(&answer))
        } else {
            crate::invocation::find_on_path(&answer, path_var, None)
        };
        if let Some(path) = candidate.and_then(|p| p.canonicalize().ok()) {
            if !parts.contains(&path) {
                parts.push(path);
            }
        }
    }
    let machine = query(driver, path_var, "-dumpmachine")?;
    let version = query(driver, path_var, "-dumpversion")?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"discomy compiler identity v1\0");
    for part in &parts {
        let file = fs::File::open(part)
            .map_err(|source| IdentityError::Io { path: part.clone(), source })?;
        let name = part.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        hasher.update(name.as_bytes());
        hasher.update(b"\0");
        hasher
            .update_reader(file)
            .map_err(|source| IdentityError::Io { path: part.clone(), source })?;
    }
    for text in [&machine, &version] {
        hasher.update(text.as_bytes());
        hasher.update(b"\0");
    }
    Ok((hasher.finalize().into(), parts))
}

fn query(driver: &Path, path_var: &OsStr, flag: &str) -> Result<String, IdentityError> {
    let out = Command::new(driver)
        .arg(flag)
        .env("PATH", path_var)
        .env(crate::ENV_SAFEGUARD, "1")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|source| IdentityError::Io { path: driver.to_path_buf(), source })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The cache directory: `DISCOMY_CACHE_DIR`, else `$XDG_CACHE_HOME/discomy`, else
/// `$HOME/.cache/discomy`, else a per-user directory under the temp dir.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DISCOMY_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("discomy");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".cache/discomy");
    }
    std::env::temp_dir().join(format!("discomy-{}", nix::unistd::getuid()))
}

fn cache_file(canonical: &Path) -> Option<PathBuf> {
    let key = blake3::hash(canonical.as_os_str().as_encoded_bytes());
    Some(cache_dir().join("identity").join(format!("{}.txt", &key.to_hex()[..32])))
}

/// `size mtime mtime_nsec inode` of `path` (following symlinks): changes when the file does.
pub(crate) fn stamp(path: &Path) -> Option<String> {
    let m = fs::metadata(path).ok()?;
    Some(format!("{} {} {} {}", m.size(), m.mtime(), m.mtime_nsec(), m.ino()))
}

fn read_cached(cache: &Path) -> Option<Digest> {
    let text = fs::read_to_string(cache).ok()?;
    let mut lines = text.lines();
    let digest = Digest::from_hex(lines.next()?)?;
    let mut any = false;
    for line in lines {
        let (stamped, path) = line.split_once('\t')?;
        if stamp(Path::new(path))? != stamped {
            return None;
        }
        any = true;
    }
    any.then_some(digest)
}

fn write_cached(cache: &Path, digest: Digest, parts: &[PathBuf]) {
    let mut text = format!("{digest}\n");
    for part in parts {
        let Some(stamped) = stamp(part) else { return };
        text.push_str(&format!("{stamped}\t{}\n", part.display()));
    }
    let Some(dir) = cache.parent() else { return };
    if fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(".tmp-{}", std::process::id()));
    // A cache we cannot write only costs speed: ignore failures.
    if fs::write(&tmp, text).is_ok() && fs::rename(&tmp, cache).is_err() {
        let _ = fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcc_identity_is_stable_and_cached() {
        let Some(gcc) = crate::invocation::find_on_path(
            "gcc",
            &std::env::var_os("PATH").unwrap_or_default(),
            None,
        ) else {
            return; // No gcc on this machine: nothing to identify.
        };
        let dir = std::env::temp_dir().join(format!("discomy-id-test-{}", std::process::id()));
        let path = std::env::var_os("PATH").unwrap_or_default();
        let (a, parts) = compute(&gcc.canonicalize().unwrap_or(gcc.clone()), &path).unwrap();
        assert!(parts.len() >= 3, "driver, cc1 and as expected: {parts:?}");
        let cache = dir.join("id.txt");
        write_cached(&cache, a, &parts);
        assert_eq!(read_cached(&cache), Some(a));
        let _ = fs::remove_dir_all(&dir);
    }
}
