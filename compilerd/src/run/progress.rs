//! `discomy run`'s progress line: when stderr is a terminal, one line redrawn in place about five
//! times a second (indicatif) with the time since the build started and what the compile units
//! finished so far became (done, remote, local, fallback, cache hits, failed), read from the run's
//! per-call stats file as wrappers append to it, and the source of the last unit that finished.
//!
//! The stats file only records calls that have ended, so the line does not claim to know what is
//! in flight. When stderr is not a terminal nothing is drawn (the run's output is unchanged); the
//! line is cleared before the summary.

use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use discomy_protocol::stats::{Outcome, StatsLine, UnitCounts};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Redraws per second.
const HZ: u8 = 5;
/// The longest source name shown (its end is kept).
const MAX_SOURCE_CHARS: usize = 40;

/// The progress line while it is shown; dropping it stops and clears it.
pub struct Progress {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts drawing when stderr is a terminal (and `TERM` is not `dumb`); `None` otherwise.
    pub fn start(stats_file: &Path, started: Instant) -> Option<Progress> {
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        if !std::io::stderr().is_terminal() || dumb {
            return None;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(HZ));
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
            bar.set_style(style.tick_chars("-\\|/ "));
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let mut tally = Tally::new(stats_file.to_path_buf());
        let thread = std::thread::Builder::new()
            .name("run-progress".into())
            .spawn(move || {
                let every = Duration::from_millis(1000 / u64::from(HZ));
                loop {
                    tally.read_new();
                    bar.set_message(tally.line(started.elapsed()));
                    bar.tick();
                    match stopped.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => continue,
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                bar.finish_and_clear();
            })
            .ok()?;
        Some(Progress { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the stats file said so far, read as it grows.
struct Tally {
    path: PathBuf,
    /// Bytes of the file taken in (complete lines only).
    offset: u64,
    counts: UnitCounts,
    /// Calls that were not compile units (links, `-E`, …).
    other_calls: u64,
    /// The source of the last compile unit that finished.
    last: Option<String>,
}

impl Tally {
    fn new(path: PathBuf) -> Tally {
        Tally { path, offset: 0, counts: UnitCounts::default(), other_calls: 0, last: None }
    }

    /// Takes in the complete lines appended since the last call (a line being written waits).
    fn read_new(&mut self) {
        let Ok(mut file) = File::open(&self.path) else { return };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            return;
        }
        let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else { return };
        self.offset += end as u64 + 1;
        self.take(&String::from_utf8_lossy(&bytes[..end]));
    }

    fn take(&mut self, text: &str) {
        for line in text.lines().filter_map(StatsLine::parse) {
            // LTRANS units (partitions of an LTO link) are not compile units either.
            if line.outcome == Outcome::NotUnit || line.ltrans {
                self.other_calls += 1;
                continue;
            }
            self.counts.record(line.outcome, line.reason, line.exit_code);
            self.last = Some(line.source);
        }
    }

    /// The progress line's text.
    fn line(&self, elapsed: Duration) -> String {
        let c = &self.counts;
        let secs = elapsed.as_secs();
        let mut text = format!(
            "discomy {}:{:02} | units done {}: remote {}, local {}, fallback {}, cache hits {}, \
             failed {} | other calls {}",
            secs / 60,
            secs % 60,
            c.units,
            c.remote,
            c.local,
            c.fallback,
            c.cache_hits,
            c.failed,
            self.other_calls
        );
        if let Some(last) = &self.last {
            let chars = last.chars().count();
            let shown: String = if chars > MAX_SOURCE_CHARS {
                let tail: String = last.chars().skip(chars - (MAX_SOURCE_CHARS - 1)).collect();
                format!("…{tail}")
            } else {
                last.clone()
            };
            text.push_str(&format!(" | last: {shown}"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn counts_complete_lines_as_the_file_grows() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("stats");
        let mut tally = Tally::new(path.clone());
        tally.read_new();
        assert_eq!(tally.counts.units, 0, "no file yet");
        let mut file = File::create(&path).unwrap_or_else(|e| panic!("create: {e}"));
        let mut append = |text: &str| {
            file.write_all(text.as_bytes()).unwrap_or_else(|e| panic!("write: {e}"));
        };
        append("remote\t0\ta.c\tnone\nlocal\t0\tconftest.c\tconftest\nremo");
        tally.read_new();
        assert_eq!((tally.counts.units, tally.counts.remote, tally.counts.local), (2, 1, 1));
        assert_eq!(tally.last.as_deref(), Some("conftest.c"));
        append("te\t1\tb.c\tnone\nother\t0\tprog\tlink\ncache\t0\tc.c\tnone\n");
        tally.read_new();
        let c = &tally.counts;
        assert_eq!((c.units, c.remote, c.cache_hits, c.failed), (4, 2, 1, 1));
        assert_eq!(tally.other_calls, 1);
        let line = tally.line(Duration::from_secs(75));
        assert_eq!(
            line,
            "discomy 1:15 | units done 4: remote 2, local 1, fallback 0, cache hits 1, failed 1 \
             | other calls 1 | last: c.c"
        );
        tally.last = Some(format!("{}/lvm.c", "d".repeat(60)));
        let line = tally.line(Duration::ZERO);
        assert!(line.ends_with(&format!("| last: …{}/lvm.c", "d".repeat(33))), "{line}");
    }
}
