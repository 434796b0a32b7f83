//! LTRANS units: the partitions of an LTO link, compiled on the farm.
//!
//! At an LTO link gcc's `lto-wrapper` runs the whole-program analysis (WPA) and writes one
//! partition object per LTRANS job, then runs the jobs through a makefile of its own:
//! `$MAKE -f /tmp/ccXXXX.mk -jN all` (`make` when `MAKE` is unset), after `$MAKE --version`. Each
//! rule of that makefile is one compile `gcc '-xlto' '-c' … '-fltrans' '-o' OUT IN`: its input is
//! a self-contained GIMPLE object (no headers, no sources), and its output depends on the
//! working directory (`DW_AT_comp_dir`) but not on the file names.
//!
//! Three steps here:
//! - [`exec_link`]: a link with `-flto` runs the real compiler with `MAKE` set to this
//!   binary and [`ENV_MAKE`] to the make it replaces.
//! - [`make_shim`]: this binary called as that `MAKE` copies the makefile with every LTRANS
//!   recipe prefixed by `discomy-cc` (the `discomy-cc gcc …` form), runs the real make on the
//!   copy with the recursion guard removed (so the recipes reach [`detect`]), and leaves as it
//!   did. `-jN` is raised to [`ENV_JOBS`] when that is larger.
//! - [`detect`] and [`run`]: an LTRANS call ships its partition object by content at its own
//!   path as a source-mode unit (the build's arguments, run in the build's working directory)
//!   and writes the object that comes back; any farm failure runs it locally, exactly as asked.
//!
//! The WPA and the final link stay local (and serial). LTRANS units are counted apart from
//! compile units ([`crate::stats::record_ltrans`]).

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use discomy_protocol::payload::MAX_RAW_LEN;
use discomy_protocol::plumbing::fs::create_temp;
use discomy_protocol::plumbing::{env, read_untrusted, write_atomically};
use discomy_protocol::sources::normalise;
use discomy_protocol::{
    CompilerId, Digest, Language, OutputKind, Request, SourceCompileRequest, SourceFile,
};
use tracing::{debug, info};

use crate::client::AgentClient;
use crate::invocation::Invocation;
use crate::source_mode::{self, Answer, SourceModeError};
use crate::sources::UnitFiles;
use crate::stats::{self, Fallback, Outcome, Reason};
use crate::{local, toolchain};

/// Environment variable: the real make, set for a link whose `MAKE` is this binary.
pub const ENV_MAKE: &str = env::LTRANS_MAKE;
/// Environment variable: how many LTRANS units of one link run at once, at least.
pub const ENV_JOBS: &str = env::LTRANS_JOBS;

/// Largest makefile the shim rewrites (lto-wrapper's are a few hundred bytes per partition);
/// a larger one runs unchanged, its LTRANS units locally.
const MAX_MAKEFILE: u64 = 4 << 20;
/// Largest partition object shipped (a larger one is compiled locally).
const MAX_INPUT: u64 = 256 << 20;

/// Whether a link's arguments make it an LTO link: the last of `-flto`, `-flto=…` and
/// `-fno-lto` is one of the first two.
pub fn is_lto_link(args: &[String]) -> bool {
    args.iter()
        .rev()
        .find_map(|a| match a.as_str() {
            "-fno-lto" => Some(false),
            a if a == "-flto" || a.starts_with("-flto=") => Some(true),
            _ => None,
        })
        .unwrap_or(false)
}

/// Runs an LTO link (replacing this process) with `MAKE` pointing at this binary, so that its
/// LTRANS jobs come back here ([`make_shim`]). Falls back to the plain link when this binary
/// cannot name itself.
pub fn exec_link(inv: &Invocation) -> ExitCode {
    let mut cmd = local::command(inv);
    if let Some((shim, real)) = link_env() {
        cmd.env("MAKE", shim).env(ENV_MAKE, real);
    }
    let err = cmd.exec();
    crate::report(
        &format!("discomy-cc: failed to run {}: {err}", inv.compiler.display()),
        crate::EXIT_NO_COMPILER,
    )
}

