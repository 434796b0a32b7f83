//! Running the real compiler locally, exactly as the build asked.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitCode, ExitStatus};

use crate::invocation::Invocation;

/// The real compiler with the call's arguments, the masquerade-free PATH and the recursion guard.
pub fn command(inv: &Invocation) -> Command {
    let mut cmd = Command::new(&inv.compiler);
    cmd.args(&inv.args).env("PATH", &inv.child_path).env(crate::ENV_SAFEGUARD, "1");
    cmd
}

/// Replaces this process with the real compiler (used where no accounting is needed).
pub fn exec(inv: &Invocation) -> ExitCode {
    let err = command(inv).exec();
    crate::report(
        &format!("discomy-cc: failed to run {}: {err}", inv.compiler.display()),
        crate::EXIT_NO_COMPILER,
    )
}

/// Runs the real compiler with inherited stdio and returns its exit status, unchanged.
pub fn run(inv: &Invocation) -> (ExitCode, i32) {
    match command(inv).status() {
        Ok(status) => (exit_code(status), raw_code(status)),
        Err(err) => (
            crate::report(
                &format!("discomy-cc: failed to run {}: {err}", inv.compiler.display()),
                crate::EXIT_NO_COMPILER,
            ),
            i32::from(crate::EXIT_NO_COMPILER),
        ),
    }
}

/// The status as a shell would report it: the code, or 128 + signal.
pub fn raw_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Leaves the way the compiler left: the same code, or 128 + signal as a shell reports it.
pub fn exit_code(status: ExitStatus) -> ExitCode {
    ExitCode::from(u8::try_from(raw_code(status) & 0xff).unwrap_or(1))
}
