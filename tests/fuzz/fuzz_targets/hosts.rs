//! The host-list parser (discomy syntax and DISTCC_HOSTS, compilerd hosts): no panic, parsed hosts
//! are sane, and ordinary hosts round-trip through Display.
//!
//! The check is `discomy_fuzz::hosts` in tests/fuzz/src/lib.rs; the normal test suite
//! replays the corpus through it (tests/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| discomy_fuzz::hosts(data));
