//! Importing an icecream environment tarball (`icecc-create-env`) as a [`Toolchain`].
//!
//! Such a tarball holds a compiler's files at their original absolute paths under the tarball
//! root (`usr/bin/gcc`, `usr/bin/cc1`, `usr/bin/as`, `lib/x86_64-linux-gnu/libc.so.6`,
//! `lib64/ld-linux-x86-64.so.2`, `etc/ld.so.conf`, …). Debian's icecc 1.4 writes gzip with plain
//! files only; symlinks, hard links and directories are accepted too. Every regular file is
//! streamed into the content-addressed blob directory `<cache>/blobs/<hex>` while it is hashed,
//! and the manifest lists the tree as [`crate::toolchain::collect`] would (symlinks as `Symlink`
//! entries, the driver at its resolved path). Member names that are absolute or contain `..`
//! are rejected, as is any member below a symlink or a file of the same tarball.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};

use discomy_protocol::{Digest, EntryKind, ToolchainManifest, TreeEntry};

use crate::toolchain::{Toolchain, ToolchainError};

/// The most symlinks followed while resolving the driver inside the tarball.
const MAX_SYMLINKS: usize = 40;

/// Imports `path` into the blob directory under [`crate::identity::cache_dir`].
///
/// `compiler_name` is the compiler inside the tarball: a bare name means `/usr/bin/NAME`
/// (`gcc`, `g++`, `clang`), anything with a `/` is a path inside the tarball.
pub fn import_icecc_tarball(path: &Path, compiler_name: &str) -> Result<Toolchain, ToolchainError> {
    import_icecc_tarball_into(path, compiler_name, &crate::identity::cache_dir())
}

/// [`import_icecc_tarball`], remembered: the manifest is kept under `<cache>/icecc/` keyed by the
/// tarball's path and compiler name and validated by the tarball's stat stamp and the presence
/// of every blob, so only the first call of a build pays for reading the tarball.
pub fn import_icecc_cached(path: &Path, compiler_name: &str) -> Result<Toolchain, ToolchainError> {
    let root = crate::identity::cache_dir();
    let key = blake3::hash(format!("{}\0{compiler_name}", path.display()).as_bytes());
    let record = root.join("icecc").join(format!("{}.manifest", &key.to_hex()[..32]));
    let stamp = crate::identity::stamp(path);
    if let (Some(stamp), Ok(bytes)) = (&stamp, fs::read(&record)) {
        if let Ok((cached_stamp, manifest)) =
            postcard::from_bytes::<(String, ToolchainManifest)>(&bytes)
        {
            let blobs = root.join("blobs");
            let sources: HashMap<Digest, PathBuf> =
                manifest.blobs().into_iter().map(|d| (d, blobs.join(d.to_hex()))).collect();
            if cached_stamp == *stamp && sources.values().all(|p| p.is_file()) {
                return Ok(Toolchain { manifest, sources });
            }
        }
    }
    let toolchain = import_icecc_tarball_into(path, compiler_name, &root)?;
    if let (Some(stamp), Some(dir)) = (stamp, record.parent()) {
        if let Ok(bytes) = postcard::to_stdvec(&(stamp, &toolchain.manifest)) {
            let _ = fs::create_dir_all(dir);
            let _ = crate::toolchain::write_atomically(dir, &record, &bytes);
        }
    }
    Ok(toolchain)
}

