//! The LZO1X-1 codec used by distcc protocol 2: the decoder on any stream (capped output, re-
//! compression round-trips) and the encoder on any input (LZO's worst-case bound, exact round
//! trip).
//!
//! The check is `discomy_fuzz::lzo_codec` in tests/fuzz/src/lib.rs; the normal test suite
//! replays the corpus through it (tests/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| discomy_fuzz::lzo_codec(data));
