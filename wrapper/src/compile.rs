//! The distributed path: classify, ask the object cache, ship the unit (the include scanner's
//! files in source mode, or a locally preprocessed unit where the scanner gives up), write the
//! output atomically, fall back to a local compile on any farm failure, and count the outcome.
//!
//! Diagnostics are always the real compiler's own: when preprocessing or the remote compile
//! prints anything or fails, the call is compiled locally and the local output is what the build
//! sees, so warnings and errors are byte-identical to a build without discomy.

use std::io::Write;
use std::path::Path;
use std::process::{ExitCode, Stdio};

use discomy_protocol::payload::MAX_RAW_LEN;
use discomy_protocol::plumbing::write_atomically;
use discomy_protocol::sources::FarmKeyFacts;
use discomy_protocol::{
    CompileRequest, CompileResult, CompilerId, Payload, RefusalKind, Request, Response,
};
use tracing::{debug, info};

use crate::args::{Class, Unit, classify};
use crate::client::AgentClient;
use crate::invocation::Invocation;
use crate::source_mode::{self, Answer, Prepared, Scanned, SourceModeError};
use crate::stats::{self, Fallback, Outcome, Reason};
use crate::{cache, local, toolchain};

/// Handles one resolved call.
pub fn dispatch(inv: &Invocation) -> ExitCode {
    if std::env::var_os(crate::ENV_SAFEGUARD).is_some() {
        return local::exec(inv);
    }
    let Some(args) =
        inv.args.iter().map(|a| a.to_str().map(String::from)).collect::<Option<Vec<_>>>()
    else {
        return local::exec(inv);
    };
    if let Some(call) = crate::ltrans::detect(&args) {
        return crate::ltrans::run(inv, &call);
    }
    let unit = match classify(&inv.name, &args) {
        Class::Passthrough(reason) => {
            debug!(reason = reason.key(), "not a compile");
            stats::record(Outcome::NotUnit, reason, 0, "", None);
            if reason == Reason::Link && !disabled() && crate::ltrans::is_lto_link(&args) {
                return crate::ltrans::exec_link(inv);
            }
            return local::exec(inv);
        }
        Class::Local(reason) => {
            debug!(%reason, "compiling locally");
            return run_local(inv, Outcome::Local, reason.kind, &source_of(&args), None);
        }
        Class::Distribute(unit) => unit,
    };
    let farm_on = !disabled();
    let mut prep = Prepared::new(inv, &unit);
    if farm_on && prep.mode.scan {
        // The handshake runs on a thread while the cache and the scanner work.
        prep.connect_early();
    }
    let cached = match cache::lookup(inv, &args, &unit, &mut prep) {
        cache::Lookup::Hit(code) => {
            let mut agent = if farm_on { prep.agent().ok() } else { None };
            stats::record(Outcome::Cache, Reason::None, 0, &unit.source, agent.as_mut());
            return code;
        }
        cache::Lookup::Miss(pending) => Some(pending),
        cache::Lookup::Off => None,
    };
    if !farm_on {
        return run_local(inv, Outcome::Local, Reason::Disabled, &unit.source, cached);
    }
    let farm_facts = cached.as_ref().and_then(|pending| pending.farm_facts());
    match remote(inv, &unit, &mut prep, farm_facts) {
        Ok((Remote::Compiled { stdout, node }, mut agent)) => {
            stats::record(Outcome::Remote, Reason::None, 0, &unit.source, Some(&mut agent));
            if let Some(pending) = cached {
                pending.store(&stdout, b"", Some(&node));
            }
            ExitCode::SUCCESS
        }
        Ok((Remote::Verify { node, object }, agent)) => {
            verify_locally(inv, &unit, cached, node, &object, agent)
        }
        Ok((Remote::FarmHit { key, entry }, mut agent)) => {
            match cached.map(|p| p.serve_farm(key, &entry)) {
                Some(Ok(code)) => {
                    stats::record(Outcome::Cache, Reason::None, 0, &unit.source, Some(&mut agent));
                    code
                }
                // Not usable here (its output would differ on this terminal or in this directory).
                unusable => {
                    let detail = "the farm tier's entry is not usable here";
                    info!(source = %unit.source, detail, "compiling locally instead");
                    let cached = unusable.and_then(Result::err);
                    run_local(inv, Outcome::Fallback, Reason::FarmRefused, &unit.source, cached)
                }
            }
        }
        Err(fallback) => {
            info!(source = %unit.source, %fallback, "compiling locally instead");
            run_local(inv, Outcome::Fallback, fallback.reason, &unit.source, cached)
        }
    }
}

