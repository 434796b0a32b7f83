//! Dependency files (`-MD`, `-MMD`, `-MF`, `-MT`, `-MQ`, `-MP`) and objects produced through
//! discomy-cc on a live farm are byte-identical to gcc's, and the compiles ran remotely.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs;

use discomy_tests::{
    Farm, ShowOnFailure, assert_no_temp_leftovers, bin, capture, clean_command, diff_captures,
    extract_lua, private_tmp, read_stats,
};

/// Lua's own flags for the `linux` target.
const BASE: &[&str] =
    &["-std=gnu99", "-O2", "-Wall", "-Wextra", "-DLUA_COMPAT_5_3", "-DLUA_USE_LINUX"];
const SOURCES: &[&str] = &["lapi.c", "lstring.c", "lua.c"];

/// Dependency options, then the output options (`{}` is the source's base name).
fn variants(stem: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|a| a.replace("{}", stem)).collect::<Vec<_>>();
    vec![
        (s(&["-MD"]), s(&["-o", "{}.o"])),
        (s(&["-MMD"]), s(&["-o", "{}.o"])),
        (s(&["-MD", "-MF", "custom.d"]), s(&["-o", "{}.o"])),
        (s(&["-MMD", "-MT", "tgt", "-MQ", "q$x"]), s(&["-o", "{}.o"])),
        (s(&["-MD", "-MP"]), s(&["-o", "{}.o"])),
        (s(&["-MD"]), s(&["-o", "sub/obj.o"])),
        (s(&["-MMD", "-MP"]), vec![]),
    ]
}

#[test]
fn dependency_files_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = extract_lua(tmp.path());
    let src = tree.join("src");
    fs::create_dir(src.join("sub")).expect("mkdir sub");
    let mut farm = Farm::start(tmp.path(), 1, 2);
    let stats_path = tmp.path().join("stats.tsv");
    let wrapper_tmp = private_tmp(tmp.path(), "wrapper");
    let mut show = ShowOnFailure::default();
    show.add("wrapper stats", &stats_path);

    let mut problems = Vec::new();
    let mut runs = 0;
    for source in SOURCES {
        let stem = source.trim_end_matches(".c");
        for (deps, output) in variants(stem) {
            let mut args: Vec<String> = BASE.iter().map(|a| (*a).to_owned()).collect();
            args.extend(deps);
            args.extend(["-c".to_owned(), (*source).to_owned()]);
            args.extend(output);
            let what = format!("gcc {}", args.join(" "));

            let mut gcc = clean_command("gcc");
            gcc.args(&args);
            let expected = capture(&src, &mut gcc);
            assert_eq!(
                expected.code,
                Some(0),
                "{what}: {}",
                String::from_utf8_lossy(&expected.stderr)
            );
            assert!(
                expected.files.keys().any(|f| f.ends_with(".d")),
                "{what}: gcc wrote no dependency file: {:?}",
                expected.files.keys().collect::<Vec<_>>()
            );

            let mut ours = clean_command(bin("discomy-cc"));
            ours.arg("gcc")
                .args(&args)
                .env("DISCOMY_SOCKET", &farm.agent.socket)
                .env("DISCOMY_STATS_FILE", &stats_path)
                .env("TMPDIR", &wrapper_tmp);
            let before = read_stats(&stats_path).len();
            let actual = capture(&src, &mut ours);
            let after = read_stats(&stats_path);
            runs += 1;

            problems.extend(diff_captures(&what, &expected, &actual));
            let new = &after[before.min(after.len())..];
            if new.len() != 1 || new[0].outcome != "remote" {
                problems
                    .push(format!("{what}: expected one remote compile in the stats, got {new:?}"));
            }
            eprintln!(
                "[e2e] {what}: files {:?}, stats {new:?}",
                expected.files.keys().collect::<Vec<_>>()
            );
        }
    }
    farm.assert_alive();
    assert_no_temp_leftovers(&wrapper_tmp, "discomy-cc");
    assert!(
        problems.is_empty(),
        "{} problems over {runs} compiles:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
