//! Shared helpers for discomy's end-to-end tests (see `tests/`).
