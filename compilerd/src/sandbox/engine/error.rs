//! What a failed set-up step says: one line, `<what failed>: <cause>`, recorded in the status file
//! and printed after `discomy-sandbox: `.

use std::fmt::Display;

/// A set-up step that failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);

impl SetupError {
    /// An error saying `what`.
    pub fn new(what: impl Into<String>) -> SetupError {
        SetupError(what.into())
    }
}

/// The engine's results.
pub(super) type Result<T> = std::result::Result<T, SetupError>;

/// Says what was being done when a step failed: `what: cause`.
pub(super) trait Context<T> {
    /// With a fixed description.
    fn context(self, what: impl Display) -> Result<T>;
    /// With a description made only on failure.
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|e| SetupError(format!("{what}: {e}")))
    }

    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| SetupError(format!("{}: {e}", what())))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Display) -> Result<T> {
        self.ok_or_else(|| SetupError(what.to_string()))
    }

    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.ok_or_else(|| SetupError(what().to_string()))
    }
}
