//! The last verify of a repository, recorded next to it: `REPOS_ROOT/NAME.verify.json`, written
//! atomically and durably by whoever ran the verify (`discomy repo verify`), replaced by the
//! next one. It holds when, the verdict, the counts, the first [`MAX_PROBLEMS`] problems (each
//! detail cut to [`MAX_TEXT`] bytes) and who ran it. The web UI reads it back as untrusted:
//! never through a link, at most [`MAX_RECORD_BYTES`], every bound checked again; anything else
//! is an error the page shows, never a panic.

use std::path::{Path, PathBuf};

use discomy_protocol::plumbing::fs::{WriteOptions, write_atomically_with};
use discomy_protocol::plumbing::read_untrusted;
use serde::{Deserialize, Serialize};

use super::{AggregatorError, Problem, Report, repo_name_ok};

/// The record's file name after the repository's name.
pub const RECORD_SUFFIX: &str = ".verify.json";
/// The most problems a record keeps (the count says how many there were).
pub const MAX_PROBLEMS: usize = 20;
/// The most bytes of any one text (a problem's path or detail, the error, who ran it).
pub const MAX_TEXT: usize = 300;
/// The largest record read back (20 problems of 2 × 300 bytes, escaped, fit many times over).
pub const MAX_RECORD_BYTES: u64 = 64 << 10;

/// What the last verify concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every file, checksum and signature as published.
    Ok,
    /// Problems were found.
    Failed,
    /// The verify could not be carried out (no manifest, unreadable key, …): see `error`.
    Error,
}

/// One verify of a repository, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRecord {
    /// When it ended, Unix seconds.
    pub at_unix: u64,
    /// What it concluded.
    pub verdict: Verdict,
    /// The generation checked, when its manifest could be read.
    pub generation: Option<u64>,
    /// Files the manifest lists.
    pub files_checked: usize,
    /// RPM signatures checked.
    pub signatures_checked: usize,
    /// How many problems were found.
    pub problem_count: usize,
    /// The first [`MAX_PROBLEMS`] of them, texts cut to [`MAX_TEXT`] bytes.
    pub problems: Vec<Problem>,
    /// Why the verify could not be carried out ([`Verdict::Error`]).
    pub error: Option<String>,
    /// Who ran it (program, user, process).
    pub by: String,
}

impl VerifyRecord {
    /// The record of a verify that ended with `result`, at `at_unix`, run by `by`.
    pub fn new(result: &Result<Report, AggregatorError>, by: &str, at_unix: u64) -> VerifyRecord {
        let mut record = VerifyRecord {
            at_unix,
            verdict: Verdict::Error,
            generation: None,
            files_checked: 0,
            signatures_checked: 0,
            problem_count: 0,
            problems: Vec::new(),
            error: None,
            by: cut(by),
        };
        match result {
            Ok(report) => {
                record.verdict = if report.is_ok() { Verdict::Ok } else { Verdict::Failed };
                record.generation = Some(report.generation);
                record.files_checked = report.files_checked;
                record.signatures_checked = report.signatures_checked;
                record.problem_count = report.problems.len();
                record.problems = report
                    .problems
                    .iter()
                    .take(MAX_PROBLEMS)
                    .map(|p| Problem { kind: p.kind, path: cut(&p.path), detail: cut(&p.detail) })
                    .collect();
            }
            Err(e) => record.error = Some(cut(&e.to_string())),
        }
        record
    }

    /// Whether every bound a written record keeps holds (a record read back is checked).
    fn within_bounds(&self) -> bool {
        let texts = self.problems.iter().flat_map(|p| [&p.path, &p.detail]);
        self.problems.len() <= MAX_PROBLEMS
            && self.problems.len() <= self.problem_count
            && self.by.len() <= MAX_TEXT
            && self.error.as_ref().is_none_or(|e| e.len() <= MAX_TEXT)
            && texts.into_iter().all(|t| t.len() <= MAX_TEXT)
    }
}

