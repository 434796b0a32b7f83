//! Membership in a coordinated farm: finding the coordinator ([`discover`]), the agent's link to
//! it ([`client`]: placements, reports, hedges), the worker's login and load reports ([`node`]),
//! and what the command line shows ([`status`]: `discomy status`, `discomy stats`).

pub mod client;
pub mod discover;
pub mod node;
pub mod status;
