//! icemon compatibility (issue 18): the coordinator speaks the monitor side of icecream's
//! scheduler protocol, so Debian's `icemon` (package `icecc-monitor`) and other icecream
//! monitors show discomy's nodes and units. Read-only and unauthenticated (like icecream), off
//! unless `--icemon-listen ADDR` is given; icecream's scheduler port is 8765. Nothing is
//! broadcast: point icemon at the address (`ICECC_SCHEDULER=HOST:PORT icemon`).
//!
//! This module owns:
//! - [`wire`]: the bytes (version handshake, frames, `MON_*` messages), pure and unit-tested;
//! - [`feed`]: one monitor's view: discomy nodes as icecream hosts, units as jobs;
//! - [`serve`](mod@serve): the tokio listener that feeds each monitor.
//!
//! Implemented: the handshake (versions 29–44), `MON_LOGIN`, `MON_STATS` (a snapshot at login,
//! then joins, changes, `State:Offline`), `MON_GET_CS` + `MON_JOB_BEGIN` per placement and
//! `MON_JOB_DONE` per end. Not: local jobs (`MON_LOCAL_JOB_BEGIN`, `JOB_LOCAL_DONE`), daemon
//! logins (real `iceccd`), discovery broadcasts, the text control port (8766).

pub mod feed;
pub mod serve;
pub mod wire;

pub use serve::{bind, serve};
