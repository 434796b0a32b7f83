//! Where the wrapper keeps its per-user state, and the stat stamps that validate cached facts.
//!
//! The compiler identity itself is the digest of the toolchain manifest (see
//! [`crate::toolchain`]); this module only says where caches live and how a file is stamped
//! (size, mtime, inode) so a cached manifest can be trusted without re-reading ~100 MB.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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

/// `size mtime mtime_nsec inode` of `path` (following symlinks): changes when the file does.
pub(crate) fn stamp(path: &Path) -> Option<String> {
    let m = fs::metadata(path).ok()?;
    Some(format!("{} {} {} {}", m.size(), m.mtime(), m.mtime_nsec(), m.ino()))
}
