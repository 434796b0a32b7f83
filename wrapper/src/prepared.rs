//! What one distributable call works out once and shares between the object cache and the farm
//! path: the compiler's toolchain, the include scan, and the agent connection whose handshake
//! runs on a thread meanwhile.
//!
//! The cache keys a miss on the scan (every file the compile can open, by content) and the farm
//! path sends the same scan in source mode, so a miss runs no preprocessor on the build host.

use crate::args::Unit;
use crate::client::{AgentClient, PendingAgent};
use crate::invocation::Invocation;
use crate::source_mode::{self, Mode, ScanGaveUp, Scanned};
use crate::toolchain::{Toolchain, ToolchainError};

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
                Ok(tools) => source_mode::scanned(inv, unit, tools),
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