/// `text`, at most [`MAX_TEXT`] bytes, cut at a character boundary (`…` marks a cut).
fn cut(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_string();
    }
    let mut end = MAX_TEXT - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Who runs this process: `PROGRAM (user NAME, uid N, pid P)`.
pub fn who(program: &str) -> String {
    let uid = nix::unistd::getuid();
    let user = nix::unistd::User::from_uid(uid).ok().flatten().map(|u| u.name);
    let user = user.map(|n| format!("user {n}, ")).unwrap_or_default();
    cut(&format!("{program} ({user}uid {uid}, pid {})", std::process::id()))
}

/// Where the record of a verify of `verified` goes: for a repository's `NAME` link, or one of
/// its generations (`NAME.d/000007`), `NAME.verify.json` beside the link. `None` for any other
/// directory (a copy somewhere else), which has no place for a record.
pub fn record_path(verified: &Path) -> Option<PathBuf> {
    let beside = |dir: &Path, name: &str| {
        repo_name_ok(name).then(|| dir.join(format!("{name}{RECORD_SUFFIX}")))
    };
    let is_link = std::fs::symlink_metadata(verified).is_ok_and(|m| m.file_type().is_symlink());
    if is_link {
        let name = verified.file_name()?.to_str()?;
        let parent = verified.parent().filter(|p| !p.as_os_str().is_empty());
        let parent = parent.unwrap_or(Path::new("."));
        if parent.join(format!("{name}.d")).is_dir() {
            return beside(parent, name);
        }
    }
    let generation = std::fs::canonicalize(verified).ok()?;
    if !generation.file_name()?.to_str()?.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let set = generation.parent()?;
    let name = set.file_name()?.to_str()?.strip_suffix(".d")?;
    beside(set.parent()?, name)
}

/// Writes `record` to `path`, atomically and durably, replacing the previous one.
pub fn write_record(path: &Path, record: &VerifyRecord) -> Result<(), AggregatorError> {
    let json = serde_json::to_vec_pretty(record)
        .map_err(|e| AggregatorError::BadRecord { path: path.into(), message: e.to_string() })?;
    let how = WriteOptions { mode: Some(0o644), durable: true, keep_existing: false };
    write_atomically_with(path, &[&json, b"\n"], how).map_err(AggregatorError::io(path))
}

/// Records the verify of `verified` that ended with `result`, run by `by`, where
/// [`record_path`] says. The record's path, or `None` when `verified` has no place for one.
pub fn record_verify(
    verified: &Path,
    result: &Result<Report, AggregatorError>,
    by: &str,
) -> Result<Option<PathBuf>, AggregatorError> {
    let Some(path) = record_path(verified) else { return Ok(None) };
    write_record(&path, &VerifyRecord::new(result, by, crate::ops::now() as u64))?;
    Ok(Some(path))
}