fn disabled() -> bool {
    discomy_protocol::plumbing::env::flag(crate::ENV_DISABLE) == Some(true)
}

fn source_of(args: &[String]) -> String {
    args.iter().find(|a| crate::args::source_language(a).is_some()).cloned().unwrap_or_default()
}

/// Compiles a remote unit locally as its agent asked, keeps the local object, and tells the
/// agent whether the farm's was the same. A local compile that fails gives no verdict (the
/// host, not the node, may be at fault); its result is the call's, as without the farm.
fn verify_locally(
    inv: &Invocation,
    unit: &Unit,
    cached: Option<Box<cache::Pending>>,
    node: String,
    remote: &[u8],
    mut agent: AgentClient,
) -> ExitCode {
    let (code, raw) = match cached {
        Some(pending) => pending.compile_locally(inv),
        None => local::run(inv),
    };
    let local = if raw == 0 { std::fs::read(&unit.output).ok() } else { None };
    let verdict = local.map(|l| crate::verify::compare(&l, remote, &unit.compile_args));
    let (outcome, reason) = match verdict {
        Some(crate::verify::Verdict::Different) => (Outcome::Fallback, Reason::VerifyMismatch),
        _ => (Outcome::Remote, Reason::None),
    };
    stats::record(outcome, reason, raw, &unit.source, Some(&mut agent));
    if let Some(v) = verdict.filter(|v| *v != crate::verify::Verdict::Inconclusive) {
        let matched = v == crate::verify::Verdict::Same;
        if !matched {
            info!(source = %unit.source, %node, "the farm's object differs from the local one");
        }
        let verification =
            discomy_protocol::stats::Verification { node, matched, source: unit.source.clone() };
        let _ =
            discomy_protocol::frame::write_frame(agent.stream(), &Request::Verified(verification));
    }
    code
}

fn run_local(
    inv: &Invocation,
    outcome: Outcome,
    reason: Reason,
    source: &str,
    cached: Option<Box<cache::Pending>>,
) -> ExitCode {
    let (code, raw) = match cached {
        Some(pending) => pending.compile_locally(inv),
        None => local::run(inv),
    };
    stats::record(outcome, reason, raw, source, None);
    code
}

/// What the farm did with a call.
enum Remote {
    /// Compiled on `node`: the compiler's stdout (already replayed); the output is written.
    Compiled {
        /// The compiler's standard output.
        stdout: Vec<u8>,
        /// The node that compiled it.
        node: String,
    },
    /// Compiled on `node`, and the agent asks for a local compile to compare with: nothing is
    /// written or replayed yet.
    Verify {
        /// The node that compiled it.
        node: String,
        /// Its object.
        object: Vec<u8>,
    },
    /// The farm tier's entry for the key sent with the unit, to serve.
    FarmHit {
        /// The unit's farm-tier key, which the entry must name.
        key: discomy_protocol::Digest,
        /// The entry.
        entry: Payload,
    },
}

