//! Membership in a coordinated farm: the operations API's client ([`api`]: jobs, blobs, builders),
//! finding the coordinator ([`discover`]), the agent's link to
//! it ([`client`]: placements, reports, hedges), what the agent remembers of the farm for when
//! no coordinator answers ([`memory`]), the worker's login and load reports ([`node`]),
//! and what the command line shows ([`status`]: `discomy status`, `discomy stats`).

pub mod api;
pub mod api_tls;
#[cfg(test)]
mod api_tls_tests;
pub mod client;
pub mod discover;
pub mod memory;
pub mod node;
pub mod status;

/// Why talking to the coordinator (or asking an agent for its counters) failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// Connecting failed.
    #[error("{addr}: {source}")]
    Connect {
        /// Who.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("{addr}: {source}")]
    Protocol {
        /// Who.
        addr: String,
        /// The error.
        source: discomy_protocol::ProtocolError,
    },
    /// No answer in time.
    #[error("{0}: timed out")]
    Timeout(String),
    /// The peer refused, saying why.
    #[error("{addr}: refused: {reason}")]
    Refused {
        /// Who.
        addr: String,
        /// Its reason.
        reason: String,
    },
    /// The peer answered something else.
    #[error("{addr}: unexpected answer {answer}")]
    Unexpected {
        /// Who.
        addr: String,
        /// The answer, as debug text.
        answer: String,
    },
}
