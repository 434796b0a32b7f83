//! The blocking agent client: one Unix-socket connection per call.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use discomy_protocol::frame::{read_frame, write_frame};
use discomy_protocol::handshake::client_handshake;
use discomy_protocol::{AuthConfig, Payload, ProtocolError, Request, Response};

use crate::toolchain::Toolchain;

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

/// A connection whose handshake runs on a thread of its own while the caller scans the unit:
/// its round trips to the agent then cost the call nothing. [`PendingAgent::ready`] hands the
/// connection over once the handshake is done; nothing else can use it before.
pub struct PendingAgent {
    handshake: std::thread::JoinHandle<Result<AgentClient, ProtocolError>>,
}

impl PendingAgent {
    /// The handshaken connection, or why the handshake failed.
    pub fn ready(self) -> Result<AgentClient, ProtocolError> {
        self.handshake.join().unwrap_or_else(|_| {
            Err(ProtocolError::Io(std::io::Error::other("handshake thread panicked")))
        })
    }
}

impl AgentClient {
    /// Connects and performs the handshake.
    pub fn connect(path: &Path) -> Result<AgentClient, ProtocolError> {
        AgentClient::connect_within(path, Duration::from_secs(10))
    }

    /// Connects with `limit` on the handshake and on every later write (and read, until a call
    /// sets its own): for the exchanges that are extras (a report, the farm tier of the
    /// cache), which a slow or wedged agent must not hold up.
    pub fn connect_within(path: &Path, limit: Duration) -> Result<AgentClient, ProtocolError> {
        let mut stream = open(path, limit)?;
        client_handshake(&mut stream, &AuthConfig::none())?;
        Ok(AgentClient { stream })
    }

    /// Connects now (so a missing agent is known at once) and runs the handshake in the
    /// background.
    pub fn connect_in_background(path: &Path) -> Result<PendingAgent, ProtocolError> {
        let mut stream = open(path, Duration::from_secs(10))?;
        let handshake = std::thread::Builder::new()
            .name("agent-handshake".into())
            .spawn(move || {
                client_handshake(&mut stream, &AuthConfig::none())?;
                Ok(AgentClient { stream })
            })
            .map_err(ProtocolError::Io)?;
        Ok(PendingAgent { handshake })
    }

    /// The connection itself, for a frame that gets no answer ([`Request::Report`]).
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    /// Sends one request and waits for its response.
    pub fn call(&mut self, request: &Request) -> Result<Response, ProtocolError> {
        write_frame(&mut self.stream, request)?;
        self.stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        read_frame(&mut self.stream)
    }
}

fn open(path: &Path, limit: Duration) -> Result<UnixStream, ProtocolError> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    Ok(stream)
}

/// Why a toolchain could not be handed to the agent.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The connection failed.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The agent asked for a blob this toolchain does not have.
    #[error("agent asked for unknown blob {0}")]
    UnknownBlob(discomy_protocol::Digest),
    /// A toolchain file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The agent answered something else than the next step.
    #[error("{0}")]
    Agent(String),
}

impl AgentClient {
    /// Sends a toolchain the agent asked for: the manifest, then whatever blobs it lacks.
    pub fn push_toolchain(&mut self, toolchain: &Toolchain) -> Result<(), PushError> {
        let digest = toolchain.manifest.digest();
        for _ in 0..3 {
            match self.call(&Request::InstallToolchain(toolchain.manifest.clone()))? {
                Response::Installed(d) if d == digest => return Ok(()),
                Response::MissingBlobs(blobs) => {
                    for blob in blobs {
                        let source =
                            toolchain.sources.get(&blob).ok_or(PushError::UnknownBlob(blob))?;
                        let raw = std::fs::read(source).map_err(|e| PushError::Read {
                            path: source.display().to_string(),
                            source: e,
                        })?;
                        match self.call(&Request::PutBlob(Payload::compress(&raw)))? {
                            Response::Stored(d) if d == blob => {}
                            other => {
                                return Err(PushError::Agent(format!(
                                    "agent did not store {}: {other:?}",
                                    source.display()
                                )));
                            }
                        }
                    }
                }
                other => {
                    return Err(PushError::Agent(format!(
                        "agent refused toolchain {digest}: {other:?}"
                    )));
                }
            }
        }
        Err(PushError::Agent(format!("toolchain {digest} still not installed on the agent")))
    }
}
