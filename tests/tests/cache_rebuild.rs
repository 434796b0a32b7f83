//! The object cache on a real project (Lua, `MYCFLAGS=-g`, through `discomy run`):
//! a cold build fills it, a warm rebuild is all hits, the same sources unpacked into another
//! directory (a version bump) hit at least 99 % of the time, every object byte-identical to a
//! local compile in that directory, debug information included; a corrupted entry is detected,
//! recompiled, and the build stays correct.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::fs;
use std::path::{Path, PathBuf};

use discomy_tests::{
    MAKE_JOBS, ShowOnFailure, Summary, assert_lua_runs, assert_same_objects, discomy_run,
    extract_lua, make_clean, make_lua, objects, read_summary, run_to_success,
};

/// `discomy run --local-farm 1 -- make -C src linux MYCFLAGS=-g` with the cache on in `cache`.
fn cached_build(tree: &Path, scratch: &Path, cache: &Path, name: &str) -> Summary {
    let summary = scratch.join(format!("{name}.json"));
    let mut cmd = discomy_run(tree, scratch);
    cmd.env("DISCOMY_CACHE", "1")
        .env("DISCOMY_CACHE_DIR", cache)
        .args(["--local-farm", "1", "--summary-json"])
        .arg(&summary)
        .args(["--", "make", "-C", "src", MAKE_JOBS, "linux", "MYCFLAGS=-g"]);
    run_to_success(name, &mut cmd, scratch);
    let s = read_summary(&summary);
    eprintln!("[e2e] {name}: {}", s.raw.trim());
    assert_eq!(s.failed, 0, "{name}: {}", s.raw);
    s
}

/// Every result entry in the cache.
fn result_entries(cache: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in fs::read_dir(cache.join("objects")).unwrap().filter_map(Result::ok) {
        if d.path().is_dir() {
            for f in fs::read_dir(d.path()).unwrap().filter_map(Result::ok) {
                if f.path().extension().is_some_and(|e| e == "r") {
                    out.push(f.path());
                }
            }
        }
    }
    out
}

#[test]
fn cache_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let first = tmp.path().join("BUILD-1");
    fs::create_dir_all(&first).unwrap();
    let tree = extract_lua(&first);
    let mut show = ShowOnFailure::default();
    show.add("cache stats", &cache.join("objects").join("stats"));

    make_lua(&tree, "make-local-g", &["MYCFLAGS=-g"], tmp.path());
    let reference = objects(&tree.join("src"));
    make_clean(&tree, tmp.path());

    let cold = cached_build(&tree, tmp.path(), &cache, "cold");
    assert_same_objects(&reference, &objects(&tree.join("src")), "cold cached build");
    assert!(cold.units >= 30, "{}", cold.raw);
    assert_eq!(cold.cache_hits, 0, "an empty cache cannot hit: {}", cold.raw);

    make_clean(&tree, tmp.path());
    let warm = cached_build(&tree, tmp.path(), &cache, "warm");
    assert_same_objects(&reference, &objects(&tree.join("src")), "warm rebuild");
    assert_eq!(warm.cache_hits, warm.units, "the warm rebuild must be all hits: {}", warm.raw);
    assert_lua_runs(&tree);

    // Corrupt one entry on disk (one flipped byte in the object): detected, recompiled, correct.
    let entries = result_entries(&cache);
    assert!(entries.len() >= 30, "{} result entries", entries.len());
    let victim = &entries[0];
    let mut bytes = fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    fs::write(victim, bytes).unwrap();
    make_clean(&tree, tmp.path());
    let healed = cached_build(&tree, tmp.path(), &cache, "corrupt");
    assert_same_objects(&reference, &objects(&tree.join("src")), "build over a corrupt entry");
    assert_eq!(healed.cache_hits, healed.units - 1, "exactly one miss: {}", healed.raw);
    let stats = run_to_success(
        "stats",
        discomy_tests::clean_command(discomy_tests::bin("discomy-cc"))
            .arg("--stats")
            .env("DISCOMY_CACHE_DIR", &cache),
        tmp.path(),
    )
    .stdout_text();
    eprintln!("{stats}");
    let errors = stats.lines().find(|l| l.starts_with("errors")).unwrap();
    assert!(errors.trim_end().ends_with(" 1"), "one corrupt entry counted: {errors}");

    // The same sources in another build directory (rpmbuild's BUILD/<name>-<version>): a longer
    // path. Reference: a plain local build there.
    let second = tmp.path().join("BUILD-2-after-a-version-bump");
    fs::create_dir_all(&second).unwrap();
    let moved = extract_lua(&second);
    make_lua(&moved, "make-local-g-moved", &["MYCFLAGS=-g"], tmp.path());
    let moved_reference = objects(&moved.join("src"));
    make_clean(&moved, tmp.path());
    let other = cached_build(&moved, tmp.path(), &cache, "other-directory");
    assert_same_objects(&moved_reference, &objects(&moved.join("src")), "other directory");
    assert!(
        other.cache_hits * 100 >= other.units * 99,
        "at least 99 % hits from another directory: {}",
        other.raw
    );
    assert_lua_runs(&moved);
}
