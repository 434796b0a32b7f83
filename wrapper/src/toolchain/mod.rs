//! The closure of a compiler as a content-addressed [`ToolchainManifest`], built once per compiler.
//!
//! [`collect`] asks the driver which programs it runs for a compile (`-print-prog-name=cc1`,
//! `cc1plus`, `lto1`, `as`), adds its specs file, the caller's extras (`-specs=` files and
//! plugins, see [`extras_for_args`]) and the `ldd` closure of every ELF file among them, the
//! dynamic loader included. Every path is resolved component by component: each symlink met on
//! the way (`/usr/bin/gcc` → `gcc-12`, `/lib` → `usr/lib`, …) becomes a `Symlink` entry with its
//! literal target, and the real file a `File` entry at its canonical path. The manifest's
//! `driver` is the canonical path of the driver binary.
//!
//! [`collect_cached`] keeps the manifest in `cache_dir()/toolchains/<key>.manifest` with a stat
//! stamp of every file, every symlink's target and every directory holding one; a hit re-checks
//! them all (tens of `stat`/`readlink` calls) instead of running `ldd` and hashing ~100 MB.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use discomy_protocol::{Digest, EntryKind, ProtocolError, ToolchainManifest, TreeEntry};
use serde::{Deserialize, Serialize};

/// A compiler's manifest and where each of its blobs can be read on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    /// The tree: every file and symlink the compiler needs, at its path on the client.
    pub manifest: ToolchainManifest,
    /// Where to read each blob on this host.
    pub sources: HashMap<Digest, PathBuf>,
}

