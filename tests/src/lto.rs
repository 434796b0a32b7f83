//! Helpers shared by the LTO tests (`lto_farm`, `ltrans_fallback`).

use std::process::Command;

/// Runs `cmd` and asserts that it succeeded and printed nothing (`what` names it on failure).
pub fn run_quietly(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
