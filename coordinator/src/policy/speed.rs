//! Learned node speed: decaying sums over real jobs. The policy predicts a job's time on a node
//! as `overhead_ms_per_byte × bytes shipped + work / rate`, where `rate` is work (the job's cost
//! estimate) per second of compile time with the CPU to itself (the measured compile time scaled
//! by the CPU share the node's foreign load left), and the overhead is the wall time the compile
//! did not account for (transfer, sandbox set-up), per byte shipped. Ratios of sums, so large
//! jobs weigh more and one odd small job cannot swing the estimate.

use super::Millis;

/// Decay of the old sums per new sample: about the last 20 jobs count, so one unit's own cost per
/// byte (which varies tenfold between units) does not make the node's rate.
const ALPHA: f64 = 0.05;

/// One finished job, as the speed learns from it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// The job's cost estimate when it was placed (work units).
    pub work: f64,
    /// Bytes shipped to the node.
    pub bytes_in: u64,
    /// Ask-to-answer wall time at the agent.
    pub wall_ms: u64,
    /// The compile's own time on the node.
    pub cpu_ms: u64,
    /// The node's foreign load meanwhile (0–1000).
    pub foreign_load: u16,
}

/// The share of a node's CPU its foreign load leaves to the farm.
pub fn cpu_share(foreign_load: u16) -> f64 {
    (1000.0 - f64::from(foreign_load.min(990))) / 1000.0
}

/// The least share a node's own load report may claim while its jobs ran, when its rate with
/// the CPU to itself is learned: the agent measures the time, the node only says how busy it
/// was, so a node claiming 99 % foreign load during its jobs (and none when placed) could
/// otherwise pass for 100 times faster than measured; now for at most twice.
pub const MIN_LEARNING_SHARE: f64 = 0.5;

/// [`cpu_share`] as the learned rate takes it ([`MIN_LEARNING_SHARE`]).
pub fn learning_share(foreign_load: u16) -> f64 {
    cpu_share(foreign_load).max(MIN_LEARNING_SHARE)
}

/// What a node's finished jobs taught us.
#[derive(Debug, Clone, Default)]
pub struct Speed {
    /// Samples taken (saturating).
    pub samples: u32,
    /// Work per wall second, transfer and queueing on the node included.
    pub wall_bps: f64,
    /// Work per second of compile time, as measured (foreign load included).
    pub cpu_bps: f64,
    /// Work per second of compile time with the CPU to itself.
    pub rate_bps: f64,
    /// Wall time not spent compiling, per byte shipped.
    pub overhead_ms_per_byte: f64,
    work: f64,
    wall_ms: f64,
    cpu_ms: f64,
    full_ms: f64,
    overhead_ms: f64,
    bytes: f64,
    /// When the last sample was taken.
    pub last_sample: Millis,
}

impl Speed {
    /// Adds one successful job. Samples without work or time teach nothing and are ignored.
    pub fn add(&mut self, s: &Sample, now: Millis) {
        if !s.work.is_finite() || s.work <= 0.0 || s.wall_ms == 0 {
            return;
        }
        let keep = 1.0 - ALPHA;
        let cpu = s.cpu_ms.max(1) as f64;
        self.work = self.work * keep + s.work;
        self.wall_ms = self.wall_ms * keep + s.wall_ms as f64;
        self.cpu_ms = self.cpu_ms * keep + cpu;
        self.full_ms = self.full_ms * keep + cpu * learning_share(s.foreign_load);
        self.overhead_ms = self.overhead_ms * keep + (s.wall_ms as f64 - cpu).max(0.0);
        self.bytes = self.bytes * keep + s.bytes_in.max(1) as f64;
        self.wall_bps = self.work * 1000.0 / self.wall_ms;
        self.cpu_bps = self.work * 1000.0 / self.cpu_ms;
        self.rate_bps = self.work * 1000.0 / self.full_ms;
        self.overhead_ms_per_byte = self.overhead_ms / self.bytes;
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

    fn sample(work: f64, wall_ms: u64, cpu_ms: u64, foreign_load: u16) -> Sample {
        Sample { work, bytes_in: 1000, wall_ms, cpu_ms, foreign_load }
    }

    #[test]
    fn learns_rate_and_overhead() {
        let mut s = Speed::default();
        s.add(&sample(1000.0, 1000, 500, 0), 1);
        assert_eq!(s.wall_bps, 1000.0);
        assert_eq!(s.cpu_bps, 2000.0);
        assert_eq!(s.rate_bps, 2000.0);
        assert_eq!(s.overhead_ms_per_byte, 0.5);
        s.add(&sample(3000.0, 1000, 1000, 0), 2);
        assert!(s.wall_bps > 1000.0 && s.wall_bps < 3000.0);
        s.add(&sample(0.0, 10, 10, 0), 3);
        assert_eq!(s.samples, 2);
        assert!(!s.needs_exploring(10, 100));
        assert!(s.needs_exploring(200, 100));
    }

    #[test]
    fn foreign_load_is_taken_out_of_the_rate() {
        // Half the CPU taken by others: the compile took twice as long as it would alone.
        let mut s = Speed::default();
        s.add(&sample(1000.0, 2000, 2000, 500), 1);
        assert_eq!(s.cpu_bps, 500.0);
        assert_eq!(s.rate_bps, 1000.0);
    }

    /// A node that reports 99 % foreign load while its jobs run cannot make its learned rate
    /// (what placement divides the work by) more than twice what the agents measured.
    #[test]
    fn a_node_s_own_load_report_inflates_its_rate_at_most_twice() {
        let mut honest = Speed::default();
        let mut claims_busy = Speed::default();
        for t in 1..=20 {
            honest.add(&sample(1000.0, 1000, 1000, 0), t);
            claims_busy.add(&sample(1000.0, 1000, 1000, 990), t);
        }
        assert_eq!(honest.rate_bps, 1000.0);
        assert!(claims_busy.rate_bps <= 2.0 * honest.rate_bps + 1e-6, "{}", claims_busy.rate_bps);
    }
}
