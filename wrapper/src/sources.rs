//! Source mode: the files a unit's preprocessor read, found in its linemarkers, read and named
//! by content, so a worker can run the build's own command over the very same files.
//!
//! The local `-E -fdirectives-only` run names every file gcc opened for the unit in its
//! linemarkers (`# 1 "lua.h" 1`). Those files, at their absolute paths, plus the working
//! directory, are what the compile can see remotely. Anything whose outcome depends on files
//! that were *not* opened makes source mode unsafe, and the unit is sent preprocessed instead
//! (or compiled locally):
//! - `__has_include` of a computed name (a literal name is answered remotely as locally: every
//!   file of that name in the include directories is shipped too, read or not);
//! - `__TIMESTAMP__` (the file's modification time);
//! - `..` after a directory that would not exist remotely;
//! - one path with two contents (symbolic-link tricks).

use std::collections::BTreeMap;
use std::path::Path;

pub use discomy_protocol::sources::normalise;
use discomy_protocol::{Digest, SourceFile};

/// Why a unit cannot go in source mode.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The unit depends on something source mode cannot reproduce.
    #[error("source mode unsafe: {0}")]
    Unsafe(String),
}

/// The unit's files: what to list in the request and what to send when asked.
#[derive(Debug, Default)]
pub struct UnitFiles {
    /// Every file, by normalised absolute path.
    pub files: Vec<SourceFile>,
    /// Contents by digest, for uploads.
    pub contents: BTreeMap<Digest, Vec<u8>>,
}

/// Collects the files named in `unit` (a `-fdirectives-only` preprocessor output) for a
/// compile with `args` run in `cwd` (absolute). `known_dirs` are directories that exist
/// remotely anyway (the toolchain's).
pub fn collect(
    unit: &[u8],
    args: &[String],
    cwd: &str,
    known_dirs: &[&str],
) -> Result<UnitFiles, SourcesError> {
    let mut out = UnitFiles::default();
    let mut by_path: BTreeMap<String, Digest> = BTreeMap::new();
    let mut raw_paths = Vec::new();
    for name in linemarker_names(unit) {
        if name.starts_with('<') || name.ends_with('/') {
            continue; // <built-in>, <command-line>, the working-directory marker
        }
        let absolute = if name.starts_with('/') { name.clone() } else { format!("{cwd}/{name}") };
        let normal = normalise(&absolute)
            .ok_or_else(|| SourcesError::Unsafe(format!("{name} climbs above /")))?;
        let content = std::fs::read(&absolute)
            .map_err(|source| SourcesError::Read { path: absolute.clone(), source })?;
        let digest = Digest::of(&content);
        if by_path.get(&normal).is_some_and(|d| *d != digest) {
            return Err(SourcesError::Unsafe(format!("{normal} read with two contents")));
        }
        raw_paths.push(absolute);
        if by_path.insert(normal.clone(), digest).is_none() {
            out.files.push(SourceFile { path: normal, digest, size: content.len() as u64 });
        }
        out.contents.entry(digest).or_insert(content);
    }
    if out.files.is_empty() {
        return Err(SourcesError::Unsafe("no files named in the preprocessor output".into()));
    }
    check_dot_dots(&raw_paths, &out.files, cwd, known_dirs)?;
    if memmem_any(&out, b"__TIMESTAMP__") {
        return Err(SourcesError::Unsafe("__TIMESTAMP__ depends on file times".into()));
    }
    add_probed_files(&mut out, args, cwd, known_dirs)?;
    Ok(out)
}

fn memmem_any(files: &UnitFiles, needle: &[u8]) -> bool {
    files.contents.values().any(|c| memmem(c, needle))
}

