//! Source-mode units: the original source and every file the preprocessor read, by content.
//!
//! In source mode a worker runs the build's own compile command, in the build's own working
//! directory, over the very files the client's preprocessor opened, materialised at their
//! absolute paths. Everything the compiler records (the command line in `DW_AT_producer`, the
//! working directory, file names, column numbers, macro information) is then what a local
//! compile records, so objects are byte-identical even with `-grecord-gcc-switches` and `-g3`.
//!
//! File contents travel separately, once per node, as blobs named by digest
//! ([`crate::Request::PutSource`]); a node that lacks some answers
//! [`crate::Response::MissingBlobs`] and the client sends them and asks again.

use serde::{Deserialize, Serialize};

use crate::{CompilerId, Digest, Language, OutputKind};

/// Most files one source-mode unit may name.
pub const MAX_SOURCE_FILES: usize = 20_000;
/// Longest path of a file in a source-mode unit.
pub const MAX_SOURCE_PATH: usize = 4096;

/// At most `max` bytes of `text`, cut at a character boundary: for names a peer chose freely
/// that a node keeps or logs (a source name, a reason).
pub fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One file the preprocessor read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Absolute, normalised path (no `.` or `..` components, no doubled slashes).
    pub path: String,
    /// blake3 of the content.
    pub digest: Digest,
    /// Content length in bytes.
    pub size: u64,
}

/// A unit compiled from its original source with the build's own arguments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceCompileRequest {
    /// Which compiler to use; a worker without an identical one refuses.
    pub compiler: CompilerId,
    /// Language of the unit.
    pub language: Language,
    /// Object or assembly.
    pub output: OutputKind,
    /// The build's arguments as given, source included, without the output (`-o`) and the
    /// dependency-file options (the client writes dependency files itself).
    pub args: Vec<String>,
    /// The build's working directory (absolute).
    pub cwd: String,
    /// The source's name as the build gave it, for logs.
    pub source_name: String,
    /// Every file the client's preprocessor read, the source included.
    pub files: Vec<SourceFile>,
    /// The client's `SOURCE_DATE_EPOCH`, which `__DATE__` and `__TIME__` honour.
    pub source_date_epoch: Option<String>,
    /// A dependency file the compile writes too (when the client did not preprocess locally).
    pub deps: Option<DepRequest>,
}

/// The dependency file a source-mode compile writes, as `-MD`/`-MMD` would.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepRequest {
    /// `-MMD` (headers outside system directories only) instead of `-MD`.
    pub user_only: bool,
    /// The target options as the build gave them (`-MT x`, `-MQ x`, `-MP`), or `-MQ <output>`.
    pub targets: Vec<String>,
}

/// The answer to a source-mode unit that asked for a dependency file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceResult {
    /// The compile.
    pub result: crate::CompileResult,
    /// The dependency file's content, when the compile succeeded.
    #[serde(with = "serde_bytes")]
    pub dep_file: Vec<u8>,
}

/// Why a source-mode request is refused before anything touches a node's disk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUnit {
    /// A dependency-file option of a shape nodes do not accept.
    #[error("dependency option `{0}` refused")]
    DependencyOption(String),
    /// A NUL byte in a dependency target.
    #[error("NUL in a dependency target")]
    NulInTarget,
    /// A path longer than [`MAX_SOURCE_PATH`].
    #[error("path longer than {MAX_SOURCE_PATH} bytes")]
    PathTooLong,
    /// A relative path.
    #[error("{0}: not absolute")]
    NotAbsolute(String),
    /// A NUL byte in a path.
    #[error("path contains NUL")]
    NulInPath,
    /// `.`, `..` or an empty component.
    #[error("{0}: not normalised")]
    NotNormalised(String),
    /// No file, or more than [`MAX_SOURCE_FILES`].
    #[error("{0} files (1 to {MAX_SOURCE_FILES} allowed)")]
    FileCount(usize),
    /// One path listed twice.
    #[error("{0}: named twice")]
    Duplicate(String),
}

impl DepRequest {
    /// Whether the target options have the only shapes a node accepts.
    pub fn validate(&self) -> Result<(), InvalidUnit> {
        let mut i = 0;
        while i < self.targets.len() {
            match self.targets[i].as_str() {
                "-MP" => i += 1,
                "-MT" | "-MQ" if i + 1 < self.targets.len() => i += 2,
                other => return Err(InvalidUnit::DependencyOption(other.to_string())),
            }
        }
        if self.targets.iter().any(|t| t.contains('\0')) {
            return Err(InvalidUnit::NulInTarget);
        }
        Ok(())
    }
}

/// `path` with `.` and `..` resolved lexically; `None` when it climbs above `/`. Both ends use
/// it: the wrapper to name files, the worker to check a command line's input.
pub fn normalise(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// Why a path cannot be materialised on a node.
pub fn check_path(path: &str) -> Result<(), InvalidUnit> {
    if path.len() > MAX_SOURCE_PATH {
        return Err(InvalidUnit::PathTooLong);
    }
    if !path.starts_with('/') {
        return Err(InvalidUnit::NotAbsolute(path.to_string()));
    }
    if path.contains('\0') {
        return Err(InvalidUnit::NulInPath);
    }
    for part in path[1..].split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(InvalidUnit::NotNormalised(path.to_string()));
        }
    }
    Ok(())
}

impl SourceCompileRequest {
    /// Structural checks a node makes before touching its disk.
    pub fn validate(&self) -> Result<(), InvalidUnit> {
        if self.files.is_empty() || self.files.len() > MAX_SOURCE_FILES {
            return Err(InvalidUnit::FileCount(self.files.len()));
        }
        check_path(&self.cwd)?;
        if let Some(deps) = &self.deps {
            deps.validate()?;
        }
        let mut seen = std::collections::HashSet::new();
        for file in &self.files {
            check_path(&file.path)?;
            if !seen.insert(file.path.as_str()) {
                return Err(InvalidUnit::Duplicate(file.path.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_and_normalised() {
        assert!(check_path("/usr/include/stdio.h").is_ok());
        for bad in ["usr/x.h", "/usr/../etc/passwd", "/usr//x.h", "/usr/./x.h", "/a/", "/a\0b"] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
    }
}