/// Why a toolchain could not be collected or imported.
#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    /// A file could not be read or examined.
    #[error("toolchain: {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A program (the driver or `ldd`) could not be run.
    #[error("toolchain: cannot run {program}: {source}")]
    Run {
        /// The program.
        program: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A path cannot be represented in a manifest.
    #[error("toolchain: path {0:?} is not valid UTF-8")]
    NonUtf8(PathBuf),
    /// A path resolves through too many symlinks.
    #[error("toolchain: {0}: too many levels of symbolic links")]
    SymlinkLoop(PathBuf),
    /// A path resolves to something other than a regular file.
    #[error("toolchain: {0}: not a regular file")]
    NotAFile(PathBuf),
    /// `ldd` reported a library it could not find.
    #[error("toolchain: {library}, needed by {needed_by}, not found by ldd")]
    MissingLibrary {
        /// The library's name.
        library: String,
        /// The file that needs it.
        needed_by: PathBuf,
    },
    /// A `-specs=` file or `-fplugin=` plugin named on the command line does not exist.
    #[error("toolchain: {what} {name:?} not found")]
    NotFound {
        /// `specs file` or `plugin`.
        what: &'static str,
        /// The name as given.
        name: String,
    },
    /// The manifest broke an invariant (a bug, or a tarball with a bad tree).
    #[error("toolchain: {0}")]
    Manifest(#[from] ProtocolError),
    /// An icecream tarball is malformed or unsupported.
    #[error("toolchain: tarball {path}: {reason}")]
    Tarball {
        /// The tarball.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The most symlinks followed while resolving one path (Linux's own limit).
const MAX_SYMLINKS: usize = 40;
/// Programs the gcc driver runs for a compile.
const PROGRAMS: [&str; 4] = ["cc1", "cc1plus", "lto1", "as"];
/// Cache record format version; bump when [`CacheRecord`] or the collection rules change.
const CACHE_VERSION: u32 = 1;

/// Collects the closure of `driver` (as the build names it) plus `extras` (specs files, plugins).
///
/// `path_var` is the PATH the compiler runs with: bare program names (`as`) are found on it.
pub fn collect(
    driver: &Path,
    extras: &[PathBuf],
    path_var: &OsStr,
) -> Result<Toolchain, ToolchainError> {
    Ok(collect_stamped(driver, extras, path_var)?.0)
}

/// [`collect`] through the on-disk cache under [`crate::identity::cache_dir`].
pub fn collect_cached(
    driver: &Path,
    extras: &[PathBuf],
    path_var: &OsStr,
) -> Result<Toolchain, ToolchainError> {
    collect_cached_in(&crate::identity::cache_dir(), driver, extras, path_var)
}

/// [`collect_cached`] with an explicit cache root (the manifest goes to `<root>/toolchains/`).
///
/// The key covers the driver path as named (absolute), the extras and `path_var`: `cc` and `gcc`
/// reach the same binary through different symlinks, so their manifests differ.
pub fn collect_cached_in(
    cache_root: &Path,
    driver: &Path,
    extras: &[PathBuf],
    path_var: &OsStr,
) -> Result<Toolchain, ToolchainError> {
    let driver = absolute(driver)?;
    let extras = extras.iter().map(|e| absolute(e)).collect::<Result<Vec<_>, _>>()?;
    let key = cache_key(&driver, &extras, path_var);
    let file = cache_root.join("toolchains").join(format!("{}.manifest", &key.to_hex()[..32]));
    if let Some(toolchain) = read_cache(&file, key) {
        tracing::debug!(cache = %file.display(), "toolchain manifest from cache");
        return Ok(toolchain);
    }
    let (toolchain, checks) = collect_stamped(&driver, &extras, path_var)?;
    let record = CacheRecord { version: CACHE_VERSION, key, manifest: toolchain.manifest, checks };
    write_cache(&file, &record);
    Ok(Toolchain { manifest: record.manifest, sources: toolchain.sources })
}

/// Each File entry's digest mapped to its path (on the client, content lives at its path).
fn sources_of(manifest: &ToolchainManifest) -> HashMap<Digest, PathBuf> {
    manifest
        .entries
        .iter()
        .filter_map(|e| match e.kind {
            EntryKind::File { digest, .. } => Some((digest, PathBuf::from(&e.path))),
            _ => None,
        })
        .collect()
}

/// What a path in the tree is, before hashing.
enum Node {
    File,
    Symlink(String),
}

/// The tree being collected: canonical files and the symlinks met on the way to them.
#[derive(Default)]
struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// Adds `path` (absolute) and every symlink on the way to it; returns its canonical path.
    fn add(&mut self, path: &Path) -> Result<PathBuf, ToolchainError> {
        let mut pending: VecDeque<OsString> = VecDeque::new();
        push_components(&mut pending, path, false);
        let mut cur = PathBuf::from("/");
        let mut hops = 0;
        while let Some(name) = pending.pop_front() {
            if name == ".." {
                cur.pop();
                continue;
            }
            let next = cur.join(&name);
            let meta = fs::symlink_metadata(&next)
                .map_err(|source| ToolchainError::Io { path: next.clone(), source })?;
            if !meta.file_type().is_symlink() {
                cur = next;
                continue;
            }
            hops += 1;
            if hops > MAX_SYMLINKS {
                return Err(ToolchainError::SymlinkLoop(path.to_path_buf()));
            }
            let target = fs::read_link(&next)
                .map_err(|source| ToolchainError::Io { path: next.clone(), source })?;
            let target_text = utf8(&target)?.to_string();
            if target_text.is_empty() {
                return Err(ToolchainError::NotAFile(next));
            }
            self.nodes.insert(utf8(&next)?.to_string(), Node::Symlink(target_text));
            if target.is_absolute() {
                cur = PathBuf::from("/");
            }
            push_components(&mut pending, &target, true);
        }
        let meta = fs::metadata(&cur)
            .map_err(|source| ToolchainError::Io { path: cur.clone(), source })?;
        if !meta.is_file() {
            return Err(ToolchainError::NotAFile(path.to_path_buf()));
        }
        self.nodes.insert(utf8(&cur)?.to_string(), Node::File);
        Ok(cur)
    }
}

/// Queues the components of `path` (`.` dropped, `..` kept), at the front if `front`.
fn push_components(pending: &mut VecDeque<OsString>, path: &Path, front: bool) {
    let parts: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    if front {
        for part in parts.into_iter().rev() {
            pending.push_front(part);
        }
    } else {
        pending.extend(parts);
    }
}

fn utf8(path: &Path) -> Result<&str, ToolchainError> {
    path.to_str().ok_or_else(|| ToolchainError::NonUtf8(path.to_path_buf()))
}

fn absolute(path: &Path) -> Result<PathBuf, ToolchainError> {
    std::path::absolute(path)
        .map_err(|source| ToolchainError::Io { path: path.to_path_buf(), source })
}

/// Runs `driver flag` and returns its trimmed stdout.
fn query(driver: &Path, path_var: &OsStr, flag: &str) -> Result<String, ToolchainError> {
    let out = Command::new(driver)
        .arg(flag)
        .env("PATH", path_var)
        .env(crate::ENV_SAFEGUARD, "1")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|source| ToolchainError::Run { program: driver.to_path_buf(), source })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Collects the toolchain and the checks that keep a cached copy honest.
fn collect_stamped(
    driver: &Path,
    extras: &[PathBuf],
    path_var: &OsStr,
) -> Result<(Toolchain, Vec<Check>), ToolchainError> {
    let driver = absolute(driver)?;
    let mut tree = Tree::default();
    let driver_real = tree.add(&driver)?;
    let mut roots = vec![driver_real.clone()];
    for prog in PROGRAMS {
        let answer = query(&driver, path_var, &format!("-print-prog-name={prog}"))?;
        let candidate = if answer.contains('/') {
            Some(PathBuf::from(&answer)).filter(|p| p.is_absolute())
        } else {
            crate::invocation::find_on_path(&answer, path_var, None)
        };
        match candidate.filter(|p| p.is_file()) {
            Some(path) => roots.push(tree.add(&path)?),
            None => tracing::debug!(prog, %answer, "compiler program not found; not packaged"),
        }
    }
    let specs = PathBuf::from(query(&driver, path_var, "-print-file-name=specs")?);
    if specs.is_absolute() && specs.is_file() {
        tree.add(&specs)?;
    }
    for extra in extras {
        let extra = absolute(extra)?;
        fs::File::open(&extra)
            .map_err(|source| ToolchainError::Io { path: extra.clone(), source })?;
        roots.push(tree.add(&extra)?);
    }
    let mut seen = BTreeSet::new();
    roots.retain(|r| seen.insert(r.clone()));
    for lib in shared_libraries(&roots, path_var)? {
        tree.add(&lib)?;
    }
    let name = compiler_name(&driver, &driver_real, path_var)?;
    let driver_text = utf8(&driver_real)?.to_string();
    build(tree, name, driver_text)
}

/// `gcc 12.2.0 x86_64-linux-gnu`: family from the canonical driver name, version, machine.
fn compiler_name(driver: &Path, real: &Path, path_var: &OsStr) -> Result<String, ToolchainError> {
    let machine = query(driver, path_var, "-dumpmachine")?;
    let mut version = query(driver, path_var, "-dumpfullversion")?;
    if version.is_empty() || version.starts_with('-') {
        version = query(driver, path_var, "-dumpversion")?;
    }
    let file = real.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut family = file.as_str();
    if !machine.is_empty() {
        family = family.strip_prefix(&format!("{machine}-")).unwrap_or(family);
    }
    if let Some((stem, suffix)) = family.rsplit_once('-') {
        if !stem.is_empty() && suffix.chars().all(|c| c.is_ascii_digit() || c == '.') {
            family = stem;
        }
    }
    let parts = [family, version.as_str(), machine.as_str()];
    Ok(parts.iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join(" "))
}

/// The `ldd` closure (transitive, loader included) of every ELF file in `roots`.
fn shared_libraries(roots: &[PathBuf], path_var: &OsStr) -> Result<Vec<PathBuf>, ToolchainError> {
    let ldd = crate::invocation::find_on_path("ldd", path_var, None)
        .or_else(|| {
            ["/usr/bin/ldd", "/bin/ldd"].map(PathBuf::from).into_iter().find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("ldd"));
    let mut children = Vec::new();
    for root in roots.iter().filter(|r| is_elf(r)) {
        let child = Command::new(&ldd)
            .arg("--")
            .arg(root)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| ToolchainError::Run { program: ldd.clone(), source })?;
        children.push((root, child));
    }
    let mut libs = Vec::new();
    for (root, child) in children {
        let out = child
            .wait_with_output()
            .map_err(|source| ToolchainError::Run { program: ldd.clone(), source })?;
        libs.extend(parse_ldd(&String::from_utf8_lossy(&out.stdout), root)?);
    }
    Ok(libs)
}

/// The absolute paths in `ldd` output; an error for `=> not found`.
fn parse_ldd(text: &str, needed_by: &Path) -> Result<Vec<PathBuf>, ToolchainError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let (name, location) = match line.split_once("=>") {
            Some((name, rest)) => (name.trim(), rest.trim()),
            None => (line, line),
        };
        if location.starts_with("not found") {
            return Err(ToolchainError::MissingLibrary {
                library: name.to_string(),
                needed_by: needed_by.to_path_buf(),
            });
        }
        let path = location.rsplit_once(" (0x").map_or(location, |(p, _)| p).trim();
        if path.starts_with('/') {
            out.push(PathBuf::from(path));
        }
    }
    Ok(out)
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == *b"\x7fELF"
}

