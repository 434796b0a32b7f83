//! discomy's coordinator: the farm's scheduler.
//!
//! - [`policy`]: the pure placement policy (no I/O, injected clock), shared with the simulator.
#![warn(missing_docs)]

pub mod policy;
