//! Sending a unit in source mode: the build's own command plus the files it can open, and what
//! one distributable call works out once on the way ([`Prepared`]).
//!
//! [`Prepared`] holds the compiler's toolchain, the include scan and the agent connection whose
//! handshake runs on a thread meanwhile; the object cache ([`crate::cache`]) asks it too. The
//! cache keys a miss on the scan (every file the compile can open, by content) and the farm path
//! sends the same scan in source mode, so a miss runs no preprocessor on the build host.
//!
//! The files come either from the include scanner ([`crate::scan`]: no preprocessor run on
//! this host at all; the compile writes the dependency file remotely and it comes back), or
//! from the linemarkers of the local `-E -fdirectives-only` run ([`crate::sources`]). The
//! agent asks for the toolchain and any file contents it lacks; they are sent, then the unit
//! again ([`exchange`], shared with LTRANS units).

use discomy_protocol::sources::FarmKeyFacts;
use discomy_protocol::{
    CachedSources, CompileResult, CompilerId, DepRequest, Digest, Payload, RefusalKind, Request,
    Response, SourceCompileRequest,
};
use tracing::debug;

use crate::args::{Deps, Unit};
use crate::client::{AgentClient, PendingAgent};
use crate::invocation::Invocation;
use crate::sources::{self, UnitFiles};
use crate::stats::{Fallback, Reason};
use crate::toolchain::{Toolchain, ToolchainError};
use crate::{scan, sysdirs, toolchain};

/// Which units go in source mode (`DISCOMY_SOURCE_MODE`).
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    /// Find the files with the include scanner first, without preprocessing locally.
    pub scan: bool,
    /// Source mode for every unit, not only those that need it.
    pub always: bool,
}

impl Mode {
    /// `scan` (the default): scanner first, then the preprocessor; `1`: preprocess, then source
    /// mode for every unit; `0`: preprocess, source mode only where only it gives the same
    /// object (`-g` with recorded switches).
    pub fn from_env() -> Mode {
        match std::env::var(crate::ENV_SOURCE_MODE).as_deref() {
            Ok("0") => Mode { scan: false, always: false },
            Ok("1") => Mode { scan: false, always: true },
            _ => Mode { scan: true, always: false },
        }
    }
}

/// The facts of one call, each computed on first use.
pub struct Prepared<'a> {
    inv: &'a Invocation,
    unit: &'a Unit,
    /// How units go in source mode.
    pub mode: Mode,
    tools: Option<Result<Toolchain, ToolchainError>>,
    scan: Option<Result<Scanned, ScanGaveUp>>,
    agent: Agent,
}

/// No agent to talk to, and why (nothing listens on the socket, or the handshake failed).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct NoAgent(String);

/// The call's agent connection, as far as it has got.
enum Agent {
    /// Not asked for yet.
    Unasked,
    /// Handshake running on its thread.
    Pending(PendingAgent),
    /// Handshaken, free for the next exchange.
    Ready(AgentClient),
    /// No agent (or the connection was lost): why.
    Failed(String),
}