/// Directories gcc may search for a header of this unit: those of the files it read, the
/// working directory, the command line's include directories, the toolchain's `include`
/// directories and the usual system ones.
fn search_dirs(files: &UnitFiles, args: &[String], cwd: &str, known_dirs: &[&str]) -> Vec<String> {
    let mut dirs: Vec<String> = files
        .files
        .iter()
        .filter_map(|f| f.path.rsplit_once('/').map(|(d, _)| d.to_string()))
        .collect();
    dirs.push(cwd.to_string());
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        for opt in ["-I", "-isystem", "-iquote", "-idirafter"] {
            let Some(rest) = arg.strip_prefix(opt) else { continue };
            let dir = if rest.is_empty() {
                i += 1;
                args.get(i - 1).cloned().unwrap_or_default()
            } else {
                rest.to_string()
            };
            let dir = if dir.starts_with('/') { dir } else { format!("{cwd}/{dir}") };
            dirs.extend(normalise(&dir));
            break;
        }
    }
    for dir in known_dirs {
        if dir.ends_with("/include") || dir.ends_with("/include-fixed") {
            dirs.push(dir.to_string());
        }
        // gcc's private directory is /usr/lib/gcc/<triple>/<version>: the multiarch one follows.
        if let Some(triple) = dir.strip_prefix("/usr/lib/gcc/").and_then(|r| r.split('/').next()) {
            dirs.push(format!("/usr/include/{triple}"));
        }
    }
    dirs.extend(["/usr/local/include".to_string(), "/usr/include".to_string()]);
    dirs.sort();
    dirs.dedup();
    dirs
}

