//! Plumbing every discomy binary shares, written once: atomic file writes ([`fs`]), reading what
//! a sandboxed program wrote ([`untrusted`]), killing a process group ([`process`]), the table of `DISCOMY_*` environment variables ([`env`]), and,
//! with the `daemon` feature, daemon start-up ([`daemon`]: logging and signal-driven shutdown).
//!
//! Synchronous and free of tokio (but [`daemon`]), so the wrapper uses it too.

#[cfg(feature = "daemon")]
pub mod daemon;
pub mod env;
pub mod fs;
pub mod process;
pub mod untrusted;

pub use fs::{write_atomically, write_atomically_with};
pub use process::GroupKiller;
pub use untrusted::read_untrusted;
