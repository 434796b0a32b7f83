//! compilerd: the agent and worker roles of a discomy host, and the `discomy` command.
//!
//! # Layout
//! - [`worker`]: TCP server compiling units with an identical compiler ([`toolchains`]),
//!   arguments checked by [`argcheck`], processes run by [`exec`].
//! - [`agent`]: Unix-socket server for wrappers; places units on workers through [`pool`].
//! - [`hosts`]: static host lists in distcc syntax.
//! - [`sandbox`]: runs each remote compile in a `discomy-sandbox` (namespaces, read-only
//!   toolchain root, no network, rlimits and cgroups).
//! - [`toolstore`]: content-addressed toolchain blobs and trees, single-flight installs, LRU.
//! - [`upload`]: serving and pushing toolchains between nodes.
//! - [`cache_tier`]: the farm tier of the object cache (worker stores, rendezvous routing).
//! - [`farm`]: `discomy run`, which runs a build against a configured or embedded farm.
//! - [`daemon`]: logging set-up and signal-driven shutdown shared by the binaries.

pub mod agent;
pub mod argcheck;
pub mod cache_tier;
pub mod daemon;
pub mod exec;
pub mod farm;
pub mod hosts;
pub mod pool;
pub mod sandbox;
pub mod toolchains;
pub mod toolstore;
pub mod upload;
pub mod worker;
