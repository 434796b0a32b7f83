//! The manifest every generation carries (`discomy-manifest.json`: each file's sha256, size, the
//! batch and job it came from, whether it is signed), read back with bounds; `repomd.xml`'s
//! `<data>` entries; sha256 of files; walking a generation without following links.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::AggregatorError;

/// The manifest's file name, at the top of a generation.
pub const MANIFEST_NAME: &str = "discomy-manifest.json";
/// The signing key's public half, at the top of a generation (for `gpgkey=`).
pub const PUBLIC_KEY_NAME: &str = "RPM-GPG-KEY-discomy";
/// The manifest's format.
pub const FORMAT: u32 = 1;
/// A manifest larger than this is refused.
const MAX_MANIFEST_BYTES: u64 = 256 << 20;
/// A manifest with more files than this is refused.
const MAX_ENTRIES: usize = 2_000_000;
/// `repomd.xml` larger than this is refused.
const MAX_REPOMD_BYTES: u64 = 4 << 20;

/// What a published file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A binary RPM (`Packages/`).
    Package,
    /// A source RPM (`SRPMS/`).
    SourcePackage,
    /// createrepo_c's output (`repodata/`), `repomd.xml` included.
    Metadata,
    /// `repodata/repomd.xml.asc`.
    MetadataSignature,
    /// The public key.
    PublicKey,
}

/// One file of a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Its path inside the generation (`Packages/lua-5.4.6-1.el9.x86_64.rpm`).
    pub path: String,
    /// What it is.
    pub kind: FileKind,
    /// sha256 of its content, 64 lowercase hex digits.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// The batch that published it.
    pub batch: String,
    /// The job that built it (packages only).
    #[serde(default)]
    pub job: Option<u64>,
    /// blake3 of the artefact as the builder uploaded it, before signing (packages only).
    #[serde(default)]
    pub uploaded_blake3: Option<String>,
    /// Whether it carries a signature (RPMs) or is covered by one (`repomd.xml`).
    pub signed: bool,
}

/// A generation's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The repository's name.
    pub repository: String,
    /// The generation's number.
    pub generation: u64,
    /// The batch whose publication made it.
    pub batch: String,
    /// When it was made (seconds since the epoch).
    pub created_unix: u64,
    /// The signing key, as configured.
    pub key_id: String,
    /// Every file of the generation but the manifest itself, sorted by path.
    pub files: Vec<ManifestEntry>,
}

impl Manifest {
    /// Reads and checks `generation/discomy-manifest.json` (bounded; paths must be relative and
    /// plain; hashes well-formed).
    pub fn read(generation: &Path) -> Result<Manifest, AggregatorError> {
        let path = generation.join(MANIFEST_NAME);
        let bad = |message: String| AggregatorError::Manifest { path: path.clone(), message };
        let file = open_nofollow(&path)?;
        let mut text = Vec::new();
        file.take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(AggregatorError::io(&path))?;
        if text.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(bad(format!("larger than {MAX_MANIFEST_BYTES} bytes")));
        }
        let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        if manifest.format != FORMAT {
            return Err(bad(format!("format {} (this version reads {FORMAT})", manifest.format)));
        }
        if manifest.files.len() > MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} files")));
        }
        for entry in &manifest.files {
            if !relative_path_ok(&entry.path) || entry.path == MANIFEST_NAME {
                return Err(bad(format!("bad path {:?}", entry.path)));
            }
            if !is_sha256_hex(&entry.sha256) {
                return Err(bad(format!("{}: bad sha256", entry.path)));
            }
        }
        Ok(manifest)
    }

    /// Writes the manifest into `generation` (fsynced).
    pub fn write(&self, generation: &Path) -> Result<(), AggregatorError> {
        let path = generation.join(MANIFEST_NAME);
        let text = serde_json::to_vec_pretty(self).map_err(|e| AggregatorError::Manifest {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write_synced(&path, &text)
    }

    /// The entry for `path`, if any.
    pub fn entry(&self, path: &str) -> Option<&ManifestEntry> {
        self.files.iter().find(|e| e.path == path)
    }
}

/// Writes `data` to a new file `path` and fsyncs it.
pub fn write_synced(path: &Path, data: &[u8]) -> Result<(), AggregatorError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(AggregatorError::io(path))?;
    file.write_all(data).map_err(AggregatorError::io(path))?;
    file.sync_all().map_err(AggregatorError::io(path))
}

/// Opens `path` for reading without following a final symlink.
pub fn open_nofollow(path: &Path) -> Result<std::fs::File, AggregatorError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(AggregatorError::io(path))
}

