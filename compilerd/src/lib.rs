//! compilerd: the roles of a discomy host, each in a room of its own, and the `discomy` command.
//!
//! # Layout (each room uses only the rooms below it)
//! - [`submit`]: `discomy submit` and `discomy jobs`, clients of the coordinator's build queue.
//! - [`run`]: `discomy run`, a build against a configured or embedded farm.
//! - [`top`]: `discomy top`, a live terminal view of the farm's nodes, build hosts and queue.
//! - [`agent`]: the build host's Unix-socket server for wrappers; places units on workers
//!   ([`agent::pool`] for host lists, the coordinator's placements otherwise, the workers it
//!   remembers from the coordinator while none answers: [`agent::remembered`]) and counts what
//!   every compiler call became (`discomy stats`).
//! - [`worker`]: the donor host's TCP server: units checked ([`worker::argcheck`]), taken from
//!   request to answer ([`worker::unit`], native and source mode), run in the sandbox
//!   ([`worker::exec`]), and its listener for real distcc clients ([`worker::distcc`]).
//! - [`builder`]: the builder role, whole package builds in chroots for the coordinator's build
//!   queue (report loop, downloads, rpmbuild as an unprivileged user in a cgroup, uploads).
//! - [`coord`]: membership in a coordinated farm (discovery, the agent's placements, the
//!   worker's load reports, `discomy status`).
//! - [`fleet`]: this host in the working fleet: its TLS identity (the process's one
//!   transport), `discomy-compilerd join`, certificate renewal.
//! - [`distcc`]: distcc's client side, argv and `--allow` lists.
//! - [`store`]: toolchains, source-mode files, the farm tier of the object cache, uploads.
//! - [`sandbox`]: the worker's side of the `discomy-sandbox` helper, warm helpers, leftovers of
//!   dead processes.
//! - [`hosts`]: host lists in distcc syntax. Daemon start-up, atomic writes and process groups
//!   are `discomy_protocol::plumbing`, shared with the wrapper and the coordinator.

pub mod agent;
pub mod builder;
pub mod coord;
pub mod distcc;
pub mod fleet;
pub mod hosts;
pub mod run;
pub mod sandbox;
pub mod store;
pub mod submit;
pub mod top;
pub mod worker;
