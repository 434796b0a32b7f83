//! The rooms of compilerd stand on top of each other without looping back: each room's files
//! name (`crate::ROOM`) only rooms below it, or itself. Read from the sources, so a new import
//! that points up fails here with the file and the line.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// Rooms from the top down, with the rooms each may use.
const ROOMS: &[(&str, &[&str])] = &[
    ("run.rs", &["hosts"]),
    ("run", &["hosts"]),
    ("top", &["coord"]),
    ("submit", &["coord"]),
    ("agent", &["coord", "distcc", "store", "sandbox", "hosts", "fleet"]),
    ("builder", &["coord", "store", "sandbox", "hosts", "fleet"]),
    ("worker", &["coord", "distcc", "store", "sandbox", "hosts", "fleet"]),
    ("coord", &["store", "sandbox", "hosts", "fleet"]),
    ("distcc", &["hosts"]),
    ("store", &["sandbox", "hosts", "fleet"]),
    ("sandbox", &[]),
    ("fleet", &[]),
    ("hosts.rs", &[]),
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

#[test]
fn rooms_only_use_rooms_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for (room, allowed) in ROOMS {
        let own = room.trim_end_matches(".rs");
        let mut files = Vec::new();
        rust_files(&src.join(room), &mut files);
        assert!(!files.is_empty(), "room {room} has no files");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let mut rest = line;
                while let Some(at) = rest.find("crate::") {
                    rest = &rest[at + "crate::".len()..];
                    let used: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if used != own && !allowed.contains(&used.as_str()) {
                        violations.push(format!(
                            "{}:{}: room {room} uses {used}: {}",
                            file.display(),
                            n + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(violations.is_empty(), "imports that point up or sideways:\n{}", violations.join("\n"));
}

#[test]
fn every_room_is_listed() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name == "lib.rs" || name == "bin" {
            continue;
        }
        assert!(ROOMS.iter().any(|(r, _)| *r == name), "{name} is in no room of this test");
    }
}

/// Issue 13: one compile job is traceable in at most six files. The opening paragraph of
/// ARCHITECTURE.md's "The life of one compile job" names, in backticks, every file on the path of
/// a source-mode unit; each must be a repository path that exists and stays readable.
#[test]
fn one_compile_job_is_traceable_in_six_files() {
    const MOST_FILES: usize = 6;
    const MOST_LINES: usize = 600;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("The life of one compile job"))
        .expect("ARCHITECTURE.md has a section \"The life of one compile job\"");
    let paragraph = section
        .split("\n\n")
        .find(|p| p.trim_start().starts_with("Files on the path"))
        .expect("the section opens with a \"Files on the path ...\" paragraph");
    // Every backticked file name counts, whether it names its crate or not (`worker/x.rs` is a
    // file on the path too, and then fails the existence check).
    let mut files: Vec<&str> = Vec::new();
    for (i, span) in paragraph.split('`').enumerate() {
        if i % 2 == 1 && span.ends_with(".rs") && !files.contains(&span) {
            files.push(span);
        }
    }
    assert!(!files.is_empty(), "no files listed in:\n{paragraph}");
    assert!(
        files.len() <= MOST_FILES,
        "{} files on the path of one compile job (at most {MOST_FILES}): {files:?}",
        files.len()
    );
    for file in files {
        let text = std::fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("{file} (listed in ARCHITECTURE.md) is not readable: {e}"));
        let lines = text.lines().count();
        assert!(lines < MOST_LINES, "{file} has {lines} lines (at most {MOST_LINES} - 1)");
    }
}