/// sha256 and size of the regular file `path` (not followed if it is a link).
pub fn sha256_file(path: &Path) -> Result<(String, u64), AggregatorError> {
    let mut file = open_nofollow(path)?;
    let meta = file.metadata().map_err(AggregatorError::io(path))?;
    if !meta.is_file() {
        return Err(AggregatorError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("not a regular file"),
        });
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(AggregatorError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    discomy_protocol::digest::hex(bytes)
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `path` is relative, made of plain components only, and not absurdly long.
pub fn relative_path_ok(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 1024
        && !path.contains('\0')
        && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

/// Every entry under `root` (relative paths; directories end without `/`), links not followed:
/// `(path, is_regular_file)`. Directories are not listed, only what they hold.
pub fn walk(root: &Path) -> Result<Vec<(String, bool)>, AggregatorError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for entry in std::fs::read_dir(&dir).map_err(AggregatorError::io(&dir))? {
            let entry = entry.map_err(AggregatorError::io(&dir))?;
            let kind = entry.file_type().map_err(AggregatorError::io(entry.path()))?;
            let path = rel.join(entry.file_name());
            if kind.is_dir() {
                stack.push(path);
            } else {
                out.push((path.to_string_lossy().into_owned(), kind.is_file()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// One `<data>` element of `repomd.xml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepomdData {
    /// `type="primary"`.
    pub data_type: String,
    /// `<location href="repodata/…"/>`.
    pub href: String,
    /// `<checksum type="sha256">` (lowercase); `None` for another checksum type.
    pub sha256: Option<String>,
    /// `<size>`, if given.
    pub size: Option<u64>,
}

/// Reads `repomd.xml` (bounded) and returns its `<data>` entries.
pub fn read_repomd(path: &Path) -> Result<Vec<RepomdData>, AggregatorError> {
    let bad = |message: &str| AggregatorError::Manifest {
        path: path.to_path_buf(),
        message: message.into(),
    };
    let mut text = String::new();
    open_nofollow(path)?
        .take(MAX_REPOMD_BYTES)
        .read_to_string(&mut text)
        .map_err(AggregatorError::io(path))?;
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("<data ") {
        let after = &rest[start..];
        let end = after.find("</data>").ok_or_else(|| bad("unterminated <data>"))?;
        let block = &after[..end];
        let data_type = attr(block, "data", "type").ok_or_else(|| bad("<data> without type"))?;
        let href = attr(block, "location", "href").ok_or_else(|| bad("<data> without location"))?;
        if !relative_path_ok(&href) {
            return Err(bad("<location href> is not a plain relative path"));
        }
        let sha256 = element(block, "checksum")
            .filter(|(open, _)| open.contains("type=\"sha256\""))
            .map(|(_, v)| v.trim().to_ascii_lowercase());
        let size = element(block, "size").and_then(|(_, v)| v.trim().parse().ok());
        out.push(RepomdData { data_type, href, sha256, size });
        rest = &after[end + "</data>".len()..];
    }
    if out.is_empty() {
        return Err(bad("no <data> entries"));
    }
    Ok(out)
}

/// The value of `name="…"` in the first `<tag …>` of `block`.
fn attr(block: &str, tag: &str, name: &str) -> Option<String> {
    let open = block.find(&format!("<{tag} "))?;
    let close = block[open..].find('>')? + open;
    let head = &block[open..close];
    let key = format!("{name}=\"");
    let at = head.find(&key)? + key.len();
    let len = head[at..].find('"')?;
    Some(unescape(&head[at..at + len]))
}

/// `(opening tag, text)` of the first `<tag …>text</tag>` of `block`.
fn element<'a>(block: &'a str, tag: &str) -> Option<(&'a str, &'a str)> {
    let open = block.find(&format!("<{tag}"))?;
    let gt = block[open..].find('>')? + open;
    let close = block[gt..].find(&format!("</{tag}>"))? + gt;
    Some((&block[open..gt], &block[gt + 1..close]))
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn repomd_entries_are_parsed() -> Result<(), AggregatorError> {
        let dir = tempfile::tempdir().map_err(AggregatorError::io("tempdir"))?;
        let path = dir.path().join("repomd.xml");
        let xml = r#"<?xml version="1.0"?><repomd><revision>1</revision>
<data type="primary"><checksum type="sha256">ABCD</checksum><open-checksum type="sha256">x</open-checksum>
<location href="repodata/abcd-primary.xml.gz"/><size>12</size></data>
<data type="filelists"><checksum type="sha1">00</checksum><location href="repodata/f.xml.gz"/></data></repomd>"#;
        std::fs::write(&path, xml).map_err(AggregatorError::io(&path))?;
        let data = read_repomd(&path)?;
        assert_eq!(data.len(), 2);
        assert_eq!(data[0].data_type, "primary");
        assert_eq!(data[0].href, "repodata/abcd-primary.xml.gz");
        assert_eq!(data[0].sha256.as_deref(), Some("abcd"));
        assert_eq!(data[0].size, Some(12));
        assert_eq!(data[1].sha256, None);
        std::fs::write(
            &path,
            r#"<repomd><data type="x"><location href="../etc/passwd"/></data></repomd>"#,
        )
        .map_err(AggregatorError::io(&path))?;
        assert!(read_repomd(&path).is_err());
        Ok(())
    }

    #[test]
    fn paths_are_checked() {
        assert!(relative_path_ok("Packages/a.rpm"));
        assert!(!relative_path_ok("../a.rpm"));
        assert!(!relative_path_ok("/etc/passwd"));
        assert!(!relative_path_ok("Packages/../../x"));
        assert!(!relative_path_ok(""));
    }
}