/// [`import_icecc_tarball`] with an explicit cache root (blobs go to `<root>/blobs/<hex>`).
pub fn import_icecc_tarball_into(
    path: &Path,
    compiler_name: &str,
    cache_root: &Path,
) -> Result<Toolchain, ToolchainError> {
    let bad = |reason: String| ToolchainError::Tarball { path: path.to_path_buf(), reason };
    let io_err = |p: &Path, source| ToolchainError::Io { path: p.to_path_buf(), source };
    let mut file = fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut magic = [0u8; 6];
    let n = read_up_to(&mut file, &mut magic).map_err(|e| io_err(path, e))?;
    let file = fs::File::open(path).map_err(|e| io_err(path, e))?;
    let reader: Box<dyn Read> = match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        [b'B', b'Z', b'h', ..] => return Err(bad("bzip2 is not supported; use gzip".into())),
        [0xfd, b'7', b'z', b'X', b'Z', 0] => {
            return Err(bad("xz is not supported; use gzip".into()));
        }
        [0x28, 0xb5, 0x2f, 0xfd, ..] => return Err(bad("zstd is not supported; use gzip".into())),
        _ => Box::new(BufReader::new(file)),
    };

    let blobs = cache_root.join("blobs");
    fs::create_dir_all(&blobs).map_err(|e| io_err(&blobs, e))?;
    let mut nodes: BTreeMap<String, EntryKind> = BTreeMap::new();
    let mut sources: HashMap<Digest, PathBuf> = HashMap::new();
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("corrupt archive: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let Some(member) = member_path(&raw).map_err(bad)? else { continue };
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644);
        if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            let (digest, size) = store_blob(&mut entry, &blobs).map_err(|e| io_err(&blobs, e))?;
            sources.insert(digest, blobs.join(digest.to_hex()));
            let executable = mode & 0o111 != 0;
            nodes.insert(member, EntryKind::File { digest, size, executable });
        } else if kind.is_symlink() {
            let target = link_name(&entry).map_err(|e| bad(format!("{member}: {e}")))?;
            nodes.insert(member, EntryKind::Symlink { target });
        } else if kind.is_hard_link() {
            let target = link_name(&entry).map_err(|e| bad(format!("{member}: {e}")))?;
            let target = member_path(target.as_bytes())
                .map_err(bad)?
                .ok_or_else(|| bad(format!("{member}: hard link to the root")))?;
            match nodes.get(&target) {
                Some(file @ EntryKind::File { .. }) => {
                    let file = file.clone();
                    nodes.insert(member, file);
                }
                _ => return Err(bad(format!("{member}: hard link to unknown file {target}"))),
            }
        } else if kind.is_dir() {
            nodes.entry(member).or_insert(EntryKind::Dir);
        } else {
            tracing::debug!(%member, ?kind, "icecc tarball: member type skipped");
        }
    }

    check_tree_shape(&nodes).map_err(bad)?;
    // Parents are implied: keep directory entries only for empty directories.
    let non_empty: Vec<String> = nodes
        .iter()
        .filter(|(p, k)| matches!(k, EntryKind::Dir) && has_children(&nodes, p))
        .map(|(p, _)| p.clone())
        .collect();
    for dir in non_empty {
        nodes.remove(&dir);
    }

    let wanted = if compiler_name.contains('/') {
        format!("/{}", compiler_name.trim_start_matches('/'))
    } else {
        format!("/usr/bin/{compiler_name}")
    };
    let driver = resolve_in_tree(&nodes, &wanted)
        .ok_or_else(|| bad(format!("no compiler {wanted} (a file, or links to one) inside")))?;
    let stem = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = [".tar.gz", ".tgz", ".tar"]
        .iter()
        .find_map(|ext| stem.strip_suffix(ext))
        .unwrap_or(&stem)
        .to_string();
    let manifest = ToolchainManifest {
        name: format!("{compiler_name} icecc {stem}"),
        driver,
        entries: nodes.into_iter().map(|(path, kind)| TreeEntry { path, kind }).collect(),
    };
    manifest.validate()?;
    let blobs = manifest.blobs();
    sources.retain(|d, _| blobs.binary_search(d).is_ok());
    Ok(Toolchain { manifest, sources })
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The normalised absolute path of a member name; `None` for the root itself.
fn member_path(raw: &[u8]) -> Result<Option<String>, String> {
    let name = std::str::from_utf8(raw).map_err(|_| format!("member {raw:?} is not UTF-8"))?;
    if name.starts_with('/') {
        return Err(format!("member {name:?} has an absolute path"));
    }
    if name.contains('\0') {
        return Err(format!("member {name:?} contains NUL"));
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("member {name:?} escapes the root with `..`")),
            p => parts.push(p),
        }
    }
    Ok((!parts.is_empty()).then(|| format!("/{}", parts.join("/"))))
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String, String> {
    let link = entry.link_name_bytes().ok_or("link without a target")?;
    let text = std::str::from_utf8(&link).map_err(|_| "link target is not UTF-8")?;
    if text.is_empty() || text.contains('\0') {
        return Err("empty link target".into());
    }
    Ok(text.to_string())
}

