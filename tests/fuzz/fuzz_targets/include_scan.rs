//! The wrapper's include scanner (wrapper scan) on small trees written to a temporary directory: no
//! panic, and successful scans list main.c first, normalised paths and every content.
//!
//! The check is `discomy_fuzz::include_scan` in tests/fuzz/src/lib.rs; the normal test suite
//! replays the corpus through it (tests/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| discomy_fuzz::include_scan(data));