/// Tries the farm, asking its cache tier in the same trip when given the unit's `farm_facts`
/// (its files' facts for the farm-tier key): `Ok` carries
/// what the farm did and the agent connection, `Err` why the call must be compiled locally
/// instead.
fn remote(
    inv: &Invocation,
    unit: &Unit,
    prep: &mut Prepared<'_>,
    farm_facts: Option<FarmKeyFacts>,
) -> Result<(Remote, AgentClient), Fallback> {
    // The agent first: without one (a fast refusal), nothing is scanned or preprocessed for it.
    let no_agent = |e: source_mode::NoAgent| Fallback::new(Reason::NoAgent, e.to_string());
    if let Some(missing) = prep.missing_agent() {
        return Err(no_agent(missing));
    }
    let toolchain_error =
        |e: toolchain::ToolchainError| Fallback::new(Reason::Toolchain, e.to_string());
    let mode = prep.mode;
    let scanned = prep.take_scan();
    let mut agent = prep.agent().map_err(no_agent)?;
    // Scanned: no preprocessor on this host at all (when the includes can be found by reading).
    match scanned {
        Ok(Scanned { files, deps, .. }) => {
            let tools = prep.take_toolchain().map_err(toolchain_error)?;
            match source_mode::send(&mut agent, inv, unit, &tools, files, deps, farm_facts) {
                Ok(Answer::Compiled(result, dep_file)) => {
                    return finish(unit, result, dep_file).map(|r| (r, agent));
                }
                Ok(Answer::FarmHit { key, entry }) => {
                    return Ok((Remote::FarmHit { key, entry }, agent));
                }
                Err(SourceModeError::Final(fallback)) => return Err(fallback),
                Err(SourceModeError::Unavailable(fallback)) => {
                    debug!(source = %unit.source, %fallback, "scanned unit refused; preprocessing");
                    agent = prep.reconnect().map_err(no_agent)?;
                }
            }
        }
        Err(reason) if mode.scan => {
            debug!(source = %unit.source, %reason, "include scan gave up; preprocessing");
        }
        Err(_) => {}
    }
    // Preprocessing runs while we look up the toolchain (unless the scan or the cache did).
    let mut cpp = Preprocessor::start(inv, unit)?;
    let tools = prep.take_toolchain().map_err(toolchain_error)?;
    let identity = tools.manifest.digest();
    let unit_text = cpp.finish()?;
    if memchr_str(&unit_text, b"__TIMESTAMP__") {
        return Err(Fallback::new(
            Reason::HostOnly,
            "source uses __TIMESTAMP__, which depends on the local file",
        ));
    }
    if unit.needs_sources || mode.always {
        let sent = source_mode::from_linemarkers(unit, &tools, &unit_text)
            .and_then(|files| source_mode::send(&mut agent, inv, unit, &tools, files, None, None));
        match sent {
            Ok(Answer::Compiled(result, _)) => {
                return finish(unit, result, None).map(|r| (r, agent));
            }
            Ok(Answer::FarmHit { .. }) => {
                return Err(Fallback::new(Reason::AgentError, "agent answered out of turn"));
            }
            Err(SourceModeError::Final(fallback)) => return Err(fallback),
            Err(SourceModeError::Unavailable(fallback)) if unit.needs_sources => {
                return Err(fallback);
            }
            Err(SourceModeError::Unavailable(fallback)) => {
                debug!(source = %unit.source, %fallback, "source mode unavailable; sending the preprocessed unit");
                agent = prep.reconnect().map_err(no_agent)?;
            }
        }
    }
    let request = Request::Compile(CompileRequest {
        compiler: CompilerId { name: inv.name.clone(), identity },
        language: unit.language,
        output: unit.output_kind,
        args: unit.compile_args.clone(),
        source_name: unit.source.clone(),
        unit: Payload::compress(&unit_text),
        source_date_epoch: std::env::var("SOURCE_DATE_EPOCH").ok(),
    });
    drop(unit_text);
    let agent_error = |e: discomy_protocol::ProtocolError| {
        Fallback::new(Reason::AgentError, format!("agent: {e}"))
    };
    let mut response = agent.call(&request).map_err(agent_error)?;
    if let Response::Refused(r) = &response {
        if r.kind == RefusalKind::NeedToolchain {
            // First use of this compiler through this agent: send it, once, then ask again.
            agent
                .push_toolchain(&tools)
                .map_err(|e| Fallback::new(Reason::Toolchain, format!("toolchain upload: {e}")))?;
            response = agent.call(&request).map_err(agent_error)?;
        }
    }
    let result = match response {
        Response::Compiled(result) => result,
        Response::Refused(refusal) => return Err(Fallback::refused(&refusal)),
        other => {
            return Err(Fallback::new(
                Reason::AgentError,
                format!("agent answered out of turn: {other:?}"),
            ));
        }
    };
    finish(unit, result, None).map(|r| (r, agent))
}

