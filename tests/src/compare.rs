//! Comparing what builds and compiler runs produced: object files byte for byte, snapshots and
//! captures of one compiler invocation (status, output, files) and their differences, and
//! temporary files left behind.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::Command;

/// Everything under `dir`, as relative paths (files and directories).
pub fn temp_leftovers(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).into_iter().flatten().filter_map(Result::ok) {
            let path = entry.path();
            out.push(path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Asserts that the processes that used `tmp` as `TMPDIR` left nothing in it. `discomy run`
/// deliberately keeps its daemon logs (`discomy-run-logs-*`) when nothing ran remotely; those are
/// allowed.
pub fn assert_no_temp_leftovers(tmp: &Path, context: &str) {
    let left: Vec<String> =
        temp_leftovers(tmp).into_iter().filter(|p| !p.starts_with("discomy-run-logs-")).collect();
    assert!(
        left.is_empty(),
        "{context}: temporary files left behind in TMPDIR {}:\n  {}",
        tmp.display(),
        left.join("\n  ")
    );
}

/// Every `*.o` directly in `dir`, by file name.
pub fn objects(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).expect("read object dir").filter_map(Result::ok) {
        let path = entry.path();
        if path.extension() == Some(OsStr::new("o")) && path.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            out.insert(name, fs::read(&path).expect("read object"));
        }
    }
    out
}

/// How two byte strings differ, in one line.
pub fn describe_difference(a: &[u8], b: &[u8]) -> String {
    let first = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    format!("{} vs {} bytes, first difference at offset {first}", a.len(), b.len())
}

/// Differences between two sets of named files: missing, extra, and differing ones.
pub fn file_mismatches(
    expected: &BTreeMap<String, Vec<u8>>,
    actual: &BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, want) in expected {
        match actual.get(name) {
            None => out.push(format!("{name}: missing")),
            Some(got) if got != want => {
                out.push(format!("{name}: differs ({})", describe_difference(want, got)));
            }
            Some(_) => {}
        }
    }
    for name in actual.keys().filter(|n| !expected.contains_key(*n)) {
        out.push(format!("{name}: unexpected extra file"));
    }
    out
}

/// Asserts that two object sets are byte-identical, listing every mismatch.
pub fn assert_same_objects(
    expected: &BTreeMap<String, Vec<u8>>,
    actual: &BTreeMap<String, Vec<u8>>,
    context: &str,
) {
    assert!(!expected.is_empty(), "{context}: the reference build produced no objects");
    let mismatches = file_mismatches(expected, actual);
    assert!(
        mismatches.is_empty(),
        "{context}: {} of {} objects differ from the local build:\n  {}",
        mismatches.len(),
        expected.len(),
        mismatches.join("\n  ")
    );
    eprintln!("[e2e] {context}: all {} objects byte-identical", expected.len());
}

/// Every regular file under `dir`, by path relative to it.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).expect("read dir").filter_map(Result::ok) {
            let path = entry.path();
            let ty = entry.file_type().expect("file type");
            if ty.is_dir() {
                walk(root, &path, out);
            } else if ty.is_file() {
                let rel =
                    path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
                out.insert(rel, fs::read(&path).expect("read file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// One compiler run: its status, output, and the files it created or changed.
#[derive(Debug, Clone)]
pub struct Capture {
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Files created or modified under the directory, relative path → contents.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Runs `cmd` in `dir`, records what it did, then removes the files it created (so the next run
/// starts from the same state).
pub fn capture(dir: &Path, cmd: &mut Command) -> Capture {
    let before = snapshot(dir);
    let out = cmd.current_dir(dir).output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let after = snapshot(dir);
    let files: BTreeMap<String, Vec<u8>> =
        after.into_iter().filter(|(name, data)| before.get(name) != Some(data)).collect();
    for name in files.keys() {
        if !before.contains_key(name) {
            fs::remove_file(dir.join(name)).expect("remove output");
        }
    }
    Capture { code: out.status.code(), stdout: out.stdout, stderr: out.stderr, files }
}

/// Differences between a plain gcc run and a discomy-cc run of the same command.
pub fn diff_captures(what: &str, gcc: &Capture, ours: &Capture) -> Vec<String> {
    let mut out = Vec::new();
    if gcc.code != ours.code {
        out.push(format!("{what}: exit code gcc {:?}, discomy-cc {:?}", gcc.code, ours.code));
    }
    for (stream, a, b) in
        [("stdout", &gcc.stdout, &ours.stdout), ("stderr", &gcc.stderr, &ours.stderr)]
    {
        if a != b {
            out.push(format!(
                "{what}: {stream} differs\n--- gcc {stream} ---\n{}--- discomy-cc {stream} ---\n{}---",
                String::from_utf8_lossy(a),
                String::from_utf8_lossy(b)
            ));
        }
    }
    out.extend(
        file_mismatches(&gcc.files, &ours.files).into_iter().map(|m| format!("{what}: {m}")),
    );
    out
}