impl<'a> Prepared<'a> {
    /// Nothing computed yet.
    pub fn new(inv: &'a Invocation, unit: &'a Unit) -> Prepared<'a> {
        Prepared {
            inv,
            unit,
            mode: Mode::from_env(),
            tools: None,
            scan: None,
            agent: Agent::Unasked,
        }
    }

    /// Connects to the agent now and runs the handshake on a thread (a missing agent is known at
    /// once); [`Prepared::agent`] takes the connection.
    pub fn connect_early(&mut self) {
        let socket = crate::client::socket_path();
        self.agent = match AgentClient::connect_in_background(&socket) {
            Ok(pending) => Agent::Pending(pending),
            Err(e) => Agent::Failed(format!("no agent at {}: {e}", socket.display())),
        };
    }

    /// The agent connection, kept for the exchanges after this one (the farm tier, the farm
    /// path, the report): the early one when there is one, else a new one.
    pub fn agent_mut(&mut self) -> Result<&mut AgentClient, NoAgent> {
        let socket = crate::client::socket_path();
        let no_agent = |e| format!("no agent at {}: {e}", socket.display());
        self.agent = match std::mem::replace(&mut self.agent, Agent::Unasked) {
            Agent::Pending(pending) => match pending.ready() {
                Ok(client) => Agent::Ready(client),
                Err(e) => Agent::Failed(no_agent(e)),
            },
            Agent::Unasked => match AgentClient::connect(&socket) {
                Ok(client) => Agent::Ready(client),
                Err(e) => Agent::Failed(no_agent(e)),
            },
            other => other,
        };
        match &mut self.agent {
            Agent::Ready(client) => Ok(client),
            Agent::Failed(why) => Err(NoAgent(why.clone())),
            Agent::Unasked | Agent::Pending(_) => Err(NoAgent("agent connection not made".into())),
        }
    }

    /// Hands the agent connection over (made now if not yet).
    pub fn agent(&mut self) -> Result<AgentClient, NoAgent> {
        self.agent_mut()?;
        match std::mem::replace(&mut self.agent, Agent::Unasked) {
            Agent::Ready(client) => Ok(client),
            _ => Err(NoAgent("agent connection not made".into())),
        }
    }

    /// Forgets a connection whose exchange failed or timed out (its state is unknown); the
    /// next use connects again.
    pub fn drop_agent(&mut self) {
        self.agent = Agent::Unasked;
    }

    /// A new connection, after a refused attempt left the old one's state unknown.
    pub fn reconnect(&mut self) -> Result<AgentClient, NoAgent> {
        self.drop_agent();
        self.agent()
    }

    /// Why there is no agent, when the early connection already failed (known without
    /// waiting for a handshake).
    pub fn missing_agent(&self) -> Option<NoAgent> {
        match &self.agent {
            Agent::Failed(why) => Some(NoAgent(why.clone())),
            _ => None,
        }
    }

    /// The toolchain the unit compiles with.
    pub fn toolchain(&mut self) -> Result<&Toolchain, &ToolchainError> {
        let (inv, unit) = (self.inv, self.unit);
        self.tools.get_or_insert_with(|| crate::compile::unit_toolchain(inv, unit)).as_ref()
    }

    /// The include scan, when the mode allows it; `Err` says why there is none.
    pub fn scan(&mut self) -> Result<&Scanned, ScanGaveUp> {
        if !self.mode.scan {
            return Err(ScanGaveUp::Off);
        }
        if self.scan.is_none() {
            let (inv, unit) = (self.inv, self.unit);
            let result = match self.toolchain() {
                Ok(tools) => scanned(inv, unit, tools),
                Err(e) => Err(ScanGaveUp::Toolchain(e.to_string())),
            };
            self.scan = Some(result);
        }
        match self.scan.as_ref() {
            Some(Ok(scanned)) => Ok(scanned),
            Some(Err(e)) => Err(e.clone()),
            None => Err(ScanGaveUp::Off),
        }
    }

    /// The scan, handed over to the farm path (made now if the mode allows and not yet).
    pub fn take_scan(&mut self) -> Result<Scanned, ScanGaveUp> {
        let _ = self.scan();
        self.scan.take().unwrap_or(Err(ScanGaveUp::Off))
    }

    /// The toolchain, handed over to the farm path (collected now if not yet).
    pub fn take_toolchain(&mut self) -> Result<Toolchain, ToolchainError> {
        self.tools.take().unwrap_or_else(|| crate::compile::unit_toolchain(self.inv, self.unit))
    }
}

/// A dependency file written remotely: where it goes (as the build named it) and its content.
pub type DepFile = (String, Vec<u8>);

/// What the farm answered for a unit.
pub enum Answer {
    /// The compile, and the dependency file when one was asked for.
    Compiled(CompileResult, Option<DepFile>),
    /// The farm tier's entry for the key sent with the unit: nothing was compiled.
    FarmHit {
        /// The unit's farm-tier key, which the entry must name.
        key: Digest,
        /// The entry.
        entry: Payload,
    },
}

/// How source mode failed.
pub enum SourceModeError {
    /// The unit cannot or could not go this way; another way may still work.
    Unavailable(Fallback),
    /// Compile locally (diagnostics to replay, a broken agent connection).
    Final(Fallback),
}

fn host_only(detail: impl Into<String>) -> SourceModeError {
    SourceModeError::Unavailable(Fallback::new(Reason::HostOnly, detail))
}

/// Environment variables that change what the compiler reads or writes, which a worker's
/// compile (run with a clean environment) would not see.
const LOCAL_ONLY_ENV: &[&str] = &[
    "CPATH",
    "C_INCLUDE_PATH",
    "CPLUS_INCLUDE_PATH",
    "OBJC_INCLUDE_PATH",
    "DEPENDENCIES_OUTPUT",
    "SUNPRO_DEPENDENCIES",
    "GCC_EXEC_PREFIX",
    "COMPILER_PATH",
];

