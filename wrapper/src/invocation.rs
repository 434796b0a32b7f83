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
        let self_exe = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok());
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        let child_path = strip_masquerade_dirs(&path_var, self_exe.as_deref());

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
            Some(path) if !is_self(&path, self_exe.as_deref()) => path,
            _ => find_on_path(&name, &child_path, self_exe.as_deref())
                .ok_or_else(|| InvocationError::NotFound(name.clone()))?,
        };
        Ok(Resolved::Compile(Invocation { name, compiler, args, child_path }))
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Whether `candidate` is this very binary (through any links): the same file, by device and
/// inode. Two `stat`s, where resolving every link of every PATH candidate took dozens of calls.
fn is_self(candidate: &Path, self_exe: Option<&Path>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(me) = self_exe else { return false };
    match (candidate.metadata(), me.metadata()) {
        (Ok(c), Ok(m)) => (c.dev(), c.ino()) == (m.dev(), m.ino()),
        _ => false,
    }
}

/// The first executable `name` on `path_var` that is not this binary.
pub fn find_on_path(name: &str, path_var: &OsStr, self_exe: Option<&Path>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path_var).map(|dir| dir.join(name)).find(|candidate| {
        let executable = candidate
            .metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        executable && !is_self(candidate, self_exe)
    })
}

/// PATH without directories holding links to this binary (masquerade directories).
fn strip_masquerade_dirs(path_var: &OsStr, self_exe: Option<&Path>) -> OsString {
    let Some(me) = self_exe else { return path_var.to_owned() };
    let kept: Vec<PathBuf> =
        std::env::split_paths(path_var).filter(|dir| !is_masquerade_dir(dir, me)).collect();
    std::env::join_paths(kept).unwrap_or_else(|_| path_var.to_owned())
}

fn is_masquerade_dir(dir: &Path, me: &Path) -> bool {
    ["cc", "gcc", "c++", "g++"].iter().any(|n| is_self(&dir.join(n), Some(me)))
}
