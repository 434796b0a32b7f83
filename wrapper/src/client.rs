//! The blocking agent client: one Unix-socket connection per call.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use discomy_protocol::frame::{read_frame, write_frame};
use discomy_protocol::handshake::client_handshake;
use discomy_protocol::{AuthConfig, ProtocolError, Request, Response};

/// Where the agent listens when `DISCOMY_SOCKET` is not set. mock bind-mounts `/run/discomy`.
pub const DEFAULT_SOCKET: &str = "/run/discomy/agent.sock";

/// How long to wait for the agent's answer before compiling locally. The agent has its own,
/// shorter per-worker limits and answers with a refusal when they run out.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(1800);

/// The agent socket path for this call.
pub fn socket_path() -> PathBuf {
    std::env::var_os(crate::ENV_SOCKET)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// A handshaken connection to the agent.
pub struct AgentClient {
    stream: UnixStream,
}

impl AgentClient {
    /// Connects and performs the handshake.
    pub fn connect(path: &Path) -> Result<AgentClient, ProtocolError> {
        let mut stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        client_handshake(&mut stream, &AuthConfig::none())?;
        Ok(AgentClient { stream })
    }

    /// Sends one request and waits for its response.
    pub fn call(&mut self, request: &Request) -> Result<Response, ProtocolError> {
        write_frame(&mut self.stream, request)?;
        self.stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        read_frame(&mut self.stream)
    }
}