/// Writes a successful remote result where the build expects it (the dependency file first,
/// then the object); a result with diagnostics is refused so that the local compiler reports
/// them.
fn finish(
    unit: &Unit,
    result: CompileResult,
    dep_file: Option<source_mode::DepFile>,
) -> Result<Remote, Fallback> {
    if result.exit_code != 0 || !result.stderr.is_empty() {
        return Err(Fallback::new(
            Reason::Diagnostics,
            format!(
                "compile on {} reported diagnostics (exit {}); replaying locally for exact output",
                result.node, result.exit_code
            ),
        ));
    }
    let bad_output = |detail: String| Fallback::new(Reason::FarmRefused, detail);
    let output = result.output.ok_or_else(|| bad_output("farm returned no output file".into()))?;
    let bytes = output.decompress(MAX_RAW_LEN).map_err(|e| bad_output(e.to_string()))?;
    if result.verify {
        return Ok(Remote::Verify { node: result.node, object: bytes });
    }
    if let Some((path, content)) = dep_file {
        write_atomically(Path::new(&path), &content)
            .map_err(|e| Fallback::new(Reason::Output, format!("failed to write {path}: {e}")))?;
    }
    write_atomically(&unit.output, &bytes).map_err(|e| {
        Fallback::new(Reason::Output, format!("failed to write {}: {e}", unit.output.display()))
    })?;
    if !result.stdout.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(&result.stdout);
        let _ = out.flush();
    }
    debug!(source = %unit.source, node = %result.node, ms = result.compile_ms, "compiled remotely");
    Ok(Remote::Compiled { stdout: result.stdout, node: result.node })
}

/// The toolchain the unit compiles with: the closure of the compiler we run (plus the specs
/// files and plugins the command names), or the icecream tarball named by `ICECC_VERSION`.
pub(crate) fn unit_toolchain(
    inv: &Invocation,
    unit: &Unit,
) -> Result<toolchain::Toolchain, toolchain::ToolchainError> {
    if let Some(tarball) = std::env::var_os("ICECC_VERSION").map(std::path::PathBuf::from) {
        if tarball.is_file() {
            let name = if inv.name.contains("++") { "g++" } else { "gcc" };
            return crate::icecream::import_icecc_cached(&tarball, name);
        }
    }
    let extras = toolchain::extras_for_args(&unit.cpp_args, &inv.compiler, &inv.child_path)?;
    toolchain::collect_cached(&inv.compiler, &extras, &inv.child_path)
}

fn memchr_str(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The local preprocessing step (`-E -fdirectives-only` to a pipe), which also writes any
/// dependency file exactly where and how `-c` would have. Diagnostics mean "compile locally".
struct Preprocessor {
    child: Option<std::process::Child>,
}

impl Preprocessor {
    fn start(inv: &Invocation, unit: &Unit) -> Result<Preprocessor, Fallback> {
        let child = std::process::Command::new(&inv.compiler)
            .args(&unit.cpp_args)
            .args(&unit.dep_args)
            .args(["-E", "-fdirectives-only"])
            .env("PATH", &inv.child_path)
            .env(crate::ENV_SAFEGUARD, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Fallback::new(Reason::Toolchain, format!("failed to run the preprocessor: {e}"))
            })?;
        Ok(Preprocessor { child: Some(child) })
    }

    fn finish(&mut self) -> Result<Vec<u8>, Fallback> {
        let diagnostics = |detail: String| Fallback::new(Reason::Diagnostics, detail);
        let child =
            self.child.take().ok_or_else(|| diagnostics("preprocessor already finished".into()))?;
        let out =
            child.wait_with_output().map_err(|e| diagnostics(format!("preprocessor: {e}")))?;
        if !out.status.success() || !out.stderr.is_empty() {
            return Err(diagnostics("preprocessing reported diagnostics".into()));
        }
        Ok(out.stdout)
    }
}

impl Drop for Preprocessor {
    fn drop(&mut self) {
        // Abandoned (no agent, say): stop it; the local compile redoes everything it wrote.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
