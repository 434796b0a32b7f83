//! Compiler names for masquerade directories, as distcc's `update-distcc-symlinks` picks them.

use std::collections::BTreeSet;
use std::ffi::OsStr;

/// Whether `name` is a compiler name we masquerade as.
pub fn is_compiler_name(name: &str) -> bool {
    // Strip an optional target prefix (x86_64-linux-gnu-) and an optional -N version suffix.
    let base = name.rsplit_once('-').map_or(name, |(head, tail)| {
        if !tail.is_empty() && tail.chars().all(|c| c.is_ascii_digit() || c == '.') {
            head
        } else {
            name
        }
    });
    let base = ["gcc", "g++", "clang", "clang++", "cc", "c++"]
        .iter()
        .find(|tool| {
            // A target prefix is a triple (x86_64-linux-gnu-), not a word like Debian's c89-gcc.
            base == **tool
                || base.strip_suffix(&format!("-{tool}")).is_some_and(|prefix| prefix.contains('-'))
        })
        .copied();
    match base {
        Some("cc" | "c++") => name == "cc" || name == "c++",
        Some(_) => true,
        None => false,
    }
}

/// Every compiler name found on `path_var`, sorted and deduplicated.
pub fn compiler_names_on_path(path_var: &OsStr) -> Vec<String> {
    let mut names = BTreeSet::new();
    for dir in std::env::split_paths(path_var) {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_compiler_name(&name) && entry.path().is_file() {
                names.insert(name);
            }
        }
    }
    names.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for yes in [
            "cc",
            "c++",
            "gcc",
            "g++",
            "gcc-12",
            "g++-12",
            "x86_64-linux-gnu-gcc",
            "x86_64-linux-gnu-g++-12",
            "clang",
            "clang-14",
            "clang++",
            "clang++-14",
        ] {
            assert!(is_compiler_name(yes), "{yes}");
        }
        for no in [
            "gcc-ar",
            "gcc-nm-12",
            "x86_64-linux-gnu-gcc-ranlib",
            "ccache",
            "cc1",
            "gccgo",
            "c89",
            "c89-gcc",
            "c99-gcc",
        ] {
            assert!(!is_compiler_name(no), "{no}");
        }
    }
}