/// The last verify recorded for the repository `name` under `repos_root`; `None` when none was.
pub fn read_record(repos_root: &Path, name: &str) -> Result<Option<VerifyRecord>, AggregatorError> {
    if !repo_name_ok(name) {
        return Err(AggregatorError::Refused(format!("repository name {name:?}")));
    }
    let path = repos_root.join(format!("{name}{RECORD_SUFFIX}"));
    let bytes = match read_untrusted(&path, MAX_RECORD_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AggregatorError::BadRecord { path, message: e.to_string() }),
    };
    let bad = |message: String| AggregatorError::BadRecord { path: path.clone(), message };
    let record: VerifyRecord = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if !record.within_bounds() {
        return Err(bad("beyond the bounds a record keeps".into()));
    }
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::ProblemKind;
    use super::*;

    fn report(problems: usize) -> Report {
        Report {
            path: PathBuf::from("/r/el9.d/000003"),
            repository: "el9".into(),
            generation: 3,
            files_checked: 40,
            signatures_checked: 12,
            problems: (0..problems)
                .map(|i| Problem {
                    kind: ProblemKind::Changed,
                    path: format!("Packages/p{i:03}.rpm"),
                    detail: "é".repeat(400),
                })
                .collect(),
        }
    }

    #[test]
    fn a_record_is_bounded_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert!(read_record(root, "el9").unwrap().is_none(), "nothing recorded yet");
        let failed = VerifyRecord::new(&Ok(report(25)), "test", 1_700_000_000);
        assert_eq!((failed.verdict, failed.problem_count), (Verdict::Failed, 25));
        assert_eq!(failed.problems.len(), MAX_PROBLEMS);
        assert!(failed.problems.iter().all(|p| p.detail.len() <= MAX_TEXT));
        assert!(failed.problems[0].detail.ends_with('…'));
        let path = root.join("el9.verify.json");
        write_record(&path, &failed).unwrap();
        assert_eq!(read_record(root, "el9").unwrap(), Some(failed));
        let ok = VerifyRecord::new(&Ok(report(0)), &who("discomy repo verify"), 1);
        assert!(ok.by.contains("discomy repo verify (") && ok.by.contains("pid"), "{}", ok.by);
        write_record(&path, &ok).unwrap();
        let back = read_record(root, "el9").unwrap().unwrap();
        assert_eq!((back.verdict, back.generation, back.files_checked), (Verdict::Ok, Some(3), 40));
        let error = VerifyRecord::new(&Err(AggregatorError::Damaged("x".into())), "t", 2);
        assert_eq!((error.verdict, error.generation), (Verdict::Error, None));
        assert!(error.error.unwrap().contains("damaged"));
        assert!(read_record(root, "../etc").is_err(), "a name that is no repository's");
    }

    #[test]
    fn a_malformed_oversized_or_linked_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let path = root.join("el9.verify.json");
        std::fs::write(&path, b"{\"verdict\": \"ok\", trailing").unwrap();
        assert!(matches!(read_record(root, "el9"), Err(AggregatorError::BadRecord { .. })));
        std::fs::write(&path, vec![b' '; MAX_RECORD_BYTES as usize + 1]).unwrap();
        assert!(read_record(root, "el9").unwrap_err().to_string().contains("more than"));
        let mut record = VerifyRecord::new(&Ok(report(1)), "t", 1);
        record.problems[0].detail = "x".repeat(MAX_TEXT + 1);
        std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
        assert!(read_record(root, "el9").is_err(), "a text beyond the bound");
        std::fs::remove_file(&path).unwrap();
        let elsewhere = root.join("other.json");
        write_record(&elsewhere, &VerifyRecord::new(&Ok(report(0)), "t", 1)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert!(read_record(root, "el9").is_err(), "a link");
    }

    #[test]
    fn the_record_goes_beside_the_repository_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("el9.d/000003")).unwrap();
        std::os::unix::fs::symlink("el9.d/000003", root.join("el9")).unwrap();
        let want = Some(root.join("el9.verify.json"));
        assert_eq!(record_path(&root.join("el9")), want);
        let canonical = std::fs::canonicalize(root).unwrap();
        let generation = record_path(&root.join("el9.d/000003"));
        assert_eq!(generation, Some(canonical.join("el9.verify.json")));
        std::fs::create_dir_all(root.join("mirror")).unwrap();
        assert_eq!(record_path(&root.join("mirror")), None, "a plain directory");
        assert_eq!(record_path(&root.join("el9.d")), None);
        // A link whose generation is gone still gets its (failed) verify recorded.
        std::os::unix::fs::symlink("el9.d/000009", root.join("el9-gone")).unwrap();
        std::fs::create_dir(root.join("el9-gone.d")).unwrap();
        assert_eq!(record_path(&root.join("el9-gone")), Some(root.join("el9-gone.verify.json")));
    }
}