/// Streams `reader` into `<blobs>/<hex>` (via a temporary file), hashing it on the way.
fn store_blob(reader: &mut impl Read, blobs: &Path) -> io::Result<(Digest, u64)> {
    struct Tee<W: Write> {
        out: W,
        hasher: blake3::Hasher,
    }
    impl<W: Write> Write for Tee<W> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = self.out.write(buf)?;
            self.hasher.update(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.out.flush()
        }
    }
    let (tmp, file) = discomy_protocol::plumbing::fs::create_temp(blobs, "blob".as_ref(), 0o644)?;
    let result = (|| {
        let mut tee =
            Tee { out: BufWriter::with_capacity(1 << 16, file), hasher: blake3::Hasher::new() };
        let size = io::copy(reader, &mut tee)?;
        tee.out.into_inner().map_err(|e| e.into_error())?.sync_data()?;
        let digest: Digest = tee.hasher.finalize().into();
        // Same name, same content: replacing an existing blob is harmless and heals a bad one.
        fs::rename(&tmp, blobs.join(digest.to_hex()))?;
        Ok((digest, size))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// No member may lie below a symlink or a file of the same tree.
fn check_tree_shape(nodes: &BTreeMap<String, EntryKind>) -> Result<(), String> {
    for path in nodes.keys() {
        let mut at = 0;
        while let Some(i) = path[at + 1..].find('/') {
            let ancestor = &path[..at + 1 + i];
            match nodes.get(ancestor) {
                None | Some(EntryKind::Dir) => {}
                Some(_) => {
                    return Err(format!("member {path} lies below non-directory {ancestor}"));
                }
            }
            at += 1 + i;
        }
    }
    Ok(())
}

fn has_children(nodes: &BTreeMap<String, EntryKind>, dir: &str) -> bool {
    let prefix = format!("{dir}/");
    nodes
        .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
        .next()
        .is_some_and(|(p, _)| p.starts_with(&prefix))
}

/// Resolves `path` inside the tree, following its Symlink entries as a chroot would; returns
/// the path of the File it reaches.
fn resolve_in_tree(nodes: &BTreeMap<String, EntryKind>, path: &str) -> Option<String> {
    let mut pending: VecDeque<String> = path.split('/').map(str::to_string).collect();
    let mut cur: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        cur.push(part);
        let here = format!("/{}", cur.join("/"));
        if let Some(EntryKind::Symlink { target }) = nodes.get(&here) {
            hops += 1;
            if hops > MAX_SYMLINKS {
                return None;
            }
            cur.pop();
            if target.starts_with('/') {
                cur.clear();
            }
            for part in target.split('/').rev() {
                pending.push_front(part.to_string());
            }
        }
    }
    let here = format!("/{}", cur.join("/"));
    matches!(nodes.get(&here), Some(EntryKind::File { .. })).then_some(here)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_normalised_and_escapes_rejected() {
        assert_eq!(member_path(b"./usr/bin/gcc").unwrap().as_deref(), Some("/usr/bin/gcc"));
        assert_eq!(member_path(b"usr//lib/./x").unwrap().as_deref(), Some("/usr/lib/x"));
        assert_eq!(member_path(b"./").unwrap(), None);
        assert!(member_path(b"/etc/passwd").is_err());
        assert!(member_path(b"usr/../../etc/passwd").is_err());
        assert!(member_path(b"..").is_err());
    }

    #[test]
    fn driver_resolves_through_tree_symlinks() {
        let file = EntryKind::File { digest: Digest::of(b"x"), size: 1, executable: true };
        let link = |t: &str| EntryKind::Symlink { target: t.into() };
        let nodes: BTreeMap<String, EntryKind> = [
            ("/usr/bin/gcc", link("gcc-12")),
            ("/usr/bin/gcc-12", link("/usr/lib/../bin/x86_64-linux-gnu-gcc-12")),
            ("/usr/bin/x86_64-linux-gnu-gcc-12", file.clone()),
            ("/usr/bin/loop", link("loop")),
        ]
        .into_iter()
        .map(|(p, k)| (p.to_string(), k))
        .collect();
        assert_eq!(
            resolve_in_tree(&nodes, "/usr/bin/gcc").as_deref(),
            Some("/usr/bin/x86_64-linux-gnu-gcc-12")
        );
        assert_eq!(resolve_in_tree(&nodes, "/usr/bin/loop"), None);
        assert_eq!(resolve_in_tree(&nodes, "/usr/bin/cc"), None);
        let mut bad = nodes.clone();
        bad.insert("/usr/bin/gcc/x".into(), file);
        assert!(check_tree_shape(&bad).is_err());
        assert!(check_tree_shape(&nodes).is_ok());
    }
}
