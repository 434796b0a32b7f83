//! Payload decompression (discomy_protocol::payload): hostile payloads are refused or decode to
//! exactly their announced size and digest; honest ones round-trip and the cap is exact.
//!
//! The check is `discomy_fuzz::payload` in tests/fuzz/src/lib.rs; the normal test suite
//! replays the corpus through it (tests/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| discomy_fuzz::payload(data));
