//! Cache keys: what a compile result depends on, hashed with blake3.
//!
//! The common part covers the compiler identity (the toolchain manifest digest, which includes
//! every `-specs=` file and `-fplugin=` plugin by content), the name the compiler was called by,
//! the canonical arguments (output and dependency-file names removed; the output name is kept
//! when a dependency file names it as its target), the language and output kind, and the
//! environment variables gcc reads. The scanned key adds every file the include scanner found,
//! by path and content ([`scanned`]); the preprocessed key (where the scanner gives up) adds the
//! unit with gcc's working-directory marker taken out; the direct key adds the source file's
//! content.

use std::os::unix::fs::MetadataExt;

use discomy_protocol::sources::FarmKeyFacts;
use discomy_protocol::{Language, OutputKind};

/// Version of the keying rules; bump to invalidate every entry when they change.
const KEY_VERSION: &[u8] = b"discomy-cache-key-v3";

/// Environment variables that change what gcc does or prints.
const ENV_KEYS: &[&str] = &[
    "SOURCE_DATE_EPOCH",
    "CPATH",
    "C_INCLUDE_PATH",
    "CPLUS_INCLUDE_PATH",
    "OBJC_INCLUDE_PATH",
    "GCC_EXEC_PREFIX",
    "COMPILER_PATH",
    "LIBRARY_PATH",
    "GCC_COMPARE_DEBUG",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "GCC_COLORS",
    "GCC_URLS",
];

/// Environment variables that make gcc write files we would not reproduce: uncacheable.
pub const ENV_UNCACHEABLE: &[&str] = &["DEPENDENCIES_OUTPUT", "SUNPRO_DEPENDENCIES"];

/// Arguments without the names of the files the compile writes. `keep_output` keeps `-o` (a
/// dependency file names the output as its target).
pub fn canonical_args(args: &[String], keep_output: bool) -> Vec<&str> {
    let mut out = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "-MF" || (a == "-o" && !keep_output) {
            i += 2;
            continue;
        }
        if (a.starts_with("-MF") && a.len() > 3)
            || (a.starts_with("-o") && a.len() > 2 && !keep_output)
        {
            i += 1;
            continue;
        }
        out.push(a);
        i += 1;
    }
    out
}

/// The hashing context shared by both keys.
pub fn common(
    identity: &[u8; 32],
    compiler_name: &str,
    args: &[&str],
    language: Language,
    output: OutputKind,
) -> blake3::Hasher {
    let mut h = blake3::Hasher::new();
    field(&mut h, KEY_VERSION);
    field(&mut h, identity);
    field(&mut h, compiler_name.as_bytes());
    field(&mut h, format!("{language:?}/{output:?}").as_bytes());
    field(&mut h, &(args.len() as u64).to_le_bytes());
    for a in args {
        field(&mut h, a.as_bytes());
    }
    for k in ENV_KEYS {
        match std::env::var_os(k) {
            Some(v) => field(&mut h, format!("{k}={}", v.to_string_lossy()).as_bytes()),
            None => field(&mut h, format!("{k} unset").as_bytes()),
        }
    }
    h
}

/// Length-prefixed update, so fields cannot run into each other.
pub fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// The working directory as gcc names it (libiberty's `getpwd`): `$PWD` when it names the same
/// directory as `.`, else `getcwd`.
pub fn gcc_pwd() -> Option<String> {
    let dot = std::fs::metadata(".").ok()?;
    if let Some(pwd) = std::env::var_os("PWD").and_then(|p| p.into_string().ok()) {
        if pwd.starts_with('/') {
            if let Ok(m) = std::fs::metadata(&pwd) {
                if m.dev() == dot.dev() && m.ino() == dot.ino() {
                    return Some(pwd);
                }
            }
        }
    }
    std::env::current_dir().ok()?.into_os_string().into_string().ok()
}

/// The unit without gcc's working-directory marker line (`# 1 "<cwd>//"`, present with `-g`),
/// and whether the result is independent of the working directory: the directory then appears
/// nowhere else in the unit. When it does, the unit is returned whole (the key then depends on
/// the directory through it).
pub fn strip_cwd_marker<'a>(unit: &'a [u8], cwd: &str) -> (std::borrow::Cow<'a, [u8]>, bool) {
    let marker = format!("\n# 1 \"{cwd}//\"\n");
    let head = &unit[..unit.len().min(4096)];
    let stripped: std::borrow::Cow<'a, [u8]> = match find(head, marker.as_bytes()) {
        Some(at) => {
            let mut v = Vec::with_capacity(unit.len());
            v.extend_from_slice(&unit[..at]);
            v.extend_from_slice(&unit[at + marker.len() - 1..]);
            std::borrow::Cow::Owned(v)
        }
        None => std::borrow::Cow::Borrowed(unit),
    };
    let independent = find(&stripped, cwd.as_bytes()).is_none();
    if independent { (stripped, true) } else { (std::borrow::Cow::Borrowed(unit), false) }
}

