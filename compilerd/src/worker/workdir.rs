//! The worker's work directory, where unit directories are made: private to the worker and
//! never one a local user prepared.
//!
//! By default it is a fresh directory with a random name under `/dev/shm` (or the temp dir),
//! made with `mkdir` (which fails on anything already there) and mode 0700. A directory given
//! with `--work-dir` is made the same way when missing; an existing one must be a real
//! directory (not a link) owned by the worker's user or root, and writable by no one else
//! unless sticky. A worker running as root would otherwise write and chown through whatever a
//! local user put at a predictable path.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Name of a worker's default work directory, before its pid.
pub const PREFIX: &str = "discomy-worker-";

/// Why a work directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WorkDirError {
    /// Making or inspecting it failed.
    #[error("work directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// It exists and is not a directory this worker alone controls.
    #[error("work directory {path} is refused: {why}; give a private directory with --work-dir")]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// A work directory ready for units: its path, and whether the worker made it (and removes it
/// when it stops).
#[derive(Debug, Clone)]
pub struct WorkDir {
    /// The directory.
    pub path: PathBuf,
    /// Made by this worker.
    pub owned: bool,
}

/// Prepares `given` (`--work-dir`), or a fresh default one (see the module header).
pub fn prepare(given: Option<&Path>) -> Result<WorkDir, WorkDirError> {
    match given {
        Some(path) => match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                check_existing(path, &meta)?;
                Ok(WorkDir { path: path.to_path_buf(), owned: false })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io(parent))?;
                }
                make_private(path)?;
                Ok(WorkDir { path: path.to_path_buf(), owned: true })
            }
            Err(e) => Err(io(path)(e)),
        },
        None => {
            let parent = default_parent();
            // Directories that killed workers left behind go (they hold memory in /dev/shm).
            crate::sandbox::stale::remove_dirs_of_dead_pids(&parent, PREFIX);
            for _ in 0..8 {
                let path = parent.join(default_name());
                match make_private(&path) {
                    Err(WorkDirError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                    made => return made.map(|()| WorkDir { path, owned: true }),
                }
            }
            Err(WorkDirError::Unsafe { path: parent, why: "every fresh name was taken".into() })
        }
    }
}

/// `/dev/shm` when it is a writable directory (a tmpfs: a unit's directory, tree list and
/// outputs are made, read and removed in microseconds, against up to milliseconds each on a
/// disk file system mounted with `discard`), else the system temp dir.
fn default_parent() -> PathBuf {
    use nix::unistd::{AccessFlags, access};
    let shm = Path::new("/dev/shm");
    let writable = shm.is_dir() && access(shm, AccessFlags::W_OK | AccessFlags::X_OK).is_ok();
    if writable { shm.to_path_buf() } else { std::env::temp_dir() }
}

/// `discomy-worker-<pid>-<random>`: the pid for the stale-directory sweep, the random part so
/// that no one can make it first.
fn default_name() -> String {
    let nonce = discomy_protocol::handshake::random_nonce();
    let tail = discomy_protocol::digest::hex(&nonce[..8]);
    format!("{PREFIX}{}-{tail}", std::process::id())
}

fn make_private(path: &Path) -> Result<(), WorkDirError> {
    std::fs::DirBuilder::new().mode(0o700).create(path).map_err(io(path))
}

fn check_existing(path: &Path, meta: &std::fs::Metadata) -> Result<(), WorkDirError> {
    let refuse = |why: String| Err(WorkDirError::Unsafe { path: path.to_path_buf(), why });
    if meta.file_type().is_symlink() {
        return refuse("it is a symbolic link".into());
    }
    if !meta.is_dir() {
        return refuse("it is not a directory".into());
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return refuse(format!("it belongs to uid {}, not to this worker's uid {me}", meta.uid()));
    }
    let mode = meta.permissions().mode();
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return refuse(format!("others may write to it (mode {:o})", mode & 0o7777));
    }
    Ok(())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WorkDirError + '_ {
    move |source| WorkDirError::Io { path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_fresh_and_swept_by_pid() {
        let (a, b) = (default_name(), default_name());
        assert_ne!(a, b);
        let pid = std::process::id().to_string();
        assert!(a.strip_prefix(PREFIX).is_some_and(|r| r.starts_with(&format!("{pid}-"))), "{a}");
    }

    #[test]
    fn prepared_and_foreign_directories() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let made = prepare(Some(&tmp.path().join("new/work"))).expect("a missing directory");
        assert!(made.owned);
        let mode = std::fs::metadata(&made.path).expect("made").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let again = prepare(Some(&made.path)).expect("our own directory");
        assert!(!again.owned, "an existing directory is not removed at exit");

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&made.path, &link).expect("symlink");
        assert!(matches!(prepare(Some(&link)), Err(WorkDirError::Unsafe { .. })));
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(matches!(prepare(Some(&open)), Err(WorkDirError::Unsafe { .. })));
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        assert!(matches!(prepare(Some(&file)), Err(WorkDirError::Unsafe { .. })));
    }
}
