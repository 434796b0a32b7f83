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
    let mut computed: HashSet<(String, String)> = HashSet::new(); // (macro, includer dir)
    // Directories found missing: the many names tried under them (`bits/…` in every search
    // directory) cost no `stat` each.
    let mut missing_dirs: HashSet<String> = HashSet::new();

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
            if !is_file(&path, &mut missing_dirs) {
                continue;
            }
            if seen.len() > MAX_FILES {
                return Err(unsafe_(format!("more than {MAX_FILES} candidate files")));
            }
            let content = std::fs::read(&path)
                .map_err(|source| SourcesError::Read { path: path.clone(), source })?;
            let includer = normal.rsplit_once('/').map_or("/", |(d, _)| d).to_string();
            let includer = if includer.is_empty() { "/".to_string() } else { includer };
            for name in directives(&content).map_err(unsafe_)? {
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
        let defines = definitions(computed.iter().map(|(m, _)| m), &dirs.defines, &out);
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

/// Whether `path` is a regular file (following links), remembering parent directories that do
/// not exist.
fn is_file(path: &str, missing_dirs: &mut HashSet<String>) -> bool {
    let parent = path.rsplit_once('/').map(|(dir, _)| dir).filter(|dir| !dir.is_empty());
    if parent.is_some_and(|dir| missing_dirs.contains(dir)) {
        return false;
    }
    if Path::new(path).is_file() {
        return true;
    }
    if let Some(dir) = parent {
        if std::fs::metadata(dir).is_err() {
            missing_dirs.insert(dir.to_string());
        }
    }
    false
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

/// Every definition of the macros computed includes name, and of the macros their bodies name
/// in turn: from the command line and every file read so far. Only files that mention a wanted
/// name are parsed for it, so a unit without computed includes costs nothing here.
fn definitions<'a>(
    wanted: impl Iterator<Item = &'a String>,
    command_line: &[(String, String)],
    files: &UnitFiles,
) -> BTreeMap<String, Vec<String>> {
    let mut defines: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut queue: Vec<String> = wanted.cloned().collect();
    while let Some(name) = queue.pop() {
        if defines.contains_key(&name) {
            continue;
        }
        let mut bodies: Vec<String> =
            command_line.iter().filter(|(n, _)| *n == name).map(|(_, b)| b.clone()).collect();
        for content in files.contents.values() {
            if find(content, name.as_bytes()).is_none() {
                continue;
            }
            for (_, keyword, args) in directive_lines(&strip_comments(content)) {
                if keyword == b"define" {
                    if let Some(body) = object_like_body(&String::from_utf8_lossy(args), &name) {
                        bodies.push(body);
                    }
                }
            }
        }
        for body in &bodies {
            if let Some(Name::Macro(m)) = literal(body.trim()) {
                queue.push(m);
            }
        }
        defines.insert(name, bodies);
    }
    defines
}

/// The directive lines of comment-free text: where each starts, its keyword and the rest.
fn directive_lines(cleaned: &[u8]) -> Vec<(usize, &[u8], &[u8])> {
    let mut out = Vec::new();
    let mut next_line = 0;
    for hash in memchr::memchr_iter(b'#', cleaned) {
        if hash < next_line {
            continue;
        }
        let (start, end) = line_around(cleaned, hash);
        next_line = end;
        if !trim_start(&cleaned[start..hash]).is_empty() {
            continue; // a `#` inside a line, not a directive
        }
        let rest = trim_start(&cleaned[hash + 1..end]);
        let keyword_end = rest.iter().position(|b| !b.is_ascii_alphabetic() && *b != b'_');
        let (keyword, args) = rest.split_at(keyword_end.unwrap_or(rest.len()));
        out.push((hash, keyword, trim_start(args)));
    }
    out
}

/// The bounds of the line holding `pos`.
fn line_around(text: &[u8], pos: usize) -> (usize, usize) {
    let start = memchr::memrchr(b'\n', &text[..pos]).map_or(0, |n| n + 1);
    let end = memchr::memchr(b'\n', &text[pos..]).map_or(text.len(), |n| pos + n);
    (start, end)
}

/// The include names of one file (directives and `__has_include` probes), in file order.
/// Only lines that hold a `#` or a probe are looked at.
fn directives(content: &[u8]) -> Result<Vec<Name>, String> {
    let cleaned = strip_comments(content);
    let mut names = Vec::new();
    for (at, keyword, args) in directive_lines(&cleaned) {
        if matches!(keyword, b"include" | b"include_next" | b"import") {
            let args = String::from_utf8_lossy(args).trim_end().to_string();
            match literal(&args) {
                Some(name) => names.push((at, name)),
                None => return Err(format!("#include {args}: not a file name")),
            }
        }
    }
    let mut probed_to = 0;
    for hit in memchr::memmem::find_iter(&cleaned, b"__has_include") {
        if hit < probed_to {
            continue;
        }
        let (start, end) = line_around(&cleaned, hit);
        probed_to = end;
        names.extend(probes(&cleaned[start..end])?.into_iter().map(|name| (hit, name)));
    }
    names.sort_by_key(|(at, _)| *at);
    Ok(names.into_iter().map(|(_, name)| name).collect())
}

/// `text` as the preprocessor sees it before directives: backslash-newlines spliced (first, as
/// in translation phase 2), then comments blanked with their newlines kept; string and
/// character literals are left alone. Plain runs are copied whole, found with `memchr`.
fn strip_comments(text: &[u8]) -> Vec<u8> {
    let spliced;
    let text = if find(text, b"\\\n").is_some() {
        spliced = splice_lines(text);
        &spliced[..]
    } else {
        text
    };
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let Some(at) = memchr::memchr3(b'/', b'"', b'\'', &text[i..]) else {
            out.extend_from_slice(&text[i..]);
            break;
        };
        out.extend_from_slice(&text[i..i + at]);
        i += at;
        let b = text[i];
        match (b, text.get(i + 1)) {
            (b'/', Some(b'*')) => {
                out.push(b' ');
                let body = &text[i + 2..];
                let len = find(body, b"*/").unwrap_or(body.len());
                out.extend(std::iter::repeat_n(
                    b'\n',
                    memchr::memchr_iter(b'\n', &body[..len]).count(),
                ));
                i += 2 + len + 2;
            }
            (b'/', Some(b'/')) => {
                i += memchr::memchr(b'\n', &text[i..]).unwrap_or(text.len() - i);
            }
            (b'"' | b'\'', _) => {
                // A literal runs to its closing quote or the end of the line.
                out.push(b);
                i += 1;
                while i < text.len() {
                    let Some(at) = memchr::memchr3(b, b'\\', b'\n', &text[i..]) else {
                        out.extend_from_slice(&text[i..]);
                        i = text.len();
                        break;
                    };
                    out.extend_from_slice(&text[i..i + at]);
                    i += at;
                    match text[i] {
                        b'\\' => {
                            out.extend_from_slice(&text[i..(i + 2).min(text.len())]);
                            i += 2;
                        }
                        b'\n' => break,
                        _ => {
                            out.push(b);
                            i += 1;
                            break;
                        }
                    }
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

/// `text` without its backslash-newlines.
fn splice_lines(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut at = 0;
    for hit in memchr::memmem::find_iter(text, b"\\\n") {
        out.extend_from_slice(&text[at..hit]);
        at = hit + 2;
    }
    out.extend_from_slice(&text[at..]);
    out
}

/// The body of `#define ARGS` when it defines `name` as an object-like macro.
fn object_like_body(args: &str, name: &str) -> Option<String> {
    let end = args.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(args.len());
    let (defined, rest) = args.split_at(end);
    // Function-like macros are never include names on their own.
    (defined == name && !rest.starts_with('(')).then(|| rest.trim().to_string())
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
        let names = directives(text).unwrap();
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
        let defines = definitions(["USER".to_string(), "F".to_string()].iter(), &[], &files(text));
        assert_eq!(defines["USER"], ["\"g.h\""]);
        assert!(defines["F"].is_empty(), "function-like macros are not include names");
    }

    fn files(text: &[u8]) -> UnitFiles {
        let mut files = UnitFiles::default();
        files.contents.insert(Digest::of(text), text.to_vec());
        files
    }

    #[test]
    fn comments_are_not_directives() {
        let text = b"/* a comment\n#include 's protect themselves\n*/\n#include \"real.h\" // x\n\
// #include \"line.h\"\nchar *s = \"/* not a comment\";\n#include \\\n  \"spliced.h\"\n";
        let names = directives(text).unwrap();
        assert_eq!(names, [Name::Literal("real.h".into()), Name::Literal("spliced.h".into())]);
    }

    #[test]
    fn splices_come_before_comments_as_in_the_preprocessor() {
        // A line comment ending in a backslash swallows the next line; a `#` inside a line or
        // inside a literal is not a directive; quotes in character literals end there.
        let text = b"// continued \\\n#include \"hidden.h\"\nint x = a # b;\n\
char q = '\"'; const char *s = \"#include <nope.h>\";\n  #   include <after.h>\n\
#def\\\nine SPLIT \"split.h\"\n";
        let names = directives(text).unwrap();
        assert_eq!(names, [Name::Literal("after.h".into())]);
        let defines = definitions(["SPLIT".to_string()].iter(), &[], &files(text));
        assert_eq!(defines["SPLIT"], ["\"split.h\""]);
    }

    #[test]
    fn definitions_follow_macro_chains_from_files_and_the_command_line() {
        let text = b"#define A B\n#define A <a.h>\n#  define B \"b.h\"\n#define BB \"no.h\"\n";
        let cmd = [("A".to_string(), "\"cmd.h\"".to_string())];
        let defines = definitions(["A".to_string()].iter(), &cmd, &files(text));
        assert_eq!(defines["A"], ["\"cmd.h\"", "B", "<a.h>"]);
        assert_eq!(defines["B"], ["\"b.h\""]);
        assert!(!defines.contains_key("BB"));
        assert_eq!(expand("A", &defines, 0).unwrap(), ["cmd.h", "b.h", "a.h"]);
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
