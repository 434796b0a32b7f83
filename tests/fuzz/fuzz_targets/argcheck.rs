//! The worker's compile-argument checks (native and source mode, compilerd worker::argcheck):
//! nothing accepted runs a program, reads a local file or writes outside the unit.
//!
//! The check is `discomy_fuzz::argcheck` in tests/fuzz/src/lib.rs; the normal test suite
//! replays the corpus through it (tests/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| discomy_fuzz::argcheck(data));
