//! Toolchain manifests as peers send them (postcard): a manifest that validates has only absolute,
//! normalised, sorted, unique paths and its driver is a file.
//!
//! The check is `discomy_fuzz::toolchain_manifest` in tests/fuzz/src/lib.rs; the normal test suite
//! replays the corpus through it (tests/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| discomy_fuzz::toolchain_manifest(data));