/// Hashes the tree's files (in parallel) and builds the validated manifest plus cache checks.
fn build(
    tree: Tree,
    name: String,
    driver: String,
) -> Result<(Toolchain, Vec<Check>), ToolchainError> {
    let files: Vec<&String> =
        tree.nodes.iter().filter(|(_, n)| matches!(n, Node::File)).map(|(p, _)| p).collect();
    let hashed = hash_files(&files)?;
    let mut checks = Vec::new();
    let mut dirs = BTreeSet::new();
    let mut entries = Vec::with_capacity(tree.nodes.len());
    let mut hashed = hashed.into_iter();
    for (path, node) in &tree.nodes {
        if let Some(parent) = Path::new(path).parent() {
            dirs.insert(parent.to_path_buf());
        }
        let kind = match node {
            Node::Symlink(target) => {
                checks.push(Check::Link { path: path.clone(), target: target.clone() });
                EntryKind::Symlink { target: target.clone() }
            }
            Node::File => {
                let Some((stamp, kind)) = hashed.next() else {
                    return Err(ToolchainError::NotAFile(PathBuf::from(path)));
                };
                checks.push(Check::Stat { path: path.clone(), stamp });
                kind
            }
        };
        entries.push(TreeEntry { path: path.clone(), kind });
    }
    // A directory's mtime changes when a file appears in it (g++ installed after gcc, so
    // `cc1plus` now exists): that must invalidate the cached manifest too.
    for dir in dirs {
        if let (Some(stamp), Some(path)) = (crate::identity::stamp(&dir), dir.to_str()) {
            checks.push(Check::Stat { path: path.to_string(), stamp });
        }
    }
    let manifest = ToolchainManifest { name, driver, entries };
    manifest.validate()?;
    let sources = sources_of(&manifest);
    Ok((Toolchain { manifest, sources }, checks))
}

