//! discomy-cc, the compiler wrapper.
//!
//! It runs once per compiler call inside the build (often inside a mock chroot), decides whether
//! the call is a distributable unit, asks the object cache, finds the unit's files with the
//! include scanner (preprocessing locally only where the scanner gives up), ships it to the local
//! agent over a Unix socket and writes the returned object atomically. Any farm failure falls
//! back to running the real compiler exactly as the build asked. Each call's outcome is counted
//! (`discomy stats`, `discomy run`'s summary). It never prints its own messages to stdout.
//!
//! # Layout
//! - [`invocation`]: which real compiler was meant (explicit, masquerade link, launcher).
//! - [`args`]: parsing and classifying the compiler arguments.
//! - [`identity`]: the cache directory and stat stamps that validate cached manifests.
//! - [`client`]: the blocking agent client.
//! - [`compile`]: the distributed path (cache, ship, write output, fall back).
//! - [`scan`]: the include scanner; [`sources`]: files from linemarkers; [`source_mode`]:
//!   sending a unit with its files, and a call's toolchain, include scan and agent connection,
//!   computed once ([`source_mode::Prepared`]); [`sysdirs`]: the compiler's own include
//!   directories.
//! - [`local`]: running the real compiler locally.
//! - [`ltrans`]: the partitions of an LTO link (LTRANS units) on the farm, through gcc's `MAKE`.
//! - [`stats`]: each call's outcome and reason, for the agent and `discomy run`'s summary.
//! - [`names`]: compiler names for masquerade directories.
//! - [`toolchain`]: the compiler's closure as a content-addressed manifest, cached.
//! - [`icecream`]: importing `icecc-create-env` tarballs as toolchains.
//! - [`cache`]: the content-addressed object cache (local tier, direct mode, `--stats`).

pub mod args;
pub mod cache;
pub mod client;
pub mod compile;
pub mod icecream;
pub mod identity;
pub mod invocation;
pub mod local;
pub mod ltrans;
pub mod names;
pub mod scan;
pub mod source_mode;
pub mod sources;
pub mod stats;
pub mod sysdirs;
pub mod toolchain;
pub mod verify;

use std::ffi::OsString;
use std::process::ExitCode;

use discomy_protocol::plumbing::env;

/// Environment variable: `1` (or `true`, `yes`) never distributes.
pub const ENV_DISABLE: &str = env::DISABLE;
/// Environment variable: the agent's Unix socket.
pub const ENV_SOCKET: &str = env::SOCKET;
/// How units go in source mode: unset or `scan` (include scanner, no local preprocessing, where
/// possible), `1` (preprocess, then source mode for every unit), `0` (preprocess; source mode
/// only for `-g` with recorded switches). See [`source_mode::Mode`].
pub const ENV_SOURCE_MODE: &str = env::SOURCE_MODE;
/// Environment variable: set in the real compiler's environment so nested calls run directly.
pub const ENV_SAFEGUARD: &str = env::SAFEGUARD;
/// Environment variable: log filter for the wrapper (logs go to stderr or `DISCOMY_LOG_FILE`).
pub const ENV_LOG: &str = env::LOG;

/// Exit code when the wrapper cannot find or start the real compiler (as a shell would).
pub const EXIT_NO_COMPILER: u8 = 127;
/// Exit code for a wrapper usage error.
pub const EXIT_USAGE: u8 = 2;

/// Runs one wrapper invocation and returns the exit code to leave with.
pub fn run(argv: Vec<OsString>) -> ExitCode {
    init_logging();
    // lto-wrapper's `MAKE` at an LTO link: before anything else, the recursion guard included.
    if let Some(code) = ltrans::make_shim(&argv) {
        return code;
    }
    if let Some(code) = cache_command(&argv) {
        return code;
    }
    let inv = match invocation::Invocation::resolve(argv) {
        Ok(invocation::Resolved::Compile(inv)) => inv,
        Ok(invocation::Resolved::Version) => {
            return report(&format!("discomy-cc {}", env!("CARGO_PKG_VERSION")), 0);
        }
        Err(err) => {
            let code = match err {
                invocation::InvocationError::Usage(_) => EXIT_USAGE,
                _ => EXIT_NO_COMPILER,
            };
            return report(&format!("discomy-cc: {err}"), code);
        }
    };
    compile::dispatch(&inv)
}

/// `discomy-cc --stats` and the other cache commands (only under the wrapper's own name).
fn cache_command(argv: &[OsString]) -> Option<ExitCode> {
    let argv0 = std::path::Path::new(argv.first()?);
    if !argv0.file_name()?.to_string_lossy().starts_with("discomy-cc") {
        return None;
    }
    let rest: Vec<String> = argv[1..].iter().map(|a| a.to_string_lossy().into_owned()).collect();
    cache::command::run(&rest)
}

/// The wrapper's single output point for its own messages: stderr, never stdout.
#[expect(clippy::print_stderr, reason = "the wrapper's one place that speaks for itself")]
fn report(message: &str, code: u8) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(code)
}

fn init_logging() {
    let Some(filter) = std::env::var_os(ENV_LOG) else { return };
    let filter = tracing_subscriber::EnvFilter::new(filter.to_string_lossy());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    match std::env::var_os(env::LOG_FILE)
        .and_then(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).ok())
    {
        Some(file) => builder.with_writer(std::sync::Mutex::new(file)).init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
}
