//! Learned node speed: decaying sums over real jobs of work (bytes of the unit's own code) per
//! second of wall time (transfer included) and per second of compiler CPU time. Ratios of sums,
//! so large jobs weigh more and one odd small job cannot swing the estimate.

use super::Millis;

/// Decay of the old sums per new sample.
const ALPHA: f64 = 0.2;

/// What a node's finished jobs taught us.
#[derive(Debug, Clone, Default)]
pub struct Speed {
    /// Samples taken (saturating).
    pub samples: u32,
    /// Work per wall second, transfer and queueing on the node included.
    pub wall_bps: f64,
    /// Work per CPU second of the compiler.
    pub cpu_bps: f64,
    work: f64,
    wall_ms: f64,
    cpu_ms: f64,
    /// When the last sample was taken.
    pub last_sample: Millis,
}

impl Speed {
    /// Adds one successful job. Samples without bytes or time teach nothing and are ignored.
    pub fn add(&mut self, work: u64, wall_ms: u64, cpu_ms: u64, now: Millis) {
        if work == 0 || wall_ms == 0 {
            return;
        }
        let keep = 1.0 - ALPHA;
        self.work = self.work * keep + work as f64;
        self.wall_ms = self.wall_ms * keep + wall_ms as f64;
        self.cpu_ms = self.cpu_ms * keep + cpu_ms.max(1) as f64;
        self.wall_bps = self.work * 1000.0 / self.wall_ms;
        self.cpu_bps = self.work * 1000.0 / self.cpu_ms;
        self.samples = self.samples.saturating_add(1);
        self.last_sample = now;
    }

    /// Whether the estimate is missing or older than `stale_ms`.
    pub fn needs_exploring(&self, now: Millis, stale_ms: Millis) -> bool {
        self.samples == 0 || now.saturating_sub(self.last_sample) > stale_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_and_clamps() {
        let mut s = Speed::default();
        s.add(1000, 1000, 500, 1);
        assert_eq!(s.wall_bps, 1000.0);
        assert_eq!(s.cpu_bps, 2000.0);
        s.add(3000, 1000, 1000, 2);
        assert!(s.wall_bps > 1000.0 && s.wall_bps < 3000.0);
        s.add(0, 10, 10, 3);
        assert_eq!(s.samples, 2);
        assert!(!s.needs_exploring(10, 100));
        assert!(s.needs_exploring(200, 100));
    }
}
