//! The include scanner finds a superset of what gcc opens: for every Lua source (with Lua's own
//! flags and with Rocky-style flags), every file in gcc's own full dependency list (`-M`, system
//! headers included) is among the scanner's files. And cases built to trip a textual scanner
//! (a computed include defined on the command line, `#include_next`, `__has_include`, a header
//! reached through `..`, a commented-out include) are either found or refused, never missed.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use discomy_protocol::{Digest, Language};
use discomy_tests::{clean_command, extract_lua};
use discomy_wrapper::scan::{scan, search_dirs};
use discomy_wrapper::sources::normalise;
use discomy_wrapper::sysdirs::system_dirs;

fn strings(args: &str) -> Vec<String> {
    args.split_whitespace().map(String::from).collect()
}

/// gcc's own list of the files a compile opens (`-M`, every header), absolute and normalised.
fn gcc_deps(dir: &Path, args: &[String], source: &str) -> BTreeSet<String> {
    let out = clean_command("gcc")
        .current_dir(dir)
        .args(args.iter().filter(|a| *a != "-c" && *a != source))
        .args(["-M", "-MF", "-", source])
        .output()
        .unwrap();
    assert!(out.status.success(), "gcc -M {source}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap().replace("\\\n", " ");
    let (_, deps) = text.split_once(':').unwrap();
    deps.split_whitespace()
        .map(|p| {
            let abs =
                if p.starts_with('/') { p.to_string() } else { format!("{}/{p}", dir.display()) };
            normalise(&abs).unwrap()
        })
        .collect()
}

/// Asserts the scanner's files include everything gcc opens; returns (gcc's count, scanned).
fn check(dir: &Path, args: &[String], source: &str) -> (usize, usize) {
    let cwd = dir.to_str().unwrap();
    let system = system_dirs(
        Path::new("/usr/bin/gcc"),
        &Digest::of(b"system gcc"),
        Language::C,
        args,
        &std::env::var_os("PATH").unwrap(),
    )
    .unwrap();
    let dirs = search_dirs(args, cwd, &system).unwrap();
    let files = scan(source, cwd, &dirs).unwrap_or_else(|e| panic!("scan {source}: {e}"));
    let scanned: BTreeSet<String> = files.files.iter().map(|f| f.path.clone()).collect();
    let needed = gcc_deps(dir, args, source);
    let missed: Vec<&String> = needed.difference(&scanned).collect();
    assert!(missed.is_empty(), "{source} {args:?}: the scanner missed {missed:?}");
    (needed.len(), scanned.len())
}

#[test]
fn scanner_finds_everything_gcc_opens_in_lua() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = extract_lua(tmp.path()).canonicalize().unwrap();
    let src = tree.join("src");
    let flag_sets = [
        strings("-std=gnu99 -O2 -Wall -Wextra -DLUA_COMPAT_5_3 -DLUA_USE_LINUX"),
        strings(
            "-O2 -g -grecord-gcc-switches -pipe -Wall -Werror=format-security \
             -Wp,-D_FORTIFY_SOURCE=2 -Wp,-D_GLIBCXX_ASSERTIONS -fexceptions \
             -fstack-protector-strong -m64 -mtune=generic -fasynchronous-unwind-tables \
             -fstack-clash-protection -fcf-protection -DLUA_USE_LINUX -D_GNU_SOURCE",
        ),
    ];
    let mut sources: Vec<String> = fs::read_dir(&src)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".c"))
        .collect();
    sources.sort();
    assert!(sources.len() >= 30, "expected Lua's sources, found {sources:?}");
    for args in &flag_sets {
        let (mut needed, mut scanned) = (0, 0);
        for source in &sources {
            let (n, s) = check(&src, args, source);
            needed += n;
            scanned += s;
        }
        eprintln!(
            "[e2e] {} sources: gcc opens {needed} files in all, the scanner ships {scanned}",
            sources.len()
        );
    }
}

#[test]
fn tricky_includes_are_found_or_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    for sub in ["inc", "inc2", "build", "src"] {
        fs::create_dir(dir.join(sub)).unwrap();
    }
    let write = |p: &str, text: &str| fs::write(dir.join(p), text).unwrap();
    write("inc/user.h", "#define FROM_USER 1\n");
    write("inc/next.h", "#include_next <next.h>\n");
    write("inc2/next.h", "#define NEXT 2\n");
    write("inc/probe.h", "#if __has_include(\"probed.h\")\n#define PROBED 1\n#endif\n");
    write("inc2/probed.h", "/* only probed */\n");
    write("up.h", "#define UP 1\n");
    write(
        "src/main.c",
        "/*\n#include \"ghost.h\"\n*/\n#include USER_HEADER\n#include <next.h>\n\
         #include \"probe.h\"\n#include \"../up.h\"\nint x = FROM_USER + NEXT + UP;\n",
    );
    let args = strings("-DUSER_HEADER=\"user.h\" -Iinc -Iinc2 -c src/main.c");
    // gcc itself compiles it (so the case is real), and the scanner misses nothing it opened.
    let (needed, scanned) = check(&dir, &args, "src/main.c");
    eprintln!("[e2e] tricky unit: gcc opens {needed} files, the scanner ships {scanned}");
    let cwd = dir.to_str().unwrap();
    let system = system_dirs(
        Path::new("/usr/bin/gcc"),
        &Digest::of(b"system gcc"),
        Language::C,
        &args,
        &std::env::var_os("PATH").unwrap(),
    )
    .unwrap();
    let files = scan("src/main.c", cwd, &search_dirs(&args, cwd, &system).unwrap()).unwrap();
    let has = |p: &str| files.files.iter().any(|f| f.path == format!("{cwd}/{p}"));
    assert!(has("inc2/probed.h"), "a file only probed by __has_include must be shipped");
    assert!(has("inc/next.h") && has("inc2/next.h"), "both candidates of next.h must be shipped");

    // A computed include through a macro with a non-literal body: refused, not guessed.
    write("src/odd.c", "#define CAT(a) a\n#define HDR CAT(<user.h>)\n#include HDR\n");
    let err = scan("src/odd.c", cwd, &search_dirs(&args, cwd, &system).unwrap());
    assert!(err.is_err(), "a computed include through a function-like macro must be refused");

    // `..` after a directory nothing shipped lives in (build/ is empty): refused.
    write("src/far.c", "#include \"../build/../up.h\"\n");
    let err = scan("src/far.c", cwd, &search_dirs(&args, cwd, &system).unwrap());
    assert!(err.is_err(), "`..` through a directory absent remotely must be refused");
}
