//! Replays the kept fuzz corpus (`tests/fuzz/corpus/TARGET/`) through the same checks the
//! cargo-fuzz targets run (`tests/fuzz/src/lib.rs`, included here), without cargo-fuzz or a
//! nightly toolchain: every input that once crashed stays a regression test, and every input
//! that reached new code keeps reaching it without a panic.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Feeds every file of `corpus/TARGET/` to the target's check.
fn replay(target: &str) {
    let (_, check) = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no check for {target}"));
    let dir = fuzz_dir().join("corpus").join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} is empty", dir.display());
    for input in &inputs {
        let data = std::fs::read(input).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its check", input.display());
    }
}

macro_rules! replay_tests {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target));
            }
        )*

        /// Every fuzz target has a check, a corpus and a replay here.
        #[test]
        fn every_target_is_replayed() {
            let replayed = [$(stringify!($target)),*];
            let checked: Vec<&str> = checks::TARGETS.iter().map(|(name, _)| *name).collect();
            assert_eq!(checked, replayed);
            for name in replayed {
                let target = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
                assert!(target.is_file(), "{} is missing", target.display());
            }
        }
    };
}

replay_tests!(
    frame_decode,
    payload,
    distcc,
    lzo,
    toolchain_manifest,
    toolchain_materialise,
    argcheck,
    hosts,
    cidr,
    include_scan,
    elf_rewrite,
);
