//! The project under test, Lua 5.4: finding and unpacking its Debian tarball, building it with
//! plain gcc or under `discomy run`, cleaning it, checking the built interpreter, and running a
//! build command to completion.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{
    BUILD_TIMEOUT, MAKE_JOBS, Proc, bin, clean_command, objects, private_tmp, projects_dir,
};

/// The Lua 5.4 upstream tarball of the Debian source package. Panics (never skips) when missing.
pub fn lua_tarball() -> PathBuf {
    let dir = projects_dir();
    let mut found: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().and_then(OsStr::to_str).unwrap_or("");
                    name.starts_with("lua5.4_") && name.ends_with(".orig.tar.gz")
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.pop() {
        Some(path) => path,
        None => panic!(
            "the Lua source tarball (lua5.4_*.orig.tar.gz) is not in {}: run scripts/setup-debian.sh \
             first (it downloads the Debian source package), or point DISCOMY_PROJECTS_DIR at it",
            dir.display()
        ),
    }
}

/// Unpacks Lua into `into` and returns the source tree (the directory holding `src/Makefile`).
pub fn extract_lua(into: &Path) -> PathBuf {
    let tarball = lua_tarball();
    let out = clean_command("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(into)
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar xzf {} failed: {}",
        tarball.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = fs::read_dir(into)
        .expect("read extraction dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.join("src").join("Makefile").is_file())
        .unwrap_or_else(|| panic!("no lua-*/src/Makefile inside {}", tarball.display()));
    eprintln!("[e2e] extracted {} into {}", tarball.display(), tree.display());
    tree
}

/// `discomy run` in the Lua tree, with `TMPDIR` private to the test
/// (`<scratch>/discomy-run-tmpdir`).
/// Callers add the options, `--` and the build command.
pub fn discomy_run(tree: &Path, scratch: &Path) -> Command {
    let mut cmd = clean_command(bin("discomy"));
    cmd.current_dir(tree).env("TMPDIR", private_tmp(scratch, "discomy-run")).arg("run");
    cmd
}

/// `make -C src -j4 linux EXTRA…` in the Lua tree with plain gcc; asserts success.
pub fn make_lua(tree: &Path, name: &str, extra: &[&str], log_dir: &Path) {
    let mut cmd = clean_command("make");
    cmd.current_dir(tree).args(["-C", "src", MAKE_JOBS, "linux"]).args(extra);
    run_to_success(name, &mut cmd, log_dir);
}

/// `make -C src -j4 linux` in the Lua tree with `discomy-cc gcc` as CC, talking to the agent on
/// `socket`, its object cache in `cache_dir`; callers add the rest of the environment.
pub fn make_lua_with_discomy_cc(tree: &Path, socket: &Path, cache_dir: &Path) -> Command {
    let cc = format!("CC={} gcc -std=gnu99", bin("discomy-cc").display());
    let mut cmd = clean_command("make");
    cmd.current_dir(tree)
        .args(["-C", "src", MAKE_JOBS, "linux"])
        .arg(cc)
        .env("DISCOMY_CACHE_DIR", cache_dir)
        .env("DISCOMY_SOCKET", socket);
    cmd
}

/// Lua extracted under `dir` and built once locally with plain gcc: the tree, its `src`, and
/// the reference objects (the tree is cleaned afterwards, ready for the build under test).
pub fn lua_with_reference(dir: &Path) -> (PathBuf, PathBuf, BTreeMap<String, Vec<u8>>) {
    let tree = extract_lua(dir);
    let src = tree.join("src");
    make_lua(&tree, "make-local", &[], dir);
    let reference = objects(&src);
    make_clean(&tree, dir);
    (tree, src, reference)
}

/// `make -C src clean` in the Lua tree; asserts that no object is left.
pub fn make_clean(tree: &Path, log_dir: &Path) {
    let mut cmd = clean_command("make");
    cmd.current_dir(tree).args(["-C", "src", "clean"]);
    run_to_success("make-clean", &mut cmd, log_dir);
    let left = objects(&tree.join("src"));
    assert!(left.is_empty(), "make clean left objects: {:?}", left.keys().collect::<Vec<_>>());
}

/// Runs a command to completion (logged, with [`BUILD_TIMEOUT`]) and asserts it succeeded.
pub fn run_to_success(name: &str, cmd: &mut Command, log_dir: &Path) -> Proc {
    let start = Instant::now();
    let mut proc = Proc::spawn(name, cmd, log_dir);
    let status = proc.wait_timeout(BUILD_TIMEOUT);
    assert!(status.success(), "{name} failed ({status}):\n{}", proc.logs(80));
    eprintln!("[e2e] {name} done in {:.1?}", start.elapsed());
    proc
}

/// Checks that the freshly built Lua interpreter works.
pub fn assert_lua_runs(tree: &Path) {
    let out = clean_command(tree.join("src").join("lua"))
        .args(["-e", "print(1+1)"])
        .output()
        .expect("run the built lua");
    assert!(
        out.status.success() && out.stdout == b"2\n",
        "built lua did not print 2: status {}, stdout {:?}, stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
