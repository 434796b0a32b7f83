//! The include scanner: a unit's files found without running the preprocessor.
//!
//! Running `cpp` on the build host for every unit is what limits a distcc farm (the build host
//! preprocesses while the farm compiles). Source mode needs only the files the compile can open,
//! and this scanner finds a superset of them by reading `#include` lines textually, every
//! conditional branch included:
//!
//! - every name in `#include`, `#include_next`, `#import` and `__has_include(…)`, in every file
//!   reached, and `-include`/`-imacros` files and gcc's implicit `stdc-predef.h`;
//! - for each name, **every** existing candidate in every directory gcc could search (the
//!   includer's directory, `-iquote`, `-I`, `-isystem`, the compiler's system directories,
//!   `-idirafter`, the working directory), not just the first. The remote file system then holds
//!   the same candidates as the local one for every name, so gcc's search order picks the same
//!   file there whatever that order is;
//! - computed includes (`#include MACRO`) are resolved through every `#define` of that macro
//!   seen in any scanned file or on the command line (all of them, again a superset); a macro
//!   never defined anywhere cannot be included without an error, locally and remotely alike.
//!
//! Whatever the scanner cannot decide (a macro with a non-literal body, a builtin macro, `-I-`,
//! `..` through a directory that would not exist remotely, `__TIMESTAMP__`) makes it give up;
//! the caller then preprocesses as before.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::Path;

use discomy_protocol::{Digest, SourceFile};

use crate::sources::{SourcesError, UnitFiles, normalise};

/// Most files one scan may visit before giving up (a runaway include graph).
const MAX_FILES: usize = 20_000;
/// Deepest chain of macros a computed include may go through.
const MAX_MACRO_DEPTH: usize = 8;

/// Where gcc may look for a unit's headers.
#[derive(Debug, Default, Clone)]
pub struct SearchDirs {
    /// Directories searched for every name (`-I`, `-isystem`, system, `-idirafter`, `-iquote`).
    pub dirs: Vec<String>,
    /// Files the compiler reads before the source (`-include`, `-imacros`, `stdc-predef.h`):
    /// names, each searched in the working directory and every directory.
    pub pre_includes: Vec<String>,
    /// `-D` definitions of the command line, name to body.
    pub defines: Vec<(String, String)>,
    /// Search directories as given (absolute) that go through `..`: checked like file paths.
    pub raw_dirs: Vec<String>,
}

/// Collects the directories and pre-included names from a compile's arguments (relative
/// directories against `cwd`), plus the compiler's own `system` directories.
pub fn search_dirs(args: &[String], cwd: &str, system: &[String]) -> Result<SearchDirs, String> {
    let mut out = SearchDirs::default();
    let mut i = 0;
    let absolute =
        |d: &str| normalise(&if d.starts_with('/') { d.to_string() } else { format!("{cwd}/{d}") });
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        if arg == "-I-" {
            return Err("-I- changes the search rules".into());
        }
        let unscanned = ["-iprefix", "-iwithprefix", "-imultilib", "-imultiarch", "-Xpreprocessor"];
        if let Some(opt) = unscanned.iter().find(|o| arg.starts_with(*o)) {
            return Err(format!("{opt}: a search option the scanner does not model"));
        }
        let mut value_of = |prefix: &str| -> Option<String> {
            let rest = arg.strip_prefix(prefix)?;
            if rest.is_empty() {
                i += 1;
                args.get(i - 1).cloned()
            } else {
                Some(rest.to_string())
            }
        };
        if let Some(d) = ["-isystem", "-iquote", "-idirafter", "-I"].iter().find_map(|p| {
            if arg.starts_with("-include") || arg.starts_with("-imacros") {
                None
            } else {
                value_of(p)
            }
        }) {
            if d.split('/').any(|part| part == "..") {
                out.raw_dirs.push(if d.starts_with('/') {
                    d.clone()
                } else {
                    format!("{cwd}/{d}")
                });
            }
            out.dirs.extend(absolute(&d));
        } else if let Some(f) = value_of("-include").or_else(|| value_of("-imacros")) {
            out.pre_includes.push(f);
        } else if let Some(def) = value_of("-D") {
            let (name, body) = def.split_once('=').unwrap_or((&def, "1"));
            out.defines.push((name.to_string(), body.to_string()));
        } else if let Some(list) = arg.strip_prefix("-Wp,") {
            for part in list.split(',') {
                if let Some(def) = part.strip_prefix("-D") {
                    let (name, body) = def.split_once('=').unwrap_or((def, "1"));
                    out.defines.push((name.to_string(), body.to_string()));
                } else if part.starts_with("-I") || part.starts_with("-i") {
                    return Err(format!("{arg}: search options inside -Wp,"));
                }
            }
        }
    }
    out.dirs.extend(system.iter().cloned());
    out.dirs.push(cwd.to_string());
    out.pre_includes.push("stdc-predef.h".into());
    out.dirs.sort();
    out.dirs.dedup();
    Ok(out)
}

