//! Where things are and how commands start: the workspace root, the projects directory, the
//! built binaries, a command with a clean environment, a private `TMPDIR` per process, a free
//! loopback port, and whether a test whose prerequisites are missing skips or fails (under CI).

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The workspace root (`tests/..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// Where `scripts/setup-debian.sh` put the projects' source packages.
pub fn projects_dir() -> PathBuf {
    match std::env::var_os("DISCOMY_PROJECTS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("target").join("projects"),
    }
}

/// The directory holding the workspace's binaries: `$DISCOMY_BIN_DIR`, or the profile directory
/// of this test executable (`<target>/<triple>/<profile>/deps/<test>` → `<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DISCOMY_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("test exe has a parent").to_path_buf();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir = dir.parent().expect("deps has a parent").to_path_buf();
    }
    dir
}

/// A workspace binary by name. Panics with a hint when it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "binary {name} not found at {}: build the workspace first (cargo build --workspace, same \
         profile as the tests) or set DISCOMY_BIN_DIR",
        path.display()
    );
    path
}

/// A command with the test's environment minus anything that would change what it does:
/// `DISCOMY_*` settings, make's job-server and flags, `CC`/`CXX`. The object cache is off
/// (`DISCOMY_CACHE=0`) so a test sees the farm, not an earlier run's results; the cache tests
/// turn it on with a private directory.
pub fn clean_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("DISCOMY_")
            || matches!(k.as_ref(), "MAKEFLAGS" | "MFLAGS" | "MAKELEVEL" | "CC" | "CXX")
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env("DISCOMY_CACHE", "0");
    cmd.stdin(Stdio::null());
    cmd
}

/// A fresh directory `<dir>/<name>-tmpdir`, for a process's `TMPDIR`: keeps temporary files of the
/// processes under test inside the test's directory, where leftovers can be checked.
pub fn private_tmp(dir: &Path, name: &str) -> PathBuf {
    let tmp = dir.join(format!("{name}-tmpdir"));
    fs::create_dir_all(&tmp).expect("create private TMPDIR");
    tmp
}

/// A TCP port on 127.0.0.1 nothing listens on now (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// `found`, or, when `test`'s prerequisites are missing (`Err` says which): a skip with a
/// message on a developer's machine, a failure under CI (`CI` set), where they must be there.
pub fn or_skip<T>(test: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(found) => Some(found),
        Err(why) if std::env::var_os("CI").is_none_or(|v| v.is_empty()) => {
            eprintln!("[e2e] SKIPPED {test}: {why} (under CI=true this fails)");
            None
        }
        Err(why) => panic!("{test} cannot run under CI: {why}"),
    }
}