/// A file's stamp (taken before reading it) and its File entry kind.
type Hashed = (String, EntryKind);

/// Stamps and File kinds of `files`, in order.
fn hash_files(files: &[&String]) -> Result<Vec<Hashed>, ToolchainError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Hashed, ToolchainError>>>> =
        Mutex::new((0..files.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads.min(files.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = files.get(i) else { break };
                    let result = hash_file(Path::new(path.as_str()));
                    if let Ok(mut slots) = results.lock() {
                        slots[i] = Some(result);
                    }
                }
            });
        }
    });
    let slots = results.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    slots
        .into_iter()
        .zip(files)
        .map(|(slot, path)| {
            slot.unwrap_or_else(|| Err(ToolchainError::NotAFile(PathBuf::from(path.as_str()))))
        })
        .collect()
}

fn hash_file(path: &Path) -> Result<Hashed, ToolchainError> {
    let io_err = |source| ToolchainError::Io { path: path.to_path_buf(), source };
    let stamp = crate::identity::stamp(path)
        .ok_or_else(|| io_err(io::Error::new(io::ErrorKind::NotFound, "cannot stat")))?;
    let file = fs::File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    let mut hasher = blake3::Hasher::new();
    let size =
        io::copy(&mut io::BufReader::with_capacity(1 << 16, file), &mut hasher).map_err(io_err)?;
    let executable = meta.permissions().mode() & 0o111 != 0;
    Ok((stamp, EntryKind::File { digest: hasher.finalize().into(), size, executable }))
}

mod cache;
mod extras;

pub(crate) use cache::write_atomically;
use cache::{CacheRecord, Check, cache_key, read_cache, write_cache};
pub use extras::extras_for_args;

#[cfg(test)]
mod tests;
