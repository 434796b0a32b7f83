//! Request and response messages, exchanged after the handshake.
//!
//! Enum variants are append-only: never reorder or remove one (postcard encodes the index).

use serde::{Deserialize, Serialize};

use crate::{Digest, Payload};

/// What a client asks of an agent or worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Compile one preprocessed unit. Since version 1.
    Compile(CompileRequest),
    /// Liveness check; answered with [`Response::Pong`]. Since version 1.
    Ping,
    /// Store one toolchain file's content; answered with [`Response::Stored`]. Since version 2.
    PutBlob(Payload),
    /// Install a toolchain whose blobs have been stored; answered with
    /// [`Response::Installed`] or [`Response::MissingBlobs`]. Since version 2.
    InstallToolchain(crate::ToolchainManifest),
    /// Compile a unit from its original source ([`crate::sources`]); answered like
    /// [`Request::Compile`], or with [`Response::MissingBlobs`] naming files to send with
    /// [`Request::PutSource`] first. Since version 3.
    CompileSources(crate::SourceCompileRequest),
    /// Store one source file's content for source-mode units; answered with
    /// [`Response::Stored`]. Since version 3.
    PutSource(Payload),
    /// Farm tier of the object cache: the entry stored under this key, if any; answered with
    /// [`Response::CacheHit`] or [`Response::CacheMiss`]. Since version 3.
    CacheGet(Digest),
    /// Farm tier: store an entry; answered with [`Response::Stored`] (the key). Only a worker
    /// sends it (a worker's certificate under the fleet's TLS; any token holder on a plain lab
    /// farm): the worker that compiled a unit hands its entry to the worker owning the unit's
    /// key ([`CachedSources::store_at`]). The entry must name that key
    /// ([`crate::cache::Entry::farm_key`]) and is stored only if absent. Since version 3; from
    /// workers only since version 11.
    CachePut(CacheEntry),
    /// What one compiler call became, sent by the wrapper when it is done; never answered.
    /// Since version 6.
    Report(crate::stats::UnitReport),
    /// A node's counters; an agent answers with [`Response::Stats`], a worker with
    /// [`Response::WorkerStats`]. Since version 6.
    Stats,
    /// A source-mode unit with its farm-tier key ([`crate::SourceCompileRequest::farm_key`]):
    /// the farm tier is asked first, by the agent or, when the worker the unit is placed on owns
    /// that key, by that worker. Answered with [`Response::CacheHit`] (the entry's body) when
    /// the farm holds it, otherwise like [`Request::CompileSources`]; a clean compile's entry is
    /// then stored by the worker that made it, under the key it derives from the unit itself.
    /// One trip instead of a [`Request::CacheGet`] and then the compile. Since version 7.
    CompileSourcesCached(CachedSources),
    /// The wrapper compiled a remote unit locally as well, as its agent asked
    /// ([`CompileResult::verify`]), and compared the two; never answered. Since version 8.
    Verified(crate::stats::Verification),
    /// An agent's counters of its remembered farm (the workers it places units on while no
    /// coordinator answers); answered with [`Response::RememberedFarm`]. Since version 8,
    /// appended: an agent built before it refuses it as an unexpected request.
    RememberedFarm,
    /// An agent's counters of LTRANS units (the partitions of LTO links it sent to the farm);
    /// answered with [`Response::LtransStats`]. Since version 9.
    LtransStats,
}

/// A [`Request::CompileSourcesCached`]: the unit and its farm-tier key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedSources {
    /// The unit's farm-tier key as the sender computed it, for routing only: a worker derives
    /// the key it looks up and stores under from the unit ([`crate::SourceCompileRequest::farm_key`]).
    pub key: Digest,
    /// The unit.
    pub unit: crate::SourceCompileRequest,
    /// The worker (`host:port`) owning the key in the farm tier, when it is not the one the unit
    /// is sent to: the agent asked it already, and the compiling worker hands it the entry it
    /// makes ([`Request::CachePut`]). `None`: the receiving worker owns the key. Since version 11.
    pub store_at: Option<String>,
}

/// Longest [`CachedSources::store_at`] address a worker connects to.
pub const MAX_STORE_AT: usize = 256;