/// First position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= haystack.len() {
        match haystack[i..haystack.len() - needle.len() + 1].iter().position(|&c| c == first) {
            None => return None,
            Some(p) => {
                i += p;
                if &haystack[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// Whether the arguments ask for LTO objects (the last `-flto…`/`-fno-lto` wins).
pub fn is_lto(args: &[String]) -> bool {
    args.iter().fold(false, |on, a| match a.as_str() {
        "-fno-lto" => false,
        "-flto" => true,
        _ if a.starts_with("-flto=") => true,
        _ => on,
    })
}

/// The result key of a scanned unit: the common part, then every file the include scanner found
/// (the compile can open no other), by path and content. Paths under the working directory are
/// keyed relative to it, so the same tree elsewhere gives the same key, unless the working
/// directory shows anywhere else (the arguments, a file's text), the unit is LTO, or `$PWD` and
/// the real directory differ: the key then holds the directory. Also returns the files, as a
/// direct-mode manifest lists them, and whether the key is independent of the directory.
pub fn scanned(
    mut h: blake3::Hasher,
    scan: &crate::source_mode::Scanned,
    canon: &[&str],
    cwd: &str,
    lto: bool,
) -> Result<Scanned, String> {
    let unit = &scan.files;
    // The directory the scan named files under (the PWD gcc reports may be another name of it),
    // which is the source-mode unit's: the files' facts serve its farm-tier key too.
    let real = scan.cwd.as_str();
    let facts = FarmKeyFacts::of_files(unit.contents.values().map(Vec::as_slice), real);
    if !facts.cacheable {
        return Err("a file uses __DATE__, __TIME__ or __TIMESTAMP__".into());
    }
    let independent =
        !lto && real == cwd && !canon.iter().any(|a| a.contains(cwd)) && facts.cwd_independent;
    let prefix = format!("{real}/");
    let mut files: Vec<super::direct::FileDigest> = unit
        .files
        .iter()
        .map(|f| super::direct::FileDigest {
            path: f.path.strip_prefix(&prefix).map_or_else(|| f.path.clone(), str::to_string),
            size: f.size,
            digest: f.digest.0,
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    field(&mut h, b"scanned");
    field(&mut h, if independent { b"" } else { cwd.as_bytes() });
    field(&mut h, &(files.len() as u64).to_le_bytes());
    for f in &files {
        field(&mut h, f.path.as_bytes());
        field(&mut h, &f.digest);
    }
    Ok(Scanned { key: *h.finalize().as_bytes(), files, independent, facts })
}

/// A scanned key and what came with it.
pub struct Scanned {
    /// The result key.
    pub key: [u8; 32],
    /// The files, by path relative to the build directory where under it, sorted.
    pub files: Vec<super::direct::FileDigest>,
    /// The key leaves the working directory out.
    pub independent: bool,
    /// The files' facts for the unit's farm-tier key (computed once, here).
    pub facts: FarmKeyFacts,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn canonical_args_drop_output_names() {
        let a = v("-O2 -MD -MF x.d -MFy.d -c a.c -o a.o");
        assert_eq!(canonical_args(&a, false), ["-O2", "-MD", "-c", "a.c"]);
        assert_eq!(canonical_args(&a, true), ["-O2", "-MD", "-c", "a.c", "-o", "a.o"]);
    }

    #[test]
    fn marker_is_stripped_only_when_the_cwd_is_nowhere_else() {
        let unit = b"# 0 \"a.c\"\n# 1 \"/w/d//\"\n# 0 \"<built-in>\"\nint x;\n";
        let (s, ind) = strip_cwd_marker(unit, "/w/d");
        assert!(ind);
        assert_eq!(&s[..], b"# 0 \"a.c\"\n# 0 \"<built-in>\"\nint x;\n");
        let unit = b"# 0 \"a.c\"\n# 1 \"/w/d//\"\n# 1 \"/w/d/inc/x.h\" 1\n";
        let (s, ind) = strip_cwd_marker(unit, "/w/d");
        assert!(!ind);
        assert_eq!(&s[..], &unit[..]);
        // The preprocessed key's time-macro check is the farm key's (no directory to find).
        assert!(!FarmKeyFacts::of_file(b"x = __TIME__;", "").cacheable);
        assert!(FarmKeyFacts::of_file(b"x = TIME;", "").cacheable);
    }
}
