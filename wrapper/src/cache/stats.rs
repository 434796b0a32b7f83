//! The cache's counters: one small binary file (`<cache dir>/stats`) of little-endian `u64`s,
//! updated under an exclusive `flock` with one read and one write per call. Counters never break
//! a build: every I/O failure is ignored.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// One counter in the stats file. The discriminant is its slot; append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// Hits in the local tier through a direct-mode manifest (no preprocessor run).
    HitDirect = 0,
    /// Hits in the local tier on the preprocessed key.
    HitPreprocessed = 1,
    /// Hits served from another working directory (object rewritten); also counted above.
    HitCrossDir = 2,
    /// Cacheable calls that missed and were compiled.
    Miss = 3,
    /// Calls the cache could not handle (not a plain compile, `__DATE__`, diagnostics, …).
    Uncacheable = 4,
    /// Corrupt or unreadable entries dropped, failed stores.
    Error = 5,
    /// Bytes of objects served from the cache.
    BytesServed = 6,
    /// Bytes written to the cache.
    BytesStored = 7,
    /// Entries removed to stay under the size bound.
    Evictions = 8,
    /// Current size of the store in bytes (kept approximately; `--cleanup` recounts).
    Size = 9,
    /// Results stored.
    Stored = 10,
    /// Hits from the farm tier.
    HitFarm = 11,
    /// Entries not served because the farm node that compiled them is quarantined.
    Quarantined = 12,
}

const SLOTS: usize = 16;
const NAMES: [(Counter, &str); 13] = [
    (Counter::HitDirect, "hits (direct mode)"),
    (Counter::HitPreprocessed, "hits (preprocessed)"),
    (Counter::HitFarm, "hits (farm tier)"),
    (Counter::HitCrossDir, "  of which from another directory"),
    (Counter::Miss, "misses"),
    (Counter::Uncacheable, "uncacheable calls"),
    (Counter::Error, "errors (corrupt entries dropped, failed stores)"),
    (Counter::Quarantined, "entries of quarantined nodes not served"),
    (Counter::Stored, "results stored"),
    (Counter::BytesServed, "bytes served"),
    (Counter::BytesStored, "bytes stored"),
    (Counter::Evictions, "evictions"),
    (Counter::Size, "cache size (bytes)"),
];

/// A snapshot of every counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; SLOTS]);

impl Counters {
    /// The value of one counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// Human-readable lines, `name value`, for `discomy-cc --stats`.
    pub fn render(&self, max_size: u64) -> String {
        let mut out = String::new();
        for (c, name) in NAMES {
            out.push_str(&format!("{name:<48} {}\n", self.get(c)));
        }
        out.push_str(&format!("{:<48} {max_size}\n", "max size (bytes)"));
        out
    }
}

fn stats_path(dir: &Path) -> std::path::PathBuf {
    dir.join("stats")
}

fn decode(bytes: &[u8]) -> Counters {
    let mut c = Counters::default();
    for (slot, chunk) in c.0.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *slot = u64::from_le_bytes(b);
    }
    c
}

fn encode(c: &Counters) -> Vec<u8> {
    c.0.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn locked(dir: &Path) -> Option<Flock<File>> {
    let open = || {
        OpenOptions::new().read(true).write(true).create(true).truncate(false).open(stats_path(dir))
    };
    let file = match open() {
        Ok(f) => f,
        Err(_) => {
            std::fs::create_dir_all(dir).ok()?;
            open().ok()?
        }
    };
    Flock::lock(file, FlockArg::LockExclusive).ok()
}

/// Applies signed deltas to counters (saturating at 0). Returns the counters after the update.
pub fn add(dir: &Path, deltas: &[(Counter, i64)]) -> Option<Counters> {
    update(dir, |c| {
        for &(counter, delta) in deltas {
            let slot = &mut c.0[counter as usize];
            *slot = slot.saturating_add_signed(delta);
        }
    })
}

/// Runs `f` on the counters under the lock and writes them back.
pub fn update(dir: &Path, f: impl FnOnce(&mut Counters)) -> Option<Counters> {
    let mut file = locked(dir)?;
    let mut bytes = Vec::with_capacity(SLOTS * 8);
    file.read_to_end(&mut bytes).ok()?;
    let mut c = decode(&bytes);
    f(&mut c);
    file.seek(SeekFrom::Start(0)).ok()?;
    file.write_all(&encode(&c)).ok()?;
    Some(c)
}

/// The current counters (zero when there is no stats file yet).
pub fn read(dir: &Path) -> Counters {
    std::fs::read(stats_path(dir)).map(|b| decode(&b)).unwrap_or_default()
}

/// Zeroes every counter except the store size.
pub fn zero(dir: &Path) {
    let _ = update(dir, |c| {
        let size = c.get(Counter::Size);
        *c = Counters::default();
        c.0[Counter::Size as usize] = size;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_and_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        add(dir.path(), &[(Counter::Miss, 2), (Counter::Size, 100)]);
        add(dir.path(), &[(Counter::Size, -300), (Counter::HitDirect, 1)]);
        let c = read(dir.path());
        assert_eq!(
            (c.get(Counter::Miss), c.get(Counter::Size), c.get(Counter::HitDirect)),
            (2, 0, 1)
        );
        add(dir.path(), &[(Counter::Size, 50)]);
        zero(dir.path());
        let c = read(dir.path());
        assert_eq!((c.get(Counter::Miss), c.get(Counter::Size)), (0, 50));
    }
}
