//! Working out which real compiler a call meant, and the PATH its children get.
//!
//! Three ways in: `discomy-cc gcc ARGS` (explicit, also how CMake's compiler launcher calls
//! us), `discomy-cc ARGS` (implicit `cc`), and a masquerade link named like a compiler
//! (`gcc`, `x86_64-linux-gnu-g++-12`, …) placed first on PATH. In every case the real compiler is
//! the first one on PATH that is not this binary, and masquerade directories are removed from
//! the children's PATH so nothing loops back into us.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// What the command line asks for.
pub enum Resolved {
    /// A compiler call to handle.
    Compile(Invocation),
    /// `discomy-cc --version`.
    Version,
}

/// A resolved compiler call.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The name the build used for the compiler (`gcc`, `c++`, …).
    pub name: String,
    /// The real compiler to run.
    pub compiler: PathBuf,
    /// Arguments after the compiler.
    pub args: Vec<OsString>,
    /// PATH for child processes, without masquerade directories.
    pub child_path: OsString,
}

/// Why a call could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// Bad wrapper usage.
    #[error("{0}")]
    Usage(String),
    /// No real compiler of that name on PATH.
    #[error("cannot find the real compiler `{0}` on PATH (masquerade links to discomy-cc skipped)")]
    NotFound(String),
}

const WRAPPER_NAME: &str = "discomy-cc";

impl Invocation {
    /// Resolves `argv` (including argv\[0\]).
    pub fn resolve(argv: Vec<OsString>) -> Result<Resolved, InvocationError> {
        let mut argv = argv.into_iter();
        let argv0 = argv.next().unwrap_or_else(|| WRAPPER_NAME.into());
        let rest: Vec<OsString> = argv.collect();
        let base = file_name(Path::new(&argv0));
        let me = std::env::current_exe().ok().and_then(|p| FileId::of(&p));
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        let child_path = strip_masquerade_dirs(&path_var, me);

        let (name, explicit, args) = if base.starts_with(WRAPPER_NAME) {
            let Some(first) = rest.first() else {
                return Err(InvocationError::Usage(
                    "usage: discomy-cc COMPILER ARGS… (or call it through a masquerade link)"
                        .into(),
                ));
            };
            if first == "--version" && rest.len() == 1 {
                return Ok(Resolved::Version);
            }
            let first_str = first.to_string_lossy();
            if first_str.starts_with('-') || crate::args::source_language(&first_str).is_some() {
                ("cc".to_string(), None, rest)
            } else {
                let name = file_name(Path::new(first));
                let explicit = first_str.contains('/').then(|| PathBuf::from(first));
                (name, explicit, rest[1..].to_vec())
            }
        } else {
            (base, None, rest)
        };

        let compiler = match explicit {
            Some(path) if me.is_none() || FileId::of(&path) != me => path,
            _ => find_on_path(&name, &child_path, me)
                .ok_or_else(|| InvocationError::NotFound(name.clone()))?,
        };
        Ok(Resolved::Compile(Invocation { name, compiler, args, child_path }))
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A file's identity (device, inode), through any links: how the wrapper recognises itself on
/// PATH with one `stat` per candidate, where resolving every link took dozens of calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId(u64, u64);

impl FileId {
    /// The identity of the file `path` leads to, if it exists.
    pub fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        path.metadata().ok().map(|m| FileId(m.dev(), m.ino()))
    }
}

/// The first executable `name` on `path_var` that is not the file `skip` (this binary).
pub fn find_on_path(name: &str, path_var: &OsStr, skip: Option<FileId>) -> Option<PathBuf> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::env::split_paths(path_var).map(|dir| dir.join(name)).find(|candidate| {
        candidate.metadata().is_ok_and(|m| {
            m.is_file()
                && m.permissions().mode() & 0o111 != 0
                && skip != Some(FileId(m.dev(), m.ino()))
        })
    })
}

/// PATH without directories holding links to this binary (masquerade directories).
fn strip_masquerade_dirs(path_var: &OsStr, me: Option<FileId>) -> OsString {
    let Some(me) = me else { return path_var.to_owned() };
    let kept: Vec<PathBuf> =
        std::env::split_paths(path_var).filter(|dir| !is_masquerade_dir(dir, me)).collect();
    std::env::join_paths(kept).unwrap_or_else(|_| path_var.to_owned())
}

fn is_masquerade_dir(dir: &Path, me: FileId) -> bool {
    ["cc", "gcc", "c++", "g++"].iter().any(|n| FileId::of(&dir.join(n)) == Some(me))
}
