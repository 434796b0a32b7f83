//! The injected clock: the policy never reads time itself; callers pass [`Millis`] from a
//! [`Clock`] (the daemon's monotonic clock, or the simulator's virtual one).

use std::time::Instant;

/// Milliseconds on the caller's clock. Only differences matter.
pub type Millis = u64;

/// A source of [`Millis`].
pub trait Clock {
    /// The current time.
    fn now(&self) -> Millis;
}

/// Monotonic wall clock, counting from its creation.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Millis {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A clock that only moves when told to (tests and the simulator).
#[derive(Debug, Default)]
pub struct ManualClock(std::cell::Cell<Millis>);

impl ManualClock {
    /// Sets the time.
    pub fn set(&self, t: Millis) {
        self.0.set(t);
    }
    /// Moves the time forward.
    pub fn advance(&self, by: Millis) {
        self.0.set(self.0.get().saturating_add(by));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.get()
    }
}
