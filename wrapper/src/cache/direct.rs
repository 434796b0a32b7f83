//! Direct mode: a manifest keyed by the compiler, the arguments and the source's content, listing
//! for each known result every file the preprocessor read with its content digest, so a hit needs
//! no preprocessor run (ccache's direct mode).
//!
//! The include list is the include scanner's (every file the compile can open, digested while
//! scanning), or, where the scanner gave up, the linemarkers of the miss's `-E -fdirectives-only`
//! output.
//! A manifest entry is recorded only when every file is older than the compile's start (a file
//! changing under the compile could otherwise be recorded with the wrong content) and the unit
//! uses no `__DATE__`/`__TIME__`/`__TIMESTAMP__`; entries whose unit depends on the working
//! directory record it and match only there.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How many results one manifest remembers (most recent last).
const MAX_ENTRIES: usize = 32;

/// One file the preprocessor read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// The path as gcc opened it (relative to the working directory, or absolute).
    pub path: String,
    /// Its size, a cheap first check.
    pub size: u64,
    /// blake3 of its content.
    pub digest: [u8; 32],
}

/// One known result for a manifest's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The working directory this entry is valid in, when the unit depended on it.
    pub cwd: Option<String>,
    /// Every file read, with its content.
    pub files: Vec<FileDigest>,
    /// The preprocessed key of the result.
    pub result: [u8; 32],
}

/// The manifest stored under a direct key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Known results, oldest first.
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Decodes a verified manifest body; `None` if it does not parse.
    pub fn decode(body: &[u8]) -> Option<Manifest> {
        postcard::from_bytes(body).ok()
    }

    /// Encodes for storing.
    pub fn encode(&self) -> Option<Vec<u8>> {
        postcard::to_stdvec(self).ok()
    }

    /// The result key of the most recent entry whose files all still have the recorded content.
    pub fn lookup(&self, cwd: &str) -> Option<[u8; 32]> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.cwd.as_deref().is_none_or(|c| c == cwd) && e.files.iter().all(unchanged))
            .map(|e| e.result)
    }

    /// Adds (or refreshes) an entry, keeping at most [`MAX_ENTRIES`].
    pub fn add(&mut self, entry: ManifestEntry) {
        self.entries.retain(|e| e.files != entry.files || e.cwd != entry.cwd);
        self.entries.push(entry);
        if self.entries.len() > MAX_ENTRIES {
            let extra = self.entries.len() - MAX_ENTRIES;
            self.entries.drain(..extra);
        }
    }
}

fn unchanged(f: &FileDigest) -> bool {
    match std::fs::metadata(&f.path) {
        Ok(m) if m.is_file() && m.len() == f.size => {
            std::fs::read(&f.path).is_ok_and(|b| blake3::hash(&b).as_bytes() == &f.digest)
        }
        _ => false,
    }
}

/// The files the preprocessor entered, from the linemarkers of `-E` output (`# N "path" 1…`),
/// without gcc's pseudo-files. `None` when a name is escaped (we would not reopen it exactly).
pub fn included_files(unit: &[u8]) -> Option<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for line in unit.split(|&c| c == b'\n') {
        if !line.starts_with(b"# ") {
            continue;
        }
        let Some(q1) = line.iter().position(|&c| c == b'"') else { continue };
        let rest = &line[q1 + 1..];
        let Some(q2) = rest.iter().rposition(|&c| c == b'"') else { continue };
        let name = &rest[..q2];
        if name.contains(&b'\\') {
            return None;
        }
        let name = std::str::from_utf8(name).ok()?;
        if name.starts_with('<') || name.ends_with("//") || name.is_empty() {
            continue;
        }
        out.insert(name.to_string());
    }
    Some(out)
}

/// The files a manifest entry will list, as the miss found them.
pub enum ManifestFiles {
    /// Names from the linemarkers of the preprocessed unit, still to be read and digested.
    Names(BTreeSet<String>),
    /// The include scanner's files, already read and digested (paths under the working
    /// directory relative to it).
    Known(Vec<FileDigest>),
    /// Nothing usable (a name the linemarkers escape).
    None,
}

impl ManifestFiles {
    /// The entry's files, if every one is settled: older than `start`, the second the call
    /// began (a file changing under the compile could otherwise be recorded with the wrong
    /// content).
    pub fn digests(&self, start: SystemTime) -> Option<Vec<FileDigest>> {
        match self {
            ManifestFiles::Names(names) => digest_files(names, start),
            ManifestFiles::Known(files) => {
                let start_s = seconds(start)?;
                let same =
                    |f: &FileDigest| settled(&f.path, start_s).is_some_and(|len| len == f.size);
                files.iter().all(same).then(|| files.clone())
            }
            ManifestFiles::None => None,
        }
    }
}

/// Digests every file for a manifest entry. `None` when a file is not [`settled`].
fn digest_files(files: &BTreeSet<String>, start: SystemTime) -> Option<Vec<FileDigest>> {
    let start_s = seconds(start)?;
    let mut out = Vec::with_capacity(files.len());
    for path in files {
        settled(path, start_s)?;
        let bytes = std::fs::read(path).ok()?;
        out.push(FileDigest {
            path: path.clone(),
            size: bytes.len() as u64,
            digest: *blake3::hash(&bytes).as_bytes(),
        });
    }
    Some(out)
}

/// `start` in whole seconds since the epoch, as file times are compared.
fn seconds(start: SystemTime) -> Option<i64> {
    i64::try_from(start.duration_since(UNIX_EPOCH).ok()?.as_secs()).ok()
}

/// The size of `path` if it is a regular file last modified (mtime and ctime) before `start_s`,
/// the second the compile began.
fn settled(path: &str, start_s: i64) -> Option<u64> {
    let m = std::fs::metadata(path).ok()?;
    (m.is_file() && m.mtime() < start_s && m.ctime() < start_s).then_some(m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linemarkers_give_the_included_files() {
        let unit = b"# 0 \"a.c\"\n# 1 \"/w//\"\n# 0 \"<built-in>\"\n# 0 \"<command-line>\"\n\
            # 1 \"/usr/include/stdio.h\" 1 3 4\n# 5 \"a.c\" 2\n# 1 \"lua.h\" 1\nint x;\n";
        let files = included_files(unit).expect("parsed");
        let v: Vec<_> = files.iter().map(String::as_str).collect();
        assert_eq!(v, ["/usr/include/stdio.h", "a.c", "lua.h"]);
        assert!(included_files(b"# 1 \"a\\\"b.h\" 1\n").is_none());
    }
}
