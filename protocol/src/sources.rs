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

/// Context string of [`SourceCompileRequest::farm_key`]; change it to retire every farm entry.
const FARM_KEY_CONTEXT: &str = "discomy farm-tier key v1 (source-mode unit)";

/// What a unit's farm-tier key depends on beyond its fields: read from its files' contents, by
/// the wrapper before it asks and by the worker before it looks up or stores (it trusts no
/// client's claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FarmKeyFacts {
    /// No file uses `__DATE__`, `__TIME__` or `__TIMESTAMP__` (whose values are the compiling
    /// host's): only such a unit's result is stored.
    pub cacheable: bool,
    /// The working directory appears nowhere (no argument, no file's text) and the unit is not
    /// an LTO one: its object depends on the directory only through what the wrapper's ELF
    /// rewriter moves, so the key leaves the directory out and builds elsewhere share it.
    pub cwd_independent: bool,
}

impl FarmKeyFacts {
    /// The facts of no file: the start of a fold over a unit's files.
    pub const NONE: FarmKeyFacts = FarmKeyFacts { cacheable: true, cwd_independent: true };

    /// The facts of one file's content for a unit compiled in `cwd`.
    pub fn of_file(content: &[u8], cwd: &str) -> FarmKeyFacts {
        FarmKeyFacts::of_files([content], cwd)
    }

    /// The facts of every file of a unit compiled in `cwd`: two passes over each file (the
    /// searchers are built once), one for the time macros and one for the directory.
    pub fn of_files<'a>(files: impl IntoIterator<Item = &'a [u8]>, cwd: &str) -> FarmKeyFacts {
        let date = memchr::memmem::Finder::new(b"__DATE__");
        // `__TIME__` and `__TIMESTAMP__` in one search (`__TIME_T_TYPE` and the like are not).
        let time = memchr::memmem::Finder::new(b"__TIME");
        let here = memchr::memmem::Finder::new(cwd.as_bytes());
        let timed = |c: &[u8]| {
            date.find(c).is_some()
                || time.find_iter(c).any(|at| {
                    let rest = &c[at + 6..];
                    rest.starts_with(b"__") || rest.starts_with(b"STAMP__")
                })
        };
        let mut facts = FarmKeyFacts::NONE;
        for content in files {
            facts.cacheable &= !timed(content);
            facts.cwd_independent &= cwd.is_empty() || here.find(content).is_none();
        }
        facts
    }

    /// Both files' facts at once.
    pub fn and(self, other: FarmKeyFacts) -> FarmKeyFacts {
        FarmKeyFacts {
            cacheable: self.cacheable && other.cacheable,
            cwd_independent: self.cwd_independent && other.cwd_independent,
        }
    }
}

impl SourceCompileRequest {
    /// The facts of the unit's arguments, combined with its files' ([`FarmKeyFacts::of_file`]).
    pub fn farm_key_facts(&self, files: FarmKeyFacts) -> FarmKeyFacts {
        let lto = self.args.iter().any(|a| a.starts_with("-flto") || a.starts_with("-fltrans"));
        let here = self.args.iter().any(|a| a.contains(self.cwd.as_str()));
        FarmKeyFacts {
            cacheable: files.cacheable,
            cwd_independent: files.cwd_independent && !lto && !here && !self.cwd.is_empty(),
        }
    }

    /// The unit's key in the farm tier of the object cache: blake3 over everything a worker's
    /// compile of it depends on (the compiler by name and content identity, language, output
    /// kind, arguments, every file by content and by path, relative to the working directory
    /// when under it, the working directory unless `facts` say the unit does not depend on it,
    /// `SOURCE_DATE_EPOCH` and the dependency-file request), not the source's display name.
    /// Workers derive it from the unit they compile, with facts they read themselves, and store
    /// their entry under it, so no peer chooses the key an entry lands under; the wrapper
    /// computes the same to ask for it.
    pub fn farm_key(&self, facts: FarmKeyFacts) -> Digest {
        let prefix = format!("{}/", self.cwd);
        let mut files: Vec<(&str, &Digest, u64)> = self
            .files
            .iter()
            .map(|f| (f.path.strip_prefix(&prefix).unwrap_or(&f.path), &f.digest, f.size))
            .collect();
        files.sort_unstable();
        let cwd = if facts.cwd_independent { "" } else { self.cwd.as_str() };
        let keyed = (
            &self.compiler,
            self.language,
            self.output,
            &self.args,
            cwd,
            files,
            &self.source_date_epoch,
            &self.deps,
        );
        let mut hasher = blake3::Hasher::new_derive_key(FARM_KEY_CONTEXT);
        // Serialising these types cannot fail; an empty encoding would still be keyed apart.
        hasher.update(&postcard::to_stdvec(&keyed).unwrap_or_default());
        Digest(*hasher.finalize().as_bytes())
    }

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

