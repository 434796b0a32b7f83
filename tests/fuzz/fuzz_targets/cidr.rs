//! The --allow CIDR parser of the distcc listener (compilerd distcc::cidr): what parses round-trips
//! through Display and contains its own address; membership never panics.
//!
//! The check is `discomy_fuzz::cidr` in tests/fuzz/src/lib.rs; the normal test suite
//! replays the corpus through it (tests/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| discomy_fuzz::cidr(data));
