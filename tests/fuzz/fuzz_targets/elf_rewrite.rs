//! The ELF rewriter that moves -g objects to another build directory (wrapper cache::elf_relocate):
//! no panic on any object, and a rewritten object is restored exactly by rewriting it back.
//!
//! The check is `discomy_fuzz::elf_rewrite` in tests/fuzz/src/lib.rs; the normal test suite
//! replays the corpus through it (tests/tests/fuzz_corpus.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| discomy_fuzz::elf_rewrite(data));