/// `__has_include("x.h")` is answered by the files that exist, read or not: ship every file of
/// a probed name found in the search directories, so the remote answer is the local one.
fn add_probed_files(
    out: &mut UnitFiles,
    args: &[String],
    cwd: &str,
    known_dirs: &[&str],
) -> Result<(), SourcesError> {
    let mut names = Vec::new();
    for content in out.contents.values() {
        for probe in has_include_probes(content) {
            let name = probe
                .ok_or_else(|| SourcesError::Unsafe("__has_include of a computed name".into()))?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    let dirs = search_dirs(out, args, cwd, known_dirs);
    for name in names {
        for dir in &dirs {
            let Some(path) = normalise(&format!("{dir}/{name}")) else { continue };
            if out.files.iter().any(|f| f.path == path) || !Path::new(&path).is_file() {
                continue;
            }
            let content = std::fs::read(&path)
                .map_err(|source| SourcesError::Read { path: path.clone(), source })?;
            let digest = Digest::of(&content);
            out.files.push(SourceFile { path, digest, size: content.len() as u64 });
            out.contents.entry(digest).or_insert(content);
        }
    }
    Ok(())
}

/// File names of the linemarkers (`# N "name" flags`) in a preprocessor output, unescaped.
pub fn linemarker_names(unit: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    for line in unit.split(|&b| b == b'\n') {
        let Some(rest) = line.strip_prefix(b"# ") else { continue };
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            continue;
        }
        let Some(quoted) = rest[digits..].strip_prefix(b" \"") else { continue };
        if let Some(name) = unescape(quoted) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// The name up to the closing quote, with cpp's escapes (`\\`, `\"`, `\ooo`) undone.
fn unescape(quoted: &[u8]) -> Option<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < quoted.len() {
        match quoted[i] {
            b'"' => return String::from_utf8(out).ok(),
            b'\\' => {
                let next = *quoted.get(i + 1)?;
                if next.is_ascii_digit() {
                    let end = (i + 1..(i + 4).min(quoted.len()))
                        .take_while(|&j| (b'0'..=b'7').contains(&quoted[j]))
                        .last()?;
                    let text = std::str::from_utf8(&quoted[i + 1..=end]).ok()?;
                    out.push(u8::from_str_radix(text, 8).ok()?);
                    i = end + 1;
                } else {
                    out.push(next);
                    i += 2;
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    None
}

/// A `..` is resolved by the remote kernel too, so the directory before it must exist there
/// (the working directory or an ancestor, a shipped file's directory or an ancestor, or a
/// directory of the toolchain) and must not be reached through a symbolic link here.
pub(crate) fn check_dot_dots(
    raw: &[String],
    files: &[SourceFile],
    cwd: &str,
    known_dirs: &[&str],
) -> Result<(), SourcesError> {
    let exists_remotely = |dir: &str| {
        let under = |base: &str| base == dir || base.starts_with(&format!("{dir}/"));
        dir == "/"
            || under(cwd)
            || files.iter().any(|f| f.path.rsplit_once('/').is_some_and(|(d, _)| under(d)))
            || known_dirs.iter().any(|d| under(d))
    };
    for path in raw {
        let parts: Vec<&str> = path.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if *part != ".." {
                continue;
            }
            let raw_before = parts[..i].join("/");
            let before = normalise(&raw_before).unwrap_or_default();
            if !exists_remotely(&before) {
                return Err(SourcesError::Unsafe(format!("{path}: {before} would not exist")));
            }
            // Locally the kernel resolves `..` after following symbolic links; remotely every
            // directory is real. Only the same answer both ways is safe.
            if std::fs::canonicalize(&raw_before).is_ok_and(|c| c.to_str() != Some(&before)) {
                return Err(SourcesError::Unsafe(format!("{path}: `..` after a symbolic link")));
            }
        }
    }
    Ok(())
}

/// The names probed by `__has_include(…)`/`__has_include_next(…)` in `text`; `None` for a
/// probe whose argument is not a literal `"name"` or `<name>`.
fn has_include_probes(text: &[u8]) -> Vec<Option<String>> {
    const KEY: &[u8] = b"__has_include";
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(pos) = find(&text[at..], KEY) {
        let mut i = at + pos + KEY.len();
        at = i;
        if text[i..].starts_with(b"_next") {
            i += 5;
        }
        while text.get(i).is_some_and(|b| *b == b' ' || *b == b'\t') {
            i += 1;
        }
        if text.get(i) != Some(&b'(') {
            continue; // `#ifdef __has_include`, or prose in a comment
        }
        i += 1;
        while text.get(i).is_some_and(|b| *b == b' ' || *b == b'\t') {
            i += 1;
        }
        let close = match text.get(i) {
            Some(b'"') => b'"',
            Some(b'<') => b'>',
            _ => {
                out.push(None);
                continue;
            }
        };
        let start = i + 1;
        let end = text[start..].iter().position(|b| *b == close || *b == b'\n');
        match end {
            Some(len) if text.get(start + len) == Some(&close) => {
                out.push(std::str::from_utf8(&text[start..start + len]).ok().map(String::from));
            }
            _ => out.push(None),
        }
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

fn memmem(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

/// The directories of a toolchain's entries (they exist remotely in every sandbox).
pub fn toolchain_dirs(manifest: &discomy_protocol::ToolchainManifest) -> Vec<&str> {
    let mut dirs: Vec<&str> =
        manifest.entries.iter().filter_map(|e| e.path.rsplit_once('/').map(|(d, _)| d)).collect();
    dirs.sort_unstable();
    dirs.dedup();
    dirs
}

/// Whether `path` is absolute and its text usable on the wire.
pub fn usable_cwd(path: &Path) -> Option<String> {
    let text = path.to_str()?;
    normalise(text).filter(|n| n == text.trim_end_matches('/') || n == text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linemarkers_are_found_and_unescaped() {
        let unit = b"# 0 \"a.c\"\n# 0 \"/w//\"\n# 0 \"<built-in>\"\n# 1 \"a.c\"\nint x;\n\
# 1 \"/usr/include/x\\\\y \\\"q\\\".h\" 1 3 4\n#define A 1\n# 5 \"a.c\" 2\n";
        let names = linemarker_names(unit);
        assert_eq!(names, ["a.c", "/w//", "<built-in>", "/usr/include/x\\y \"q\".h"]);
    }

    #[test]
    fn octal_escapes() {
        assert_eq!(unescape(b"a\\012b\" 1"), Some("a\nb".into()));
    }

    #[test]
    fn probes() {
        let text = b"#ifdef __has_include\n# if __has_include (\"linux/stat.h\")\n\
#if __has_include_next(<x.h>) || __has_include(MACRO)\n/* __has_include argument */";
        assert_eq!(
            has_include_probes(text),
            [Some("linux/stat.h".into()), Some("x.h".into()), None]
        );
    }

    #[test]
    fn normalising() {
        assert_eq!(normalise("/a/b/../c/./d").as_deref(), Some("/a/c/d"));
        assert_eq!(normalise("/../x"), None);
    }

    #[test]
    fn dot_dot_after_a_missing_directory_is_unsafe() {
        let files =
            vec![SourceFile { path: "/p/inc/x.h".into(), digest: Digest::of(b""), size: 0 }];
        let ok = vec!["/p/src/../inc/x.h".to_string()];
        assert!(check_dot_dots(&ok, &files, "/p/src", &[]).is_ok());
        let bad = vec!["/p/nowhere/../inc/x.h".to_string()];
        assert!(check_dot_dots(&bad, &files, "/p/src", &[]).is_err());
        assert!(check_dot_dots(&bad, &files, "/p/src", &["/p/nowhere"]).is_ok());
    }
}
