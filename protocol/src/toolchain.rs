//! Toolchain packages: a manifest of every file a compiler needs, content-addressed.
//!
//! A toolchain is the closure of a compiler as the client runs it: driver, `cc1`/`cc1plus`/`lto1`,
//! `as`, the shared libraries they load, the dynamic loader, specs files and plugins. The manifest
//! lists each path (absolute, as on the client) with the blake3 digest of its content, or the
//! target of a symlink. The toolchain's identity is the digest of the encoded manifest, so equal
//! identities mean byte-equal trees. Blobs travel separately, one per frame.

use serde::{Deserialize, Serialize};

use crate::{Digest, ProtocolError};

/// One path in a toolchain tree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Absolute, normalised path (no `.`/`..` components), as on the client.
    pub path: String,
    /// What lives there.
    pub kind: EntryKind,
}

/// Kinds of tree entries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file with this content.
    File {
        /// blake3 of the content.
        digest: Digest,
        /// Length in bytes.
        size: u64,
        /// Whether it is executable (mode 0755 rather than 0644).
        executable: bool,
    },
    /// A symbolic link.
    Symlink {
        /// The link's target, as stored in the link.
        target: String,
    },
    /// A directory (only needed for empty ones; parents are implied).
    Dir,
}

/// Everything needed to run one compiler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolchainManifest {
    /// Human-readable description, e.g. `gcc 12 x86_64-linux-gnu`.
    pub name: String,
    /// Absolute path of the driver inside the tree.
    pub driver: String,
    /// Entries sorted by path, without duplicates.
    pub entries: Vec<TreeEntry>,
}

impl ToolchainManifest {
    /// The toolchain identity: blake3 of the postcard encoding.
    pub fn digest(&self) -> Digest {
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        Digest::of(&bytes)
    }

    /// Total bytes of file content (saturating: the sizes are what the sender claims).
    pub fn content_size(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::File { size, .. } => size,
                _ => 0,
            })
            .fold(0, u64::saturating_add)
    }

    /// Digests of every file's content, without duplicates.
    pub fn blobs(&self) -> Vec<Digest> {
        let mut out: Vec<Digest> = self
            .entries
            .iter()
            .filter_map(|e| match e.kind {
                EntryKind::File { digest, .. } => Some(digest),
                _ => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether `path` is a regular file in this tree.
    pub fn has_file(&self, path: &str) -> bool {
        self.entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .is_ok_and(|i| matches!(self.entries[i].kind, EntryKind::File { .. }))
    }

    /// Checks the invariants a receiver relies on: absolute normalised paths, sorted and unique,
    /// the driver present. A tree built from a manifest that passes cannot escape its root.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let bad = |why: String| Err(ProtocolError::Malformed(format!("toolchain manifest: {why}")));
        for pair in self.entries.windows(2) {
            if pair[0].path >= pair[1].path {
                return bad(format!("entries not sorted/unique at {}", pair[1].path));
            }
        }
        for e in &self.entries {
            if !is_normal_absolute(&e.path) {
                return bad(format!("path {:?} is not absolute and normalised", e.path));
            }
            if let EntryKind::Symlink { target } = &e.kind {
                if target.is_empty() || target.contains('\0') {
                    return bad(format!("symlink {:?} has an empty target", e.path));
                }
            }
        }
        if !self.has_file(&self.driver) {
            return bad(format!("driver {} is not a file in the tree", self.driver));
        }
        Ok(())
    }
}

/// `/a/b/c` with no empty, `.` or `..` components.
pub fn is_normal_absolute(path: &str) -> bool {
    path.starts_with('/')
        && path.len() > 1
        && !path.contains('\0')
        && path[1..].split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &[u8]) -> TreeEntry {
        TreeEntry {
            path: path.into(),
            kind: EntryKind::File {
                digest: Digest::of(data),
                size: data.len() as u64,
                executable: true,
            },
        }
    }

    #[test]
    fn digest_covers_content_and_validation_rejects_escapes() {
        let m = ToolchainManifest {
            name: "t".into(),
            driver: "/usr/bin/gcc".into(),
            entries: vec![file("/usr/bin/as", b"as"), file("/usr/bin/gcc", b"gcc")],
        };
        m.validate().unwrap();
        let mut other = m.clone();
        other.entries[0] = file("/usr/bin/as", b"as2");
        assert_ne!(m.digest(), other.digest());
        assert_eq!(m.blobs().len(), 2);
        for bad in ["usr/bin/x", "/usr/../etc/passwd", "/usr//x", "/./x", "/"] {
            let mut b = m.clone();
            b.entries.push(file(bad, b"x"));
            b.entries.sort();
            assert!(b.validate().is_err(), "{bad}");
        }
        let mut no_driver = m.clone();
        no_driver.driver = "/usr/bin/cc".into();
        assert!(no_driver.validate().is_err());
    }
}
