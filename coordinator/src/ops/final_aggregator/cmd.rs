//! External programs (createrepo_c, rpmsign, rpmkeys, gpg, rsync): explicit argument vectors, no
//! shell; output bounded; a failure names the command and the tail of its standard error.

use std::ffi::OsStr;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::AggregatorError;

/// At most this much of a program's stdout is kept.
const MAX_STDOUT: u64 = 4 << 20;
/// At most this much of its stderr is kept (the tail is reported).
const MAX_STDERR: u64 = 64 << 10;
/// The part of stderr an error shows.
const STDERR_TAIL: usize = 2000;

/// Finds `tool` on `PATH` (then in `/usr/bin`, `/usr/sbin`).
pub fn find_tool(tool: &str) -> Result<PathBuf, AggregatorError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .ok_or_else(|| AggregatorError::ToolMissing(tool.to_string()))
}

/// What a program printed.
#[derive(Debug)]
pub struct Output {
    /// Whether it exited with status 0.
    pub success: bool,
    /// Its exit status, for messages.
    pub status: String,
    /// Its standard output (bounded).
    pub stdout: String,
    /// Its standard error (bounded).
    pub stderr: String,
}

/// A command being assembled.
pub struct Cmd {
    command: Command,
    label: String,
}

impl Cmd {
    /// `tool` (found on `PATH`) with no arguments yet.
    pub fn new(tool: &str) -> Result<Cmd, AggregatorError> {
        let mut command = Command::new(find_tool(tool)?);
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.env("LC_ALL", "C");
        Ok(Cmd { command, label: tool.to_string() })
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        if self.label.len() < 200 {
            self.label.push(' ');
            self.label.push_str(&arg.as_ref().to_string_lossy());
        }
        self.command.arg(arg);
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Cmd {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Cmd {
        self.command.env(key, value);
        self
    }

    /// Runs it to the end, whatever its status.
    pub fn output(mut self) -> Result<Output, AggregatorError> {
        tracing::debug!(command = %self.label, "running");
        let mut child = self.command.spawn().map_err(|e| AggregatorError::Command {
            command: self.label.clone(),
            status: "not started".into(),
            stderr: e.to_string(),
        })?;
        let stderr = child.stderr.take();
        let reader = std::thread::spawn(move || read_bounded(stderr, MAX_STDERR));
        let stdout = read_bounded(child.stdout.take(), MAX_STDOUT);
        let stderr = reader.join().unwrap_or_default();
        let status = child.wait().map_err(|e| AggregatorError::Command {
            command: self.label.clone(),
            status: "lost".into(),
            stderr: e.to_string(),
        })?;
        Ok(Output { success: status.success(), status: status.to_string(), stdout, stderr })
    }

    /// Runs it and fails unless it exits with 0.
    pub fn run(self) -> Result<Output, AggregatorError> {
        let label = self.label.clone();
        let out = self.output()?;
        if out.success {
            return Ok(out);
        }
        Err(AggregatorError::Command {
            command: label,
            status: out.status,
            stderr: tail(&out.stderr),
        })
    }
}

/// Reads at most `max` bytes, then drains the rest so the program is not blocked on a full pipe.
fn read_bounded<R: Read>(reader: Option<R>, max: u64) -> String {
    let Some(mut reader) = reader else { return String::new() };
    let mut buf = Vec::new();
    let _ = reader.by_ref().take(max).read_to_end(&mut buf);
    let _ = std::io::copy(&mut reader, &mut std::io::sink());
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last [`STDERR_TAIL`] bytes of `text`, at a character boundary.
pub fn tail(text: &str) -> String {
    let text = text.trim_end();
    let mut start = text.len().saturating_sub(STDERR_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}