/// `MAKE` and [`ENV_MAKE`] for an LTO link: this binary, and the make lto-wrapper would have run.
fn link_env() -> Option<(PathBuf, OsString)> {
    let me = std::env::current_exe().ok()?;
    let real = std::env::var_os("MAKE")
        .filter(|m| !m.is_empty() && Path::new(m) != me)
        .unwrap_or_else(|| "make".into());
    Some((me, real))
}

/// `discomy-cc` called as lto-wrapper's `MAKE`: `Some` with the exit code when it was
/// (`argv[0]` this binary, [`ENV_MAKE`] set, arguments `--version` or with `-f FILE`).
pub fn make_shim(argv: &[OsString]) -> Option<ExitCode> {
    let real = std::env::var_os(ENV_MAKE).filter(|m| !m.is_empty())?;
    let argv0 = Path::new(argv.first()?);
    if !argv0.file_name()?.to_string_lossy().starts_with("discomy-cc") {
        return None;
    }
    let args = &argv[1..];
    let version = args.len() == 1 && args[0] == "--version";
    let file_at = args.iter().position(|a| a == "-f").map(|i| i + 1).filter(|i| *i < args.len());
    if !version && file_at.is_none() {
        return None;
    }
    let mut cmd = Command::new(&real);
    // The recipes are ours to run: neither the guard nor the shim reaches them.
    cmd.env_remove(crate::ENV_SAFEGUARD).env_remove(ENV_MAKE).env("MAKE", &real);
    let copy = file_at.and_then(|i| rewritten_copy(Path::new(&args[i])));
    let jobs = std::env::var(ENV_JOBS).ok().and_then(|j| j.trim().parse::<u32>().ok());
    let jobs = jobs.filter(|_| file_at.is_some());
    let (make_args, raised) = make_args(args, file_at.zip(copy.as_deref()), jobs);
    cmd.args(make_args);
    if raised {
        // A parent's jobserver would make make warn about the forced -j.
        cmd.env_remove("MAKEFLAGS").env_remove("MFLAGS");
    }
    let code = match cmd.status() {
        Ok(status) => local::exit_code(status),
        Err(err) => crate::report(
            &format!("discomy-cc: failed to run {}: {err}", Path::new(&real).display()),
            crate::EXIT_NO_COMPILER,
        ),
    };
    if let Some(copy) = copy {
        let _ = std::fs::remove_file(copy);
    }
    Some(code)
}

/// The real make's arguments: lto-wrapper's, the makefile at index `copy.0` replaced by the copy
/// `copy.1`, `-jN` raised to `jobs` when that is larger (added when there is none: lto-wrapper
/// left the count to a jobserver); and whether the count changed.
fn make_args(
    args: &[OsString],
    copy: Option<(usize, &Path)>,
    jobs: Option<u32>,
) -> (Vec<OsString>, bool) {
    let mut out = Vec::with_capacity(args.len() + 1);
    let mut raised = false;
    for (i, arg) in args.iter().enumerate() {
        match (copy, jobs_of(arg), jobs) {
            (Some((at, copy)), _, _) if at == i => out.push(copy.as_os_str().to_owned()),
            (_, Some(n), Some(want)) if want > n => {
                raised = true;
                out.push(format!("-j{want}").into());
            }
            _ => out.push(arg.clone()),
        }
    }
    if let Some(want) = jobs.filter(|_| !args.iter().any(|a| jobs_of(a).is_some())) {
        out.insert(0, format!("-j{want}").into());
        raised = true;
    }
    (out, raised)
}

/// `N` of a `-jN` argument.
fn jobs_of(arg: &OsStr) -> Option<u32> {
    arg.to_str()?.strip_prefix("-j")?.parse().ok()
}

