//! final_aggregator: a batch whose builds all succeeded becomes a published, signed, verifiable
//! package repository.
//!
//! - [`publish`]: the artefacts' RPMs join the repository `REPOS_ROOT/NAME`: a new generation is
//!   built beside the current one (previous packages hard-linked, new ones copied from the blob
//!   store, checked and signed with `rpmsign`), `createrepo_c` makes its metadata, `gpg` signs
//!   `repomd.xml`, a manifest records every file's sha256, and one `rename(2)` of a symlink
//!   switches readers to it.
//! - [`verify`]: re-checks a published repository against its manifest, `repomd.xml`'s checksums
//!   and the signatures; [`Report`] names missing, changed, unsigned and unexpected files.
//! - [`record_verify`]: the result of a verify, kept beside the repository (`NAME.verify.json`)
//!   for the web UI's repositories page ([`read_record`]).
//! - [`sync`]: mirrors a published repository to a directory (same atomic switch) or an rsync
//!   target (packages first, metadata last).
//!
//! # Layout
//!
//! ```text
//! REPOS_ROOT/NAME            -> NAME.d/000007      (symlink, replaced by rename(2))
//! REPOS_ROOT/NAME.lock       (flock: one publisher of NAME at a time)
//! REPOS_ROOT/NAME.verify.json  the last verify's result (`discomy repo verify`)
//! REPOS_ROOT/NAME.d/000007/  Packages/*.rpm       binary RPMs, signed
//!                            SRPMS/*.src.rpm      source RPMs, signed
//!                            repodata/            createrepo_c's metadata, repomd.xml.asc
//!                            RPM-GPG-KEY-discomy  the signing key's public half
//!                            discomy-manifest.json
//! REPOS_ROOT/NAME.d/.building-000008-PID/         the next generation while it is made
//! ```
//!
//! A generation is never modified once its directory has its final name. Readers that resolved
//! `NAME` before a switch keep reading the old generation, which stays until it is one of more than
//! [`RepoConfig::keep_generations`] old ones. Every build ever published stays in the repository
//! (dnf picks the newest EVR; older ones remain for downgrades and for `verify`); an artefact with
//! the same file name as a published one (a rebuild of the same NVR) replaces it.
//!
//! Artefact names, blobs and the repository name are treated as hostile: plain names only, blobs
//! opened without following links and re-hashed, nothing written outside `REPOS_ROOT`.

mod cmd;
mod manifest;
mod publish;
mod record;
mod sign;
mod sync;
#[cfg(test)]
mod tests;
mod verify;
pub mod watch;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use manifest::{FileKind, MANIFEST_NAME, Manifest, ManifestEntry, PUBLIC_KEY_NAME};
pub use publish::{Published, publish};
pub use record::{
    MAX_PROBLEMS, RECORD_SUFFIX, Verdict, VerifyRecord, read_record, record_path, record_verify,
    who, write_record,
};
pub use sync::{SyncDest, SyncReport, sync};
pub use verify::{Problem, ProblemKind, Report, verify};

/// What went wrong while publishing, verifying or syncing.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// An input (artefact, repository name, configuration) is refused.
    #[error("refused: {0}")]
    Refused(String),
    /// A blob is not what the artefact list says.
    #[error("artefact {name}: {message}")]
    BadBlob {
        /// The artefact's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A program the aggregator needs is not installed.
    #[error("{0} is not installed (scripts/setup-debian.sh installs it)")]
    ToolMissing(String),
    /// A program failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// The program and its first arguments.
        command: String,
        /// Its exit status.
        status: String,
        /// The tail of its standard error.
        stderr: String,
    },
    /// The published repository is damaged in a way that stops publishing (run `verify`).
    #[error("published repository damaged: {0}")]
    Damaged(String),
    /// The manifest cannot be read.
    #[error("manifest {path}: {message}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The record of a repository's last verify cannot be read (or written).
    #[error("verify record {path}: {message}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl AggregatorError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AggregatorError {
        let path = path.into();
        move |source| AggregatorError::Io { path, source }
    }
}

/// How packages and metadata are signed. The secret key is in a GnuPG home (`gnupg_home`) or an
/// armored secret key file (`key_file`, imported into a private, temporary GnuPG home); its
/// passphrase, if any, is read by gpg from `passphrase_file`, never passed on a command line.
///
/// ```toml
/// [ops.signing]
/// key_file = "/etc/discomy/secrets/repo-signing.asc"
/// key_id = "0123456789ABCDEF0123456789ABCDEF01234567"
/// passphrase_file = "/etc/discomy/secrets/repo-signing.pass"
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// A GnuPG home holding the secret key.
    #[serde(default)]
    pub gnupg_home: Option<PathBuf>,
    /// An armored secret key file (when there is no `gnupg_home`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The key: fingerprint, key id or user id (`rpmsign`'s `_gpg_name`, gpg's `--local-user`).
    pub key_id: String,
    /// A file holding the key's passphrase (first line).
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
}

/// Where repositories are published and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// The directory holding every repository (`NAME`, `NAME.d/`, `NAME.lock`).
    pub repos_root: PathBuf,
    /// Old generations kept after a switch, for readers still on them (at least 1).
    #[serde(default = "default_keep")]
    pub keep_generations: usize,
    /// The signing key.
    pub signing: SigningConfig,
}

fn default_keep() -> usize {
    3
}

/// One file a job produced, as the coordinator's blob store holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artefact {
    /// Its file name as the builder reported it (`lua-5.4.6-1.el9.x86_64.rpm`).
    pub name: String,
    /// The blob's path (`state_dir/blobs/xx/HEX`).
    pub blob_path: PathBuf,
    /// blake3 of its content, 64 lowercase hex digits.
    pub blake3: String,
    /// Its size in bytes.
    pub size: u64,
    /// The job that built it.
    pub job: u64,
}

/// Whether `name` is a plain file name an artefact may have: the API's plain name
/// (`discomy_protocol::ops::is_plain_file_name`), and not hidden (no leading `.`).
pub fn plain_name(name: &str) -> bool {
    discomy_protocol::ops::is_plain_file_name(name) && !name.starts_with('.')
}

/// Whether `name` may name a repository (`el9-x86_64`): letters, digits, `.`, `_`, `-`, not
/// starting with `.` or `-`, at most 100 bytes.
pub fn repo_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}