/// An include name as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Name {
    /// `"x.h"` or `<x.h>` (the scanner searches both the same way).
    Literal(String),
    /// `MACRO`.
    Macro(String),
}

/// Finds every file a compile of `source` (as given, relative to `cwd`) could open.
pub fn scan(source: &str, cwd: &str, dirs: &SearchDirs) -> Result<UnitFiles, SourcesError> {
    let unsafe_ = |why: String| SourcesError::Unsafe(why);
    let mut out = UnitFiles::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut defines: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, body) in &dirs.defines {
        defines.entry(name.clone()).or_default().push(body.clone());
    }
    let mut computed: HashSet<(String, String)> = HashSet::new(); // (macro, includer dir)

    let main = if source.starts_with('/') { source.to_string() } else { format!("{cwd}/{source}") };
    queue.push_back(main);
    for name in &dirs.pre_includes {
        for candidate in candidates(name, cwd, &dirs.dirs) {
            queue.push_back(candidate);
        }
    }
    let mut raw_paths = Vec::new();
    loop {
        while let Some(path) = queue.pop_front() {
            let Some(normal) = normalise(&path) else {
                return Err(unsafe_(format!("{path} climbs above /")));
            };
            if !seen.insert(normal.clone()) {
                continue;
            }
            if !Path::new(&path).is_file() {
                continue;
            }
            if seen.len() > MAX_FILES {
                return Err(unsafe_(format!("more than {MAX_FILES} candidate files")));
            }
            let content = std::fs::read(&path)
                .map_err(|source| SourcesError::Read { path: path.clone(), source })?;
            let includer = normal.rsplit_once('/').map_or("/", |(d, _)| d).to_string();
            let includer = if includer.is_empty() { "/".to_string() } else { includer };
            for name in directives(&content, &mut defines).map_err(unsafe_)? {
                match name {
                    Name::Literal(n) => queue.extend(candidates(&n, &includer, &dirs.dirs)),
                    Name::Macro(m) => {
                        computed.insert((m, includer.clone()));
                    }
                }
            }
            let digest = Digest::of(&content);
            raw_paths.push(path);
            out.files.push(SourceFile { path: normal, digest, size: content.len() as u64 });
            out.contents.entry(digest).or_insert(content);
        }
        // Computed includes, once everything they could be defined in has been read; a round
        // that reads new files may bring new definitions, so go again until nothing changes.
        let before = seen.len();
        for (name, includer) in &computed {
            for literal in expand(name, &defines, 0).map_err(unsafe_)? {
                queue.extend(candidates(&literal, includer, &dirs.dirs));
            }
        }
        queue.retain(|p| normalise(p).is_some_and(|n| !seen.contains(&n)));
        if queue.is_empty() && seen.len() == before {
            break;
        }
    }
    if out.files.is_empty() {
        return Err(unsafe_(format!("{source}: not found")));
    }
    if out.contents.values().any(|c| find(c, b"__TIMESTAMP__").is_some()) {
        return Err(unsafe_("__TIMESTAMP__ depends on file times".into()));
    }
    raw_paths.extend(dirs.raw_dirs.iter().map(|d| format!("{d}/")));
    crate::sources::check_dot_dots(&raw_paths, &out.files, cwd, &[])?;
    Ok(out)
}

/// Every path a name could resolve to: itself when absolute, else under the includer's
/// directory and every search directory.
fn candidates(name: &str, includer: &str, dirs: &[String]) -> Vec<String> {
    if name.starts_with('/') {
        return vec![name.to_string()];
    }
    std::iter::once(includer)
        .chain(dirs.iter().map(String::as_str))
        .map(|d| if d == "/" { format!("/{name}") } else { format!("{d}/{name}") })
        .collect()
}

