//! What a node keeps: toolchains ([`tools`]; this host's own compilers seeded by [`seed`]),
//! source-mode file contents ([`sources`]), the farm tier of the object cache ([`cache_tier`]),
//! and moving toolchains and files between nodes ([`upload`]).
//!
//! Used by the agent and the worker alike; uses only the sandbox's list encoding below it.

pub mod cache_tier;
pub mod seed;
pub mod sources;
pub mod tools;
pub mod upload;
