//! discomy's wire protocol: the only place wire types are defined.
//!
//! Every connection (wrapper → agent over a Unix socket, agent → worker over TCP) starts with the
//! same handshake, then carries length-delimited postcard frames.
//!
//! # Layout
//! - [`distcc`]: distcc's wire protocol (versions 1 and 2) and its LZO1X-1 codec.
//! - [`cache`]: the object-cache entry, as workers store it in the farm tier and wrappers keep
//!   it on disk.
//! - [`coordinator`]: messages to and from the coordinator (nodes, agents, status).
//! - [`digest`]: the blake3 [`Digest`] newtype used for content addresses and compiler identity.
//! - [`fleet`]: joining the fleet: requests, host facts, roles, operators' commands.
//! - [`frame`]: frame size limits and the synchronous frame reader/writer (used by the wrapper).
//! - [`handshake`]: preamble (magic + version) and token challenge-response, synchronous side.
//! - [`message`]: requests and responses.
//! - [`ops`]: the operations API (package build jobs, queue, builders), JSON over HTTP.
//! - [`payload`]: lz4-compressed payloads with a decompressed-size cap and digest check.
//! - [`plumbing`]: not wire types but what every binary shares, written once: atomic writes,
//!   process groups, the `DISCOMY_*` table, daemon start-up (feature `daemon`).
//! - [`specdeps`]: a spec's `BuildRequires` and provided names, read from its text (not a wire
//!   type: shared by `discomy submit` and the coordinator's job_listener).
//! - [`sources`]: source-mode units (original source plus the files its preprocessor read).
//! - [`stats`]: what each compiler call became, reported to the agent, and the agent's totals.
//! - [`toolchain`]: content-addressed toolchain manifests.
//! - `asyncio` (feature `tokio`): the same framing and handshake over tokio streams.
//! - `tls` (feature `tls`): the farm's mutual TLS 1.3, its CA and certificates (not wire types:
//!   the transport under the same frames, shared by every daemon).
//!
//! # Crate features
//! - `tokio`: async framing ([`tokio_util::codec::LengthDelimitedCodec`]) and handshake.
//! - `daemon`: `plumbing::daemon` (tracing set-up, shutdown on signals).
#![warn(missing_docs)]

#[cfg(feature = "tokio")]
pub mod asyncio;
pub mod cache;
pub mod coordinator;
pub mod digest;
pub mod distcc;
mod error;
pub mod fleet;
pub mod frame;
pub mod handshake;
pub mod message;
pub mod ops;
pub mod payload;
pub mod plumbing;
pub mod sources;
pub mod specdeps;
pub mod stats;
#[cfg(feature = "tls")]
pub mod tls;
pub mod toolchain;

pub use digest::Digest;
pub use error::ProtocolError;
pub use handshake::{AuthConfig, PeerKind};
pub use message::{
    CacheEntry, CachedSources, CompileRequest, CompileResult, CompilerId, Language, OutputKind,
    Refusal, RefusalKind, Request, Response,
};
pub use payload::Payload;
pub use sources::{DepRequest, SourceCompileRequest, SourceFile, SourceResult};
pub use toolchain::{EntryKind, ToolchainManifest, TreeEntry};

/// Protocol version numbers. A peer with a different version is refused during the preamble.
pub mod version {
    /// The version this build speaks. Version 1: handshake, `Compile`, `Ping`. Version 2:
    /// toolchain upload (`PutBlob`, `InstallToolchain`) and `NeedToolchain` refusals. Version 3:
    /// source-mode units (`CompileSources`, `PutSource`). Version 4: a unit key in the
    /// coordinator's `PlaceRequest` (the cost history). Version 5: the coordinator's `Hedge`
    /// (a second placement for a unit whose node has stalled). Version 6: the wrapper's
    /// `Report` of each call's outcome and the agent's `Stats` (`discomy stats`). Version 7:
    /// `CompileSourcesCached` (the farm tier asked within the compile's own trip). Version 8:
    /// verification of remote results (`CompileResult::verify`, the wrapper's `Verified`, the
    /// agent's `Quarantine` of a node to its coordinator). Version 9: LTRANS units (source-mode
    /// units of `-x lto … -fltrans`, which workers before it refuse) and the agent's
    /// `LtransStats`. Version 10: the working fleet (`Join`, `JoinPoll`, `Renew`, `Fleet`).
    /// Version 11: the farm tier written by workers only (`CachedSources::store_at`, entries
    /// bound to the key a worker derives from the unit). Version 12: `WatchRevoked` (a host with
    /// no coordinator session learns the fleet's revocations) and agents enrolled by tenant
    /// tokens (`NodeRecord::enrolled_by`).
    pub const CURRENT: u16 = 12;
}
