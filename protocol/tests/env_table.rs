//! The `DISCOMY_*` table (`plumbing::env::VARS`) against what users read and what the code uses:
//! every variable for users is in README.md, every `DISCOMY_…` name in README.md is in the table,
//! and every `"DISCOMY_…"` string in the workspace's Rust sources is in the table.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use discomy_protocol::plumbing::env::VARS;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every `DISCOMY_[A-Z0-9_]+` in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("DISCOMY_") {
        rest = &rest[at..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[name.len().max(1)..];
        let name = name.trim_end_matches('_');
        if name != "DISCOMY" {
            out.insert(name.to_string());
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn readme_documents_exactly_the_table() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let documented = names_in(&readme);
    let table: BTreeSet<String> = VARS.iter().map(|v| v.name.to_string()).collect();
    let missing: Vec<_> = VARS.iter().filter(|v| v.user && !documented.contains(v.name)).collect();
    assert!(missing.is_empty(), "variables for users missing from README.md: {missing:?}");
    let unknown: Vec<_> = documented.difference(&table).collect();
    assert!(unknown.is_empty(), "README.md names variables that do not exist: {unknown:?}");
}

#[test]
fn sources_use_only_variables_in_the_table() {
    let table: BTreeSet<String> = VARS.iter().map(|v| v.name.to_string()).collect();
    let mut files = Vec::new();
    for krate in ["protocol", "wrapper", "compilerd", "coordinator", "bench", "tests"] {
        rust_files(&workspace().join(krate), &mut files);
    }
    let mut unknown = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for quoted in text.split('"').skip(1).step_by(2) {
            if quoted.starts_with("DISCOMY_") && !quoted.contains(' ') {
                for name in names_in(quoted) {
                    if !table.contains(&name) {
                        unknown.insert(format!("{name} ({})", file.display()));
                    }
                }
            }
        }
    }
    assert!(unknown.is_empty(), "variables missing from plumbing::env::VARS: {unknown:?}");
}
