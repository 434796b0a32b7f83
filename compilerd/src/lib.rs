//! compilerd: the agent and worker roles of a discomy host, and the `discomy` command.
//!
//! # Layout
//! - [`worker`]: TCP server compiling units with an identical compiler ([`toolchains`]),
//!   arguments checked by [`argcheck`], processes run by [`exec`].
//! - [`distcc_server`]: the worker's listener for real distcc clients ([`distcc_args`] takes
//!   their argv apart, [`cidr`] is `--allow`).
//! - [`agent`]: Unix-socket server for wrappers; places units on workers through [`pool`].
//! - [`hosts`]: static host lists in distcc syntax, `distcc://` hosts among them.
//! - [`distcc_client`]: sends one unit to a real distccd (protocol 1 or 2).
//! - [`sandbox`]: runs each remote compile in a `discomy-sandbox` (namespaces, read-only
//!   toolchain root, no network, rlimits and cgroups).
//! - [`toolstore`]: content-addressed toolchain blobs and trees, single-flight installs, LRU.
//! - [`upload`]: serving and pushing toolchains and source-mode files between nodes.
//! - [`sourcestore`], [`source_unit`]: source-mode file contents and compiling a source-mode
//!   unit over them.
//! - [`cache_tier`]: the farm tier of the object cache (worker stores, rendezvous routing).
//! - [`farm`]: `discomy run`, which runs a build against a configured or embedded farm.
//! - [`coordclient`], [`noderep`], [`discover`], [`status`]: membership in a coordinated farm
//!   (the agent's placements, the worker's login and load reports, finding the coordinator,
//!   `discomy status`).
//! - [`daemon`]: logging set-up and signal-driven shutdown shared by the binaries.

pub mod agent;
pub mod argcheck;
pub mod cache_tier;
pub mod cidr;
pub mod coordclient;
pub mod daemon;
pub mod discover;
pub mod distcc_args;
pub mod distcc_client;
pub mod distcc_server;
pub mod exec;
pub mod farm;
pub mod hosts;
pub mod noderep;
pub mod pool;
pub mod sandbox;
pub mod sandbox_warm;
pub mod source_unit;
pub mod sourcestore;
pub mod stale;
pub mod status;
pub mod toolchains;
pub mod toolstore;
pub mod upload;
pub mod worker;
