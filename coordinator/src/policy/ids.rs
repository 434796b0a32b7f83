//! A hasher for the policy's own integer ids (jobs, nodes): they are handed out by the
//! scheduler or the daemon, never chosen by a peer, so a multiplicative hash is safe and the
//! per-placement lookups stay cheap.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Fibonacci hashing of one `u64`.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by scheduler-given ids.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