    fn unit() -> SourceCompileRequest {
        SourceCompileRequest {
            compiler: CompilerId { name: "gcc".into(), identity: Digest([1; 32]) },
            language: Language::C,
            output: OutputKind::Object,
            args: vec!["-O2".into(), "-c".into(), "a.c".into()],
            cwd: "/b".into(),
            source_name: "a.c".into(),
            files: vec![SourceFile { path: "/b/a.c".into(), digest: Digest([2; 32]), size: 9 }],
            source_date_epoch: None,
            deps: None,
        }
    }

    const DEPENDENT: FarmKeyFacts = FarmKeyFacts { cacheable: true, cwd_independent: false };

    /// Everything the object depends on moves the key; the display name does not.
    #[test]
    fn the_farm_key_covers_what_the_object_depends_on() {
        let base = unit().farm_key(DEPENDENT);
        let mut named = unit();
        named.source_name = "elsewhere.c".into();
        assert_eq!(named.farm_key(DEPENDENT), base);
        let changes: Vec<fn(&mut SourceCompileRequest)> = vec![
            |u| u.compiler.name = "g++".into(),
            |u| u.compiler.identity = Digest([3; 32]),
            |u| u.language = Language::Cxx,
            |u| u.output = OutputKind::Assembly,
            |u| u.args.push("-g".into()),
            |u| u.cwd = "/c".into(),
            |u| u.files[0].digest = Digest([4; 32]),
            |u| u.files[0].path = "/b/b.c".into(),
            |u| u.source_date_epoch = Some("1".into()),
            |u| u.deps = Some(DepRequest { user_only: true, targets: vec![] }),
        ];
        for (i, change) in changes.into_iter().enumerate() {
            let mut u = unit();
            change(&mut u);
            assert_ne!(u.farm_key(DEPENDENT), base, "change {i} kept the key");
        }
    }

    /// A unit that names its directory nowhere shares its key with the same build elsewhere;
    /// one that names it (an argument, a file's text) or is an LTO unit does not.
    #[test]
    fn only_a_unit_that_names_its_directory_nowhere_is_keyed_without_it() {
        let file = |text: &[u8], u: &SourceCompileRequest| {
            u.farm_key_facts(FarmKeyFacts::of_file(text, &u.cwd))
        };
        let a = unit();
        let mut b = unit();
        b.cwd = "/elsewhere".into();
        b.files[0].path = "/elsewhere/a.c".into();
        let (fa, fb) = (file(b"int x;", &a), file(b"int x;", &b));
        assert!(fa.cwd_independent && fa.cacheable);
        assert_eq!(a.farm_key(fa), b.farm_key(fb));
        assert_ne!(a.farm_key(DEPENDENT), b.farm_key(DEPENDENT));
        assert!(!file(b"char *p = \"/b/x\";", &a).cwd_independent);
        let mut named = unit();
        named.args.push("-fdebug-prefix-map=/b=.".into());
        assert!(!file(b"int x;", &named).cwd_independent);
        let mut lto = unit();
        lto.args.push("-flto=auto".into());
        assert!(!file(b"int x;", &lto).cwd_independent);
        assert!(!file(b"const char *d = __DATE__;", &a).cacheable);
        assert!(!file(b"const char *t = __TIME__;", &a).cacheable);
        assert!(!file(b"const char *s = __TIMESTAMP__;", &a).cacheable);
        assert!(file(b"typedef long __TIME_T_TYPE; int __TIME", &a).cacheable);
    }
}