/// A copy of lto-wrapper's makefile next to it with the LTRANS recipes going through this
/// binary; `None` (the original runs, its units locally) when it cannot be read, is too large,
/// has no LTRANS recipe or the copy cannot be written.
fn rewritten_copy(makefile: &Path) -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let text = String::from_utf8(read_untrusted(makefile, MAX_MAKEFILE).ok()?).ok()?;
    let (rewritten, rules) = rewrite_makefile(&text, &me);
    if rules == 0 {
        return None;
    }
    let dir = makefile.parent().unwrap_or(Path::new(""));
    let (copy, mut file) = create_temp(dir, makefile.file_name()?, 0o600).ok()?;
    if file.write_all(rewritten.as_bytes()).is_err() {
        let _ = std::fs::remove_file(&copy);
        return None;
    }
    debug!(rules, makefile = %makefile.display(), "LTRANS recipes through discomy-cc");
    Some(copy)
}

/// lto-wrapper's makefile with every recipe line that runs an LTRANS compile (`'-fltrans'`)
/// prefixed by `wrapper` (quoted for the shell and for make); returns the text and how many
/// lines changed. Recipe prefixes (`@`, `-`, `+`) stay in front.
pub fn rewrite_makefile(text: &str, wrapper: &Path) -> (String, usize) {
    let quoted =
        format!("'{}'", wrapper.to_string_lossy().replace('\'', r"'\''")).replace('$', "$$");
    let mut out = String::with_capacity(text.len() + 64);
    let mut rules = 0;
    for line in text.split_inclusive('\n') {
        match line.strip_prefix('\t') {
            Some(recipe) if recipe.contains("'-fltrans'") => {
                let command = recipe.trim_start_matches(['@', '-', '+']);
                let prefixes = &recipe[..recipe.len() - command.len()];
                out.push('\t');
                out.push_str(prefixes);
                out.push_str(&quoted);
                out.push(' ');
                out.push_str(command);
                rules += 1;
            }
            _ => out.push_str(line),
        }
    }
    (out, rules)
}

/// An LTRANS call: `-xlto`/`-x lto`, `-c`, `-fltrans`, one input and `-o OUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ltrans {
    /// The partition object, as given.
    pub input: String,
    /// Where the object goes.
    pub output: PathBuf,
    /// The arguments a worker runs: the call's, `-xlto` as `-x lto`, without `-o`, `-dumpdir`,
    /// `-dumpbase`, `-dumpbase-ext` (they change no byte of the object) and the input, which
    /// comes last.
    pub args: Vec<String>,
    /// A name for logs and the coordinator's cost history: `-dumpbase` (`./lua.ltrans0.ltrans`,
    /// the same from one build to the next), else the input.
    pub name: String,
}

/// The LTRANS call `args` make, if they make one.
pub fn detect(args: &[String]) -> Option<Ltrans> {
    if !args.iter().any(|a| a == "-fltrans") {
        return None;
    }
    let (mut lto, mut compile) = (false, false);
    let (mut input, mut output, mut dumpbase) = (None, None, None);
    let mut kept = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let value = args.get(i + 1);
        i += 1;
        match arg {
            "-xlto" => lto = true,
            "-x" if value.is_some_and(|v| v == "lto") => {
                lto = true;
                i += 1;
            }
            "-o" | "-dumpdir" | "-dumpbase" | "-dumpbase-ext" => {
                let value = value?;
                i += 1;
                match arg {
                    "-o" if output.replace(PathBuf::from(value)).is_some() => return None,
                    "-dumpbase" => dumpbase = Some(value.clone()),
                    _ => {}
                }
            }
            "-c" => {
                compile = true;
                kept.push(arg.to_string());
            }
            // Anything else taking a separate value is not an LTRANS call lto-wrapper writes.
            "-x" | "-Xassembler" | "-Xlinker" | "-include" | "-specs" | "-wrapper" => return None,
            a if !a.starts_with('-') || a == "-" => {
                if input.replace(a.to_string()).is_some() {
                    return None;
                }
            }
            a => kept.push(a.to_string()),
        }
    }
    let (true, true, Some(input), Some(output)) = (lto, compile, input, output) else {
        return None;
    };
    let mut args = vec!["-x".to_string(), "lto".to_string()];
    args.extend(kept);
    args.push(input.clone());
    let name = dumpbase.unwrap_or_else(|| input.clone());
    Some(Ltrans { input, output, args, name })
}

