//! Compiler diagnostics through discomy-cc (with a live farm) are exactly gcc's: stdout, stderr,
//! exit status and produced files, for errors, warnings (also inside macro expansions and
//! headers) and clean compiles.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs;

use discomy_tests::{
    Farm, ShowOnFailure, assert_no_temp_leftovers, bin, capture, clean_command, diff_captures,
    private_tmp, read_stats,
};

/// Which outcomes the wrapper's stats may report for a file. The wrapper replays any compile with
/// diagnostics locally (for exact output), so those are `fallback`; a clean one must be remote.
/// `local` would mean the farm was never tried, which would make the comparison vacuous.
const REMOTE: &[&str] = &["remote"];
const TRIED: &[&str] = &["remote", "fallback"];

/// (file, contents, whether the compile should succeed, the allowed stats outcomes)
const SOURCES: &[(&str, &str, bool, &[&str])] = &[
    (
        "error.c",
        "#define USE(x) ((x) + undeclared_in_macro)\n\
         int f(int a) { return USE(a); }\n\
         int g(void) { return undeclared_plain; }\n",
        false,
        TRIED,
    ),
    (
        "warn.c",
        "#define DECLARE_UNUSED(name) int name = 0\n\
         static int unused_function(void) { return 1; }\n\
         int f(int a)\n\
         {\n\
         \tint unused_plain;\n\
         \tDECLARE_UNUSED(unused_in_macro);\n\
         \tif (a = 2)\n\
         \t\treturn 1;\n\
         \treturn 0;\n\
         }\n",
        true,
        TRIED,
    ),
    (
        "warn_header.c",
        "#include \"warn_header.h\"\n\
         int main(void) { return helper(); }\n",
        true,
        TRIED,
    ),
    (
        "clean.c",
        "#include <stdio.h>\n\
         #define GREETING \"hello\"\n\
         int main(void) { printf(\"%s %d\\n\", GREETING, __LINE__); return 0; }\n",
        true,
        REMOTE,
    ),
    ("missing_include.c", "#include \"does_not_exist.h\"\nint x;\n", false, TRIED),
];

const HEADER: &str = "static inline int helper(void)\n{\n\tint unused_in_header;\n\treturn 0;\n}\n";

#[test]
fn diagnostics_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = tmp.path().join("work");
    fs::create_dir(&work).expect("mkdir work");
    fs::write(work.join("warn_header.h"), HEADER).expect("write header");
    for (name, text, _, _) in SOURCES {
        fs::write(work.join(name), text).expect("write source");
    }
    let mut farm = Farm::start(tmp.path(), 1, 2);
    let stats_path = tmp.path().join("stats.tsv");
    let wrapper_tmp = private_tmp(tmp.path(), "wrapper");
    let mut show = ShowOnFailure::default();
    show.add("wrapper stats", &stats_path);

    let mut problems = Vec::new();
    for (name, _, should_succeed, allowed) in SOURCES {
        let object = name.replace(".c", ".o");
        let args = ["-Wall", "-c", name, "-o", &object];

        let mut gcc = clean_command("gcc");
        gcc.args(args);
        let expected = capture(&work, &mut gcc);

        let mut ours = clean_command(bin("discomy-cc"));
        ours.arg("gcc")
            .args(args)
            .env("DISCOMY_SOCKET", &farm.agent.socket)
            .env("DISCOMY_STATS_FILE", &stats_path)
            .env("TMPDIR", &wrapper_tmp);
        let before = read_stats(&stats_path).len();
        let actual = capture(&work, &mut ours);
        let after = read_stats(&stats_path);

        // The test's premise: gcc did what the source was written to make it do.
        assert_eq!(
            expected.code == Some(0),
            *should_succeed,
            "{name}: unexpected gcc result {:?}: {}",
            expected.code,
            String::from_utf8_lossy(&expected.stderr)
        );
        if !should_succeed {
            assert!(!expected.stderr.is_empty(), "{name}: gcc failed without a message");
            assert!(
                !expected.files.contains_key(&object),
                "{name}: gcc left an object behind on failure"
            );
        } else {
            assert!(expected.files.contains_key(&object), "{name}: gcc produced no object");
        }
        if *name != "clean.c" {
            assert!(!expected.stderr.is_empty(), "{name}: gcc printed no diagnostics");
        }

        problems.extend(diff_captures(name, &expected, &actual));
        let new = &after[before.min(after.len())..];
        eprintln!("[e2e] {name}: gcc exit {:?}, stats {new:?}", expected.code);
        if new.len() != 1 {
            problems.push(format!("{name}: expected one stats line, got {new:?}"));
        } else if !allowed.contains(&new[0].outcome.as_str()) {
            problems.push(format!(
                "{name}: expected an outcome in {allowed:?}, stats say {:?}",
                new[0]
            ));
        }
        if new.iter().any(|l| Some(l.exit_code) != expected.code) {
            problems.push(format!("{name}: stats exit code {new:?} vs gcc {:?}", expected.code));
        }
    }
    farm.assert_alive();
    assert_no_temp_leftovers(&wrapper_tmp, "discomy-cc");
    assert!(problems.is_empty(), "discomy-cc differs from gcc:\n{}", problems.join("\n"));
}
