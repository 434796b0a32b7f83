//! Toolchain installs into a worker's store in a temporary directory (validation, then the tree
//! built from blobs): invalid manifests are refused, nothing appears outside the store, and the
//! tree holds only the manifest's paths.
//!
//! The check is `discomy_fuzz::toolchain_materialise` in tests/fuzz/src/lib.rs; the normal test
//! suite replays the corpus through it (tests/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| discomy_fuzz::toolchain_materialise(data));