/// Runs an LTRANS call: on the farm when it can, else locally exactly as asked.
pub fn run(inv: &Invocation, call: &Ltrans) -> ExitCode {
    let farm_off = discomy_protocol::plumbing::env::flag(crate::ENV_DISABLE) == Some(true);
    let fallback = if farm_off {
        Fallback::new(Reason::Disabled, "DISCOMY_DISABLE")
    } else {
        match remote(inv, call) {
            Ok(Done::Written) => {
                stats::record_ltrans(Outcome::Remote, Reason::None, 0, &call.name);
                return ExitCode::SUCCESS;
            }
            Ok(Done::Verify { node, object, agent }) => {
                return verify(inv, call, node, &object, agent);
            }
            Err(fallback) => fallback,
        }
    };
    info!(unit = %call.name, %fallback, "LTRANS unit compiled locally");
    let (code, raw) = local::run(inv);
    stats::record_ltrans(Outcome::Fallback, fallback.reason, raw, &call.name);
    code
}

/// What the farm did with an LTRANS unit.
enum Done {
    /// Its object is written.
    Written,
    /// Compiled on `node`; the agent asks for a local compile to compare with.
    Verify {
        /// The node.
        node: String,
        /// Its object.
        object: Vec<u8>,
        /// The connection to send the verdict on.
        agent: AgentClient,
    },
}

fn remote(inv: &Invocation, call: &Ltrans) -> Result<Done, Fallback> {
    let host_only = |detail: String| Fallback::new(Reason::HostOnly, detail);
    // gcc sets COMPILER_PATH for the programs of a link (lto-wrapper, and so these calls): it
    // is checked against the toolchain below.
    if let Some(var) = source_mode::environment_blocks_but(&["COMPILER_PATH"]) {
        return Err(host_only(format!("{var} is set")));
    }
    let cwd = std::env::current_dir()
        .ok()
        .and_then(|d| crate::sources::usable_cwd(&d))
        .ok_or_else(|| host_only("working directory not usable".into()))?;
    // The agent first: without one (a fast refusal), the partition is not read.
    let mut agent = AgentClient::connect(&crate::client::socket_path())
        .map_err(|e| Fallback::new(Reason::NoAgent, format!("agent: {e}")))?;
    let path = if call.input.starts_with('/') {
        call.input.clone()
    } else {
        format!("{cwd}/{}", call.input)
    };
    let path = normalise(&path).ok_or_else(|| host_only(format!("{}: leaves /", call.input)))?;
    let content = read_untrusted(Path::new(&path), MAX_INPUT)
        .map_err(|e| host_only(format!("{path}: {e}")))?;
    let tools = toolchain::extras_for_args(&call.args, &inv.compiler, &inv.child_path)
        .and_then(|extras| toolchain::collect_cached(&inv.compiler, &extras, &inv.child_path))
        .map_err(|e| Fallback::new(Reason::Toolchain, e.to_string()))?;
    if let Some(why) = compiler_path_differs(&tools.manifest) {
        return Err(host_only(why));
    }
    let digest = Digest::of(&content);
    let file = SourceFile { path, digest, size: content.len() as u64 };
    let files = UnitFiles { files: vec![file.clone()], contents: [(digest, content)].into() };
    let request = Request::CompileSources(SourceCompileRequest {
        compiler: CompilerId { name: inv.name.clone(), identity: tools.manifest.digest() },
        // Not read for source-mode units (the arguments name the language: `-x lto`).
        language: Language::C,
        output: OutputKind::Object,
        args: call.args.clone(),
        cwd,
        source_name: call.name.clone(),
        files: vec![file],
        source_date_epoch: std::env::var("SOURCE_DATE_EPOCH").ok(),
        deps: None,
    });
    let result = match source_mode::exchange(&mut agent, &tools, &files, &request, None) {
        Ok(Answer::Compiled(result, _)) => result,
        Ok(Answer::FarmHit { .. }) => {
            return Err(Fallback::new(Reason::AgentError, "agent answered out of turn"));
        }
        Err(SourceModeError::Final(f) | SourceModeError::Unavailable(f)) => return Err(f),
    };
    if result.exit_code != 0 || !result.stderr.is_empty() || !result.stdout.is_empty() {
        return Err(Fallback::new(
            Reason::Diagnostics,
            format!("LTRANS on {} printed or failed (exit {})", result.node, result.exit_code),
        ));
    }
    let bad = |detail: String| Fallback::new(Reason::FarmRefused, detail);
    let output = result.output.ok_or_else(|| bad("farm returned no object".into()))?;
    let object = output.decompress(MAX_RAW_LEN).map_err(|e| bad(e.to_string()))?;
    if result.verify {
        return Ok(Done::Verify { node: result.node, object, agent });
    }
    write_atomically(&call.output, &object).map_err(|e| {
        Fallback::new(Reason::Output, format!("failed to write {}: {e}", call.output.display()))
    })?;
    debug!(unit = %call.name, node = %result.node, ms = result.compile_ms, "LTRANS compiled remotely");
    Ok(Done::Written)
}

