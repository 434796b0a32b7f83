//! discomy's coordinator: the farm's scheduler.
//!
//! - [`policy`]: the pure placement policy (no I/O, injected clock), shared with the simulator.
//! - [`core`]: the daemon's state around the policy (addresses, waiting agents).
//! - [`server`]: the tokio daemon (nodes, agents, status, liveness, connect-back checks).
//! - [`config_manager`]: the configuration file (`--config`), checked at start.
//! - [`ops`]: the operations room: the package build queue, builders' green light, its API.
//! - [`fleet`]: the working fleet: farm CA, join tokens and requests, certificates, revocation.
//! - [`mdns`]: the `_discomy._tcp.local.` advertisement.
//! - [`metrics`]: `/metrics` (the farm, the build queue) for Prometheus.
//! - [`wuimy`]: the web UI under `/ui/` (farm, queue, jobs with live logs, repositories, actions).
//! - [`icemon`]: icecream's monitor protocol, so `icemon` shows the farm (`--icemon-listen`).
//!
//! Tracing and signal handling for the binary are `discomy_protocol::plumbing::daemon`.
#![warn(missing_docs)]

pub mod config_manager;
pub mod core;
pub mod fleet;
pub mod icemon;
pub mod mdns;
pub mod metrics;
pub mod ops;
pub mod plan;
pub mod policy;
pub mod server;
pub mod wuimy;
