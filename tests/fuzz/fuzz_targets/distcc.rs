//! distcc requests and replies (protocols 1 and 2) as discomy reads them: no panic, bodies within
//! their caps, and what parses re-encodes to the same request or reply.
//!
//! The check is `discomy_fuzz::distcc` in tests/fuzz/src/lib.rs; the normal test suite
//! replays the corpus through it (tests/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| discomy_fuzz::distcc(data));
