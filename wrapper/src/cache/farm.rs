//! The wrapper's side of the farm tier: a scanned unit goes to the farm in source mode with its
//! farm-tier key ([`discomy_protocol::SourceCompileRequest::farm_key`]), and the agent, or the
//! worker owning the key, answers with the entry instead of a compile when the farm holds it.
//! The wrapper only reads the farm tier: entries are stored by the worker that compiled the
//! unit, under the key it derives from the unit, so no client can put an object under another
//! unit's key. A lost or slow farm tier is a miss.

/// Environment variable: `0` keeps the cache local (no farm tier).
pub const ENV_CACHE_FARM: &str = "DISCOMY_CACHE_FARM";
/// Largest entry accepted from the farm (decompressed).
pub const MAX_ENTRY: usize = 256 << 20;

/// Whether the farm tier is on (`DISCOMY_CACHE_FARM`).
pub fn enabled() -> bool {
    std::env::var_os(ENV_CACHE_FARM).is_none_or(|v| v != "0")
}
