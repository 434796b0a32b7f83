//! Build logs as builders stream them: `DIR/JOB/ATTEMPT.log`, appended at the offset the builder
//! names, so a chunk sent twice (the answer was lost, the coordinator restarted) is written once.
//! Each log is capped; past the cap, chunks are refused and the log ends with what arrived.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::PathBuf;

use super::OpsError;

/// The log directory.
#[derive(Debug)]
pub struct Logs {
    dir: PathBuf,
    max_bytes: u64,
}

impl Logs {
    /// Logs under `dir`, at most `max_bytes` each.
    pub fn new(dir: PathBuf, max_bytes: u64) -> Logs {
        Logs { dir, max_bytes }
    }

    fn path(&self, job: u64, attempt: u32) -> PathBuf {
        self.dir.join(job.to_string()).join(format!("{attempt}.log"))
    }

    /// Appends `bytes`, which start at `offset` of the log. Returns the log's length after.
    pub fn append(
        &self,
        job: u64,
        attempt: u32,
        offset: u64,
        bytes: &[u8],
    ) -> Result<u64, OpsError> {
        let path = self.path(job, attempt);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        if offset > len {
            return Err(OpsError::Conflict(format!(
                "log chunk at offset {offset}, but the log holds {len} bytes"
            )));
        }
        let skip = usize::try_from(len - offset).unwrap_or(usize::MAX).min(bytes.len());
        let new = &bytes[skip..];
        if len + new.len() as u64 > self.max_bytes {
            return Err(OpsError::TooLarge(format!(
                "the log is capped at {} bytes",
                self.max_bytes
            )));
        }
        file.write_all(new)?;
        Ok(len + new.len() as u64)
    }

    /// The log of `attempt` of `job` (empty when nothing arrived).
    pub fn read(&self, job: u64, attempt: u32) -> Result<Vec<u8>, OpsError> {
        match fs::File::open(self.path(job, attempt)) {
            Ok(file) => {
                let mut bytes = Vec::new();
                file.take(self.max_bytes).read_to_end(&mut bytes)?;
                Ok(bytes)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Up to `max` bytes of the log of `attempt` of `job` from `offset` (empty when nothing
    /// more arrived): the web UI follows a log with it.
    pub fn read_from(
        &self,
        job: u64,
        attempt: u32,
        offset: u64,
        max: u64,
    ) -> Result<Vec<u8>, OpsError> {
        use std::io::{Seek, SeekFrom};
        match fs::File::open(self.path(job, attempt)) {
            Ok(mut file) => {
                file.seek(SeekFrom::Start(offset))?;
                let mut bytes = Vec::new();
                file.take(max).read_to_end(&mut bytes)?;
                Ok(bytes)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_sent_twice_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let logs = Logs::new(dir.path().to_path_buf(), 16);
        assert_eq!(logs.append(1, 1, 0, b"hello ").unwrap(), 6);
        assert_eq!(logs.append(1, 1, 0, b"hello wor").unwrap(), 9);
        assert_eq!(logs.append(1, 1, 9, b"ld").unwrap(), 11);
        assert!(matches!(logs.append(1, 1, 20, b"x"), Err(OpsError::Conflict(_))));
        assert!(matches!(logs.append(1, 1, 11, b"0123456789"), Err(OpsError::TooLarge(_))));
        assert_eq!(logs.read(1, 1).unwrap(), b"hello world");
        assert!(logs.read(1, 2).unwrap().is_empty());
    }
}