/// Every literal a macro can stand for, through every definition seen.
fn expand(
    name: &str,
    defines: &BTreeMap<String, Vec<String>>,
    depth: usize,
) -> Result<Vec<String>, String> {
    if name.starts_with("__") {
        return Err(format!("#include {name}: a builtin macro"));
    }
    if depth > MAX_MACRO_DEPTH {
        return Err(format!("#include {name}: macros nest too deep"));
    }
    let Some(bodies) = defines.get(name) else {
        // Never defined anywhere: including it is an error wherever it runs.
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for body in bodies {
        match literal(body.trim()) {
            Some(Name::Literal(l)) => out.push(l),
            Some(Name::Macro(m)) => out.extend(expand(&m, defines, depth + 1)?),
            None => return Err(format!("#include {name}: macro body `{body}` is not a file name")),
        }
    }
    Ok(out)
}

/// `"x.h"`, `<x.h>` or an identifier; `None` for anything else.
fn literal(text: &str) -> Option<Name> {
    let bytes = text.as_bytes();
    match bytes.first()? {
        b'"' => {
            let end = text[1..].find('"')?;
            Some(Name::Literal(text[1..1 + end].to_string()))
        }
        b'<' => {
            let end = text.find('>')?;
            Some(Name::Literal(text[1..end].to_string()))
        }
        b if b.is_ascii_alphabetic() || *b == b'_' => {
            let end =
                text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len());
            text[end..].trim().is_empty().then(|| Name::Macro(text[..end].to_string()))
        }
        _ => None,
    }
}

/// The include names of one file (directives and `__has_include` probes), recording its
/// object-like `#define`s into `defines`.
fn directives(
    content: &[u8],
    defines: &mut BTreeMap<String, Vec<String>>,
) -> Result<Vec<Name>, String> {
    let mut names = Vec::new();
    let cleaned = strip_comments(content);
    for line in cleaned.split(|&b| b == b'\n') {
        let line = trim_start(line);
        if let Some(rest) = line.strip_prefix(b"#") {
            let rest = trim_start(rest);
            let keyword_end = rest.iter().position(|b| !b.is_ascii_alphabetic() && *b != b'_');
            let (keyword, args) = rest.split_at(keyword_end.unwrap_or(rest.len()));
            let args = String::from_utf8_lossy(trim_start(args)).trim_end().to_string();
            match keyword {
                b"include" | b"include_next" | b"import" => match literal(&args) {
                    Some(name) => names.push(name),
                    None => return Err(format!("#include {args}: not a file name")),
                },
                b"define" => record_define(&args, defines),
                _ => {}
            }
        }
        if find(line, b"__has_include").is_some() {
            for probe in probes(line)? {
                names.push(probe);
            }
        }
    }
    Ok(names)
}