/// One object-cache entry crossing the wire: its key and its encoded body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The farm-tier key of the result ([`crate::SourceCompileRequest::farm_key`]).
    pub key: Digest,
    /// The entry body (a postcard-encoded [`crate::cache::Entry`]), compressed; its digest is
    /// verified on decompression.
    pub body: Payload,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// The compiler ran (its exit status may still be non-zero). Since version 1.
    Compiled(CompileResult),
    /// The unit was not compiled; the client compiles it locally instead. Since version 1.
    Refused(Refusal),
    /// Answer to [`Request::Ping`]. Since version 1.
    Pong,
    /// The blob is stored (or was already). Since version 2.
    Stored(Digest),
    /// The toolchain is installed and ready. Since version 2.
    Installed(Digest),
    /// These blobs must be sent with [`Request::PutBlob`] before the install can go on.
    /// Since version 2.
    MissingBlobs(Vec<Digest>),
    /// A source-mode compile that also wrote the dependency file it was asked for.
    /// Since version 3.
    CompiledSources(crate::SourceResult),
    /// Answer to [`Request::CacheGet`] and [`Request::CompileSourcesCached`]: the entry's body.
    CacheHit(Payload),
    /// Answer to [`Request::CacheGet`]: not stored (or the farm tier is unreachable).
    CacheMiss,
    /// An agent's answer to [`Request::Stats`]. Since version 6.
    Stats(crate::stats::AgentStats),
    /// A worker's answer to [`Request::Stats`]. Since version 6.
    WorkerStats(crate::stats::WorkerStats),
    /// An agent's answer to [`Request::RememberedFarm`]. Since version 8, appended.
    RememberedFarm(crate::stats::RememberedFarmStats),
    /// An agent's answer to [`Request::LtransStats`]. Since version 9.
    LtransStats(crate::stats::LtransCounts),
}

/// The compiler a unit must be compiled with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompilerId {
    /// The name the build used (`gcc`, `x86_64-linux-gnu-g++-12`, …), for logs and matching.
    pub name: String,
    /// blake3 over the driver, `cc1`, `cc1plus`, `as` and the `-dumpmachine`/`-dumpversion` text.
    pub identity: Digest,
}

/// Source language of a unit; selects the `-x` the worker compiles it as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Language {
    /// C, sent as `cpp-output`.
    C,
    /// C++, sent as `c++-cpp-output`.
    Cxx,
}

/// What the compile step produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputKind {
    /// `-c`: an object file.
    Object,
    /// `-S`: assembly text.
    Assembly,
}

/// One unit to compile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompileRequest {
    /// Which compiler to use; a worker without an identical one refuses.
    pub compiler: CompilerId,
    /// Language of the unit.
    pub language: Language,
    /// Object or assembly.
    pub output: OutputKind,
    /// Compiler arguments for the compile step: no input, no output, no preprocessor options.
    pub args: Vec<String>,
    /// The source's name as the build gave it, for logs.
    pub source_name: String,
    /// The unit, preprocessed with `-fdirectives-only`.
    pub unit: Payload,
    /// The client's `SOURCE_DATE_EPOCH`, which `__DATE__` and `__TIME__` honour at compile time.
    pub source_date_epoch: Option<String>,
}

/// A finished compile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompileResult {
    /// The compiler's exit status.
    pub exit_code: i32,
    /// The compiler's standard output.
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    /// The compiler's standard error.
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
    /// The object or assembly, when the compile succeeded.
    pub output: Option<Payload>,
    /// The node that ran it.
    pub node: String,
    /// Wall time of the compiler on the node, in milliseconds.
    pub compile_ms: u64,
    /// Set by the agent: compile this unit locally as well, use the local object, compare, and
    /// send the verdict ([`Request::Verified`]). Workers leave it false. Since version 8.
    pub verify: bool,
}

/// Why a unit was not compiled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    /// Machine-readable reason.
    pub kind: RefusalKind,
    /// Human-readable detail, shown in logs.
    pub message: String,
}

/// Reasons a unit is refused. Every one makes the client compile locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalKind {
    /// No compiler identical to the client's on this node.
    NoToolchain,
    /// The arguments are not on the allow-list.
    BadArguments,
    /// The node is shutting down or has no slot.
    Unavailable,
    /// No worker could take it (agent only).
    NoWorker,
    /// The compiler could not be run or was killed (signal, time limit).
    CompilerFailed,
    /// The unit or its payload was invalid.
    BadRequest,
    /// Something went wrong inside the node.
    Internal,
    /// The node does not hold this toolchain yet; send it ([`Request::InstallToolchain`]) and
    /// retry. Since version 2.
    NeedToolchain,
}

impl Request {
    /// The decompressed size a request's payload announces (a unit, a blob, a source file, a
    /// cache entry), which a node reserves memory for before decompressing it.
    pub fn payload_raw_len(&self) -> Option<u64> {
        match self {
            Request::Compile(req) => Some(req.unit.raw_len),
            Request::PutBlob(p) | Request::PutSource(p) => Some(p.raw_len),
            Request::CachePut(entry) => Some(entry.body.raw_len),
            _ => None,
        }
    }
}

impl Response {
    /// Shorthand for a refusal.
    pub fn refused(kind: RefusalKind, message: impl Into<String>) -> Response {
        Response::Refused(Refusal { kind, message: message.into() })
    }
}