/// Programs an LTRANS compile's driver looks for in `COMPILER_PATH`.
const LTRANS_PROGRAMS: [&str; 2] = ["lto1", "as"];

/// Why `COMPILER_PATH` (which gcc sets for the programs of a link, to its own directories) could
/// make the local compile run other programs than a worker's, which runs without it: a
/// directory of it holding `lto1` or `as` where the toolchain has no entry.
fn compiler_path_differs(manifest: &discomy_protocol::ToolchainManifest) -> Option<String> {
    let value = std::env::var_os("COMPILER_PATH").filter(|v| !v.is_empty())?;
    let in_tree = |p: &str| manifest.entries.binary_search_by(|e| e.path.as_str().cmp(p)).is_ok();
    for dir in std::env::split_paths(&value) {
        for program in LTRANS_PROGRAMS {
            let path = dir.join(program);
            if std::fs::symlink_metadata(&path).is_err() {
                continue;
            }
            let named = path.to_str().and_then(normalise);
            if !named.as_deref().is_some_and(in_tree) {
                return Some(format!(
                    "COMPILER_PATH names {}, which the toolchain does not hold",
                    path.display()
                ));
            }
        }
    }
    None
}

/// Compiles the unit locally as the agent asked, keeps the local object and tells the agent
/// whether the farm's was the same (LTRANS objects are deterministic: byte for byte).
fn verify(
    inv: &Invocation,
    call: &Ltrans,
    node: String,
    remote: &[u8],
    mut agent: AgentClient,
) -> ExitCode {
    let (code, raw) = local::run(inv);
    let local = if raw == 0 { std::fs::read(&call.output).ok() } else { None };
    let matched = local.as_deref().map(|l| l == remote);
    let (outcome, reason) = match matched {
        Some(false) => (Outcome::Fallback, Reason::VerifyMismatch),
        _ => (Outcome::Remote, Reason::None),
    };
    stats::record_ltrans(outcome, reason, raw, &call.name);
    if let Some(matched) = matched {
        let verdict =
            discomy_protocol::stats::Verification { node, matched, source: call.name.clone() };
        let _ = discomy_protocol::frame::write_frame(agent.stream(), &Request::Verified(verdict));
    }
    code
}

#[cfg(test)]
mod tests;
