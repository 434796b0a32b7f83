//! Sending one unit to a real distccd (protocol 1, or 2 with `,lzo`): one fresh connection per
//! unit, as distcc does, no pooling.
//!
//! The unit from `discomy-cc` is preprocessed with `-fdirectives-only`; distccd stores the body
//! under the preprocessed suffix of the source name we send (`.i`/`.ii`), so its gcc already
//! implies `-fpreprocessed`, and we add `-fdirectives-only` so macros left in the unit are
//! expanded — the same compile a discomy worker runs, so the object is byte-identical.
//!
//! distccd cannot check compiler identity: the agent only sends a unit here when the client's
//! compiler is the agent host's own compiler of that name (see `agent`), and the operator keeps
//! distccd hosts' compilers identical, as with distcc itself.

use std::time::{Duration, Instant};

use discomy_protocol::distcc::asyncio::read_reply;
use discomy_protocol::distcc::{Limits, Request, Version};
use discomy_protocol::payload::MAX_RAW_LEN;
use discomy_protocol::{CompileRequest, CompileResult, Language, OutputKind, Payload, Response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::hosts::HostSpec;

/// The distcc argv for a unit: bare compiler name, the unit's compile arguments,
/// `-fdirectives-only`, the mode, a source name with a preprocessed suffix, and `-o`.
pub fn distcc_argv(req: &CompileRequest) -> Vec<String> {
    let compiler = req.compiler.name.rsplit('/').next().unwrap_or(&req.compiler.name);
    let base = req.source_name.rsplit('/').next().unwrap_or("unit");
    let stem = base.rsplit_once('.').map_or(base, |(s, _)| s);
    let stem: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "_-+".contains(c) { c } else { '_' })
        .collect();
    let stem = if stem.is_empty() || stem.starts_with('-') { format!("unit{stem}") } else { stem };
    let suffix = match req.language {
        Language::C => "i",
        Language::Cxx => "ii",
    };
    let (mode, out) = match req.output {
        OutputKind::Object => ("-c", "o"),
        OutputKind::Assembly => ("-S", "s"),
    };
    let mut argv = vec![compiler.to_string()];
    argv.extend(req.args.iter().cloned());
    argv.push("-fdirectives-only".into());
    argv.push(mode.into());
    argv.push(format!("{stem}.{suffix}"));
    argv.push("-o".into());
    argv.push(format!("{stem}.{out}"));
    argv
}

/// Why a unit did not come back from a distccd (the host is then backed off).
#[derive(Debug, thiserror::Error)]
pub enum DistccClientError {
    /// The unit's payload did not decompress.
    #[error("unit payload: {0}")]
    Payload(discomy_protocol::ProtocolError),
    /// Connecting failed.
    #[error("distcc://{addr}: {source}")]
    Connect {
        /// The host.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// Connecting took too long.
    #[error("distcc://{addr}: connect timed out")]
    ConnectTimeout {
        /// The host.
        addr: String,
    },
    /// The exchange failed (an empty answer is distccd's refusal).
    #[error("distcc://{addr}: {source} (an empty answer is distccd's refusal)")]
    Exchange {
        /// The host.
        addr: String,
        /// The error.
        source: discomy_protocol::distcc::DistccError,
    },
    /// No answer in time.
    #[error("distcc://{addr}: no answer within {limit:?}")]
    Timeout {
        /// The host.
        addr: String,
        /// The limit.
        limit: Duration,
    },
}

/// Compiles `req` on distccd `spec`. `Err` is a transport or protocol failure (back off from the
/// host); a compiler failure is a `Compiled` with its status, which sends the wrapper local.
pub async fn compile(
    spec: &HostSpec,
    lzo: bool,
    req: &CompileRequest,
    connect_timeout: Duration,
    compile_timeout: Duration,
) -> Result<Response, DistccClientError> {
    let addr = spec.address();
    let version = if lzo { Version::Lzo } else { Version::Plain };
    let source = req.unit.decompress(MAX_RAW_LEN).map_err(DistccClientError::Payload)?;
    let request = Request { version, argv: distcc_argv(req), source }.encode();
    let started = Instant::now();
    let mut stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(&addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(DistccClientError::Connect { addr, source }),
        Err(_) => return Err(DistccClientError::ConnectTimeout { addr }),
    };
    let _ = stream.set_nodelay(true);
    let exchange = async {
        // Never half-close: distccd kills the job when it sees EOF.
        stream.write_all(&request).await?;
        read_reply(&mut stream, version, &Limits::default()).await
    };
    let reply = match tokio::time::timeout(compile_timeout, exchange).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(source)) => return Err(DistccClientError::Exchange { addr, source }),
        Err(_) => return Err(DistccClientError::Timeout { addr, limit: compile_timeout }),
    };
    let exit_code = reply.exit_code();
    Ok(Response::Compiled(CompileResult {
        exit_code,
        output: (exit_code == 0).then(|| Payload::compress(&reply.object)),
        stdout: reply.stdout,
        stderr: reply.stderr,
        node: format!("distcc://{addr}"),
        compile_ms: started.elapsed().as_millis() as u64,
        verify: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use discomy_protocol::{CompilerId, Digest};

    #[test]
    fn argv_is_what_distccd_compiles_identically() {
        let req = CompileRequest {
            compiler: CompilerId { name: "gcc".into(), identity: Digest::of(b"x") },
            language: Language::C,
            output: OutputKind::Object,
            args: vec!["-O2".into(), "-Wall".into()],
            source_name: "src/lapi.c".into(),
            unit: Payload::compress(b"int x;"),
            source_date_epoch: None,
        };
        assert_eq!(
            distcc_argv(&req).join(" "),
            "gcc -O2 -Wall -fdirectives-only -c lapi.i -o lapi.o"
        );
    }
}
