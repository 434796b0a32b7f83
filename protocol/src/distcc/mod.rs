//! distcc's wire protocol, versions 1 (plain) and 2 (LZO1X-1 bodies), for both directions:
//! compilerd serving real distcc clients, and the agent sending units to real distccd servers.
//!
//! - [`tokens`]: headers, requests and replies, caps, a blocking reader.
//! - [`lzo`]: the LZO1X-1 codec (our own; decoding is bounds-checked and capped).
//! - `asyncio` (feature `tokio`): the same reads over tokio streams.
//!
//! Pump mode (version 3) is not spoken: its version number is refused with a clear error.

#[cfg(feature = "tokio")]
pub mod asyncio;
pub mod lzo;
pub mod tokens;

pub use tokens::{DEFAULT_PORT, DistccError, Limits, Reply, Request, Version};