/// Why the environment rules source mode out, if it does.
pub fn environment_blocks() -> Option<&'static str> {
    environment_blocks_but(&[])
}

/// [`environment_blocks`], the variables in `checked` left to the caller.
pub fn environment_blocks_but(checked: &[&str]) -> Option<&'static str> {
    LOCAL_ONLY_ENV
        .iter()
        .copied()
        .filter(|k| !checked.contains(k))
        .find(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

/// The working directory as the wire carries it.
fn cwd() -> Result<String, SourceModeError> {
    std::env::current_dir()
        .ok()
        .and_then(|d| sources::usable_cwd(&d))
        .ok_or_else(|| host_only("working directory not usable"))
}

/// Why the include scanner gave the unit up (it is then preprocessed locally).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScanGaveUp {
    /// `DISCOMY_SOURCE_MODE` turned the scanner off.
    #[error("include scanner off (DISCOMY_SOURCE_MODE)")]
    Off,
    /// The unit's toolchain could not be collected.
    #[error("toolchain: {0}")]
    Toolchain(String),
    /// An environment variable changes what gcc reads.
    #[error("{0} is set")]
    Environment(&'static str),
    /// Dependency-file options only the preprocessor reproduces.
    #[error("{0}")]
    Dependencies(String),
    /// The working directory cannot be named on a worker.
    #[error("working directory not usable")]
    WorkingDirectory,
    /// The compiler's own search directories could not be learned.
    #[error("the compiler's search directories: {0}")]
    SystemDirs(String),
    /// A search option the scanner does not model.
    #[error("{0}")]
    SearchOption(String),
    /// The files themselves (a computed include, `__TIMESTAMP__`, `..` through a link, …).
    #[error("{0}")]
    Files(String),
}

/// A unit's files from the include scanner, the dependency file to ask the worker for, and the
/// working directory the scan resolved relative names against.
pub struct Scanned {
    /// Every file the compile can open.
    pub files: UnitFiles,
    /// Where the dependency file goes, and how the worker writes it.
    pub deps: Option<(String, DepRequest)>,
    /// The working directory, as the request names it.
    pub cwd: String,
}

/// The unit's files from the include scanner, and the dependency file to ask for.
pub fn scanned(
    inv: &Invocation,
    unit: &Unit,
    tools: &toolchain::Toolchain,
) -> Result<Scanned, ScanGaveUp> {
    let started = std::time::Instant::now();
    if let Some(var) = environment_blocks() {
        return Err(ScanGaveUp::Environment(var));
    }
    let deps = match &unit.deps {
        Deps::None => None,
        Deps::File { user_only, file, targets } => {
            Some((file.clone(), DepRequest { user_only: *user_only, targets: targets.clone() }))
        }
        Deps::Unsupported(why) => return Err(ScanGaveUp::Dependencies(why.clone())),
    };
    let cwd = cwd().map_err(|_| ScanGaveUp::WorkingDirectory)?;
    let identity = tools.manifest.digest();
    let system = sysdirs::system_dirs(
        &inv.compiler,
        &identity,
        unit.language,
        &unit.source_args,
        &inv.child_path,
    )
    .map_err(ScanGaveUp::SystemDirs)?;
    let dirs =
        scan::search_dirs(&unit.source_args, &cwd, &system).map_err(ScanGaveUp::SearchOption)?;
    let files =
        scan::scan(&unit.source, &cwd, &dirs).map_err(|e| ScanGaveUp::Files(e.to_string()))?;
    debug!(
        files = files.files.len(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        "includes scanned"
    );
    Ok(Scanned { files, deps, cwd })
}

/// The unit's files from the linemarkers of its `-fdirectives-only` output.
pub fn from_linemarkers(
    unit: &Unit,
    tools: &toolchain::Toolchain,
    unit_text: &[u8],
) -> Result<UnitFiles, SourceModeError> {
    if let Some(var) = environment_blocks() {
        return Err(host_only(format!("{var} is set")));
    }
    if unit.source_args.iter().any(|a| a == "-imacros") {
        return Err(host_only("-imacros files are not in the preprocessor's output"));
    }
    let cwd = cwd()?;
    sources::collect(unit_text, &unit.source_args, &cwd, &sources::toolchain_dirs(&tools.manifest))
        .map_err(|e| host_only(e.to_string()))
}

/// Sends the unit, supplying the toolchain and file contents the agent asks for; returns the
/// compile and, when one was asked for, the dependency file with the path it goes to. With
/// `farm_facts` (its files' facts, [`crate::cache::key::Scanned`]), the farm tier is asked for
/// the unit's farm-tier key in the same trip, and its entry may come back instead.
pub fn send(
    agent: &mut AgentClient,
    inv: &Invocation,
    unit: &Unit,
    tools: &toolchain::Toolchain,
    files: UnitFiles,
    deps: Option<(String, DepRequest)>,
    farm_facts: Option<FarmKeyFacts>,
) -> Result<Answer, SourceModeError> {
    let started = std::time::Instant::now();
    let (dep_path, dep_request) = match deps {
        Some((path, request)) => (Some(path), Some(request)),
        None => (None, None),
    };
    let source_unit = SourceCompileRequest {
        compiler: CompilerId { name: inv.name.clone(), identity: tools.manifest.digest() },
        language: unit.language,
        output: unit.output_kind,
        args: unit.source_args.clone(),
        cwd: cwd()?,
        source_name: unit.source.clone(),
        files: files.files.clone(),
        source_date_epoch: std::env::var("SOURCE_DATE_EPOCH").ok(),
        deps: dep_request,
    };
    let request = match farm_facts {
        Some(facts) => {
            let key = source_unit.farm_key(source_unit.farm_key_facts(facts));
            Request::CompileSourcesCached(CachedSources { key, unit: source_unit, store_at: None })
        }
        None => Request::CompileSources(source_unit),
    };
    let answer = exchange(agent, tools, &files, &request, dep_path);
    debug!(
        files = files.files.len(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        "source-mode answer"
    );
    answer
}

/// Sends a source-mode `request` (a [`Request::CompileSources`] or
/// [`Request::CompileSourcesCached`]) and supplies what the agent asks for (the toolchain, the
/// contents of `files`) until it answers; `dep_path` is where an asked-for dependency file goes.
/// Shared by compile units and LTRANS units ([`crate::ltrans`]).
pub fn exchange(
    agent: &mut AgentClient,
    tools: &toolchain::Toolchain,
    files: &UnitFiles,
    request: &Request,
    dep_path: Option<String>,
) -> Result<Answer, SourceModeError> {
    use SourceModeError::{Final, Unavailable};
    let farm_key = match request {
        Request::CompileSourcesCached(cached) => Some(cached.key),
        _ => None,
    };
    let agent_error = |detail: String| Final(Fallback::new(Reason::AgentError, detail));
    let call = |agent: &mut AgentClient, r: &Request| {
        agent.call(r).map_err(|e| agent_error(format!("agent: {e}")))
    };
    let mut response = call(agent, request)?;
    for _ in 0..3 {
        match &response {
            Response::Refused(r) if r.kind == RefusalKind::NeedToolchain => {
                agent.push_toolchain(tools).map_err(|e| {
                    Final(Fallback::new(Reason::Toolchain, format!("toolchain upload: {e}")))
                })?;
            }
            Response::MissingBlobs(blobs) => {
                for blob in blobs {
                    let content = files.contents.get(blob).ok_or_else(|| {
                        agent_error(format!(
                            "agent asked for a file this unit does not have: {blob}"
                        ))
                    })?;
                    match call(agent, &Request::PutSource(Payload::compress(content)))? {
                        Response::Stored(d) if d == *blob => {}
                        other => {
                            return Err(agent_error(format!(
                                "agent did not store {blob}: {other:?}"
                            )));
                        }
                    }
                }
            }
            _ => break,
        }
        response = call(agent, request)?;
    }
    let response = match (response, farm_key) {
        (Response::CacheHit(entry), Some(key)) => return Ok(Answer::FarmHit { key, entry }),
        (response, _) => response,
    };
    match (response, dep_path) {
        (Response::Compiled(result), None) => Ok(Answer::Compiled(result, None)),
        (Response::Compiled(result), Some(_)) if result.exit_code != 0 => {
            Ok(Answer::Compiled(result, None))
        }
        (Response::CompiledSources(r), Some(path)) => {
            Ok(Answer::Compiled(r.result, Some((path, r.dep_file))))
        }
        (Response::Refused(r), _) => Err(Unavailable(Fallback::refused(&r))),
        (other, _) => Err(agent_error(format!("agent answered out of turn: {other:?}"))),
    }
}
