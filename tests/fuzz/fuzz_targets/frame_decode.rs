//! Frame bodies decoded as every message a peer may send (Request, Response, CoordRequest,
//! CoordResponse, the handshake's ServerHello/ClientAuth/AuthOutcome), the same bytes read as a
//! stream of frames, and the preamble check: no panic, and what decodes re-encodes stably.
//!
//! The check is `discomy_fuzz::frame_decode` in tests/fuzz/src/lib.rs; the normal test suite
//! replays the corpus through it (tests/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| discomy_fuzz::frame_decode(data));