/// `text` with comments blanked (newlines kept) and backslash-newlines spliced, as the
/// preprocessor sees it before directives; string and character literals are left alone.
fn strip_comments(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if b == b'\\' && text.get(i + 1) == Some(&b'\n') {
            i += 2;
            continue;
        }
        match b {
            b'/' if text.get(i + 1) == Some(&b'*') => {
                out.push(b' ');
                i += 2;
                while i < text.len() && !(text[i] == b'*' && text.get(i + 1) == Some(&b'/')) {
                    if text[i] == b'\n' {
                        out.push(b'\n');
                    }
                    i += 1;
                }
                i += 2;
            }
            b'/' if text.get(i + 1) == Some(&b'/') => {
                while i < text.len() && text[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' | b'\'' => {
                out.push(b);
                i += 1;
                while i < text.len() && text[i] != b && text[i] != b'\n' {
                    if text[i] == b'\\' && i + 1 < text.len() {
                        out.push(text[i]);
                        i += 1;
                    }
                    out.push(text[i]);
                    i += 1;
                }
                if i < text.len() && text[i] == b {
                    out.push(b);
                    i += 1;
                }
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn record_define(args: &str, defines: &mut BTreeMap<String, Vec<String>>) {
    let end = args.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(args.len());
    let (name, rest) = args.split_at(end);
    if name.is_empty() || rest.starts_with('(') {
        return; // function-like macros are never include names on their own
    }
    let body = rest.trim();
    // A continued body is recorded as unusable, so an include through it gives up.
    let body = if body.ends_with('\\') { "\\".to_string() } else { body.to_string() };
    defines.entry(name.to_string()).or_default().push(body);
}

/// `__has_include(…)`/`__has_include_next(…)` arguments in a line.
fn probes(line: &[u8]) -> Result<Vec<Name>, String> {
    const KEY: &[u8] = b"__has_include";
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(pos) = find(&line[at..], KEY) {
        let mut i = at + pos + KEY.len();
        at = i;
        if line[i..].starts_with(b"_next") {
            i += 5;
        }
        let rest = trim_start(&line[i..]);
        let Some(inner) = rest.strip_prefix(b"(") else { continue };
        let inner = String::from_utf8_lossy(trim_start(inner)).to_string();
        let close = inner.find(')').unwrap_or(inner.len());
        let arg = inner[..close].trim();
        match literal(arg) {
            Some(name) => out.push(name),
            None if arg.starts_with('"') || arg.starts_with('<') => {
                return Err(format!("__has_include({arg}): unterminated name"));
            }
            None => return Err(format!("__has_include({arg}): a computed name")),
        }
    }
    Ok(out)
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    &s[n..]
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_and_probes() {
        let text = b"#include \"a.h\"\n  #  include <b/c.h>\n#include_next <d.h>\n\
#if __has_include(<e.h>) && __has_include_next(\"f.h\")\n#endif\n#define USER \"g.h\"\n\
#include USER\n#define F(x) x\n// #include \"commented.h\"\n";
        let mut defines = BTreeMap::new();
        let names = directives(text, &mut defines).unwrap();
        let lit = |s: &str| Name::Literal(s.into());
        assert_eq!(
            names,
            [
                lit("a.h"),
                lit("b/c.h"),
                lit("d.h"),
                lit("e.h"),
                lit("f.h"),
                Name::Macro("USER".into())
            ]
        );
        assert_eq!(defines["USER"], ["\"g.h\""]);
        assert!(!defines.contains_key("F"));
    }

    #[test]
    fn comments_are_not_directives() {
        let text = b"/* a comment\n#include 's protect themselves\n*/\n#include \"real.h\" // x\n\
// #include \"line.h\"\nchar *s = \"/* not a comment\";\n#include \\\n  \"spliced.h\"\n";
        let mut defines = BTreeMap::new();
        let names = directives(text, &mut defines).unwrap();
        assert_eq!(names, [Name::Literal("real.h".into()), Name::Literal("spliced.h".into())]);
    }

    #[test]
    fn computed_includes_expand_through_every_definition() {
        let mut defines = BTreeMap::new();
        defines.insert("A".to_string(), vec!["B".to_string(), "<a.h>".to_string()]);
        defines.insert("B".to_string(), vec!["\"b.h\"".to_string()]);
        assert_eq!(expand("A", &defines, 0).unwrap(), ["b.h", "a.h"]);
        assert!(expand("NEVER", &defines, 0).unwrap().is_empty());
        assert!(expand("__FILE__", &defines, 0).is_err());
        defines.insert("C".to_string(), vec!["F(x)".to_string()]);
        assert!(expand("C", &defines, 0).is_err());
    }

    #[test]
    fn search_dirs_from_arguments() {
        let args: Vec<String> =
            "-Iinc -I /abs -isystem sys -iquote q -include pre.h -DX=\"y.h\" -Wp,-DZ -c a.c"
                .split_whitespace()
                .map(String::from)
                .collect();
        let d = search_dirs(&args, "/w", &["/usr/include".into()]).unwrap();
        for dir in ["/w/inc", "/abs", "/w/sys", "/w/q", "/usr/include", "/w"] {
            assert!(d.dirs.contains(&dir.to_string()), "{dir} missing from {:?}", d.dirs);
        }
        assert_eq!(d.pre_includes, ["pre.h", "stdc-predef.h"]);
        assert!(d.defines.contains(&("X".into(), "\"y.h\"".into())));
        assert!(d.defines.contains(&("Z".into(), "1".into())));
        assert!(search_dirs(&["-I-".to_string()], "/w", &[]).is_err());
    }
}
