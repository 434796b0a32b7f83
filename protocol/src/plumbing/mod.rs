//! Plumbing every discomy binary shares, written once: atomic file writes ([`fs`]), reading what
//! a sandboxed program wrote ([`untrusted`]), the farm token ([`secret`]), process groups: killing one, and the one daemon harness ([`process`]), the table of `DISCOMY_*` environment variables ([`env`]), and,
//! with the `daemon` feature, daemon start-up ([`daemon`]: logging and signal-driven shutdown);
//! with the `metrics` feature, every daemon's `/metrics` ([`metrics`]); with the `docs` feature,
//! man pages and shell completions for packages ([`docs`]).
//!
//! With the `tokio` feature, [`admission`]: connection limits that close idle connections to
//! make room.
//!
//! Synchronous and free of tokio (but [`daemon`] and [`admission`]), so the wrapper uses it too.

#[cfg(feature = "tokio")]
pub mod admission;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "docs")]
pub mod docs;
pub mod env;
pub mod fs;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod process;
pub mod secret;
pub mod untrusted;

pub use fs::{write_atomically, write_atomically_with};
pub use process::{Daemon, GroupKiller, Logs};
pub use untrusted::read_untrusted;
