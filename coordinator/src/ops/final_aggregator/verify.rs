//! `verify`: re-checks a published repository (a generation, or the `NAME` symlink to one)
//! against its manifest (sha256, size), `repomd.xml`'s checksums of the metadata files, the
//! detached signature of `repomd.xml` and every RPM's signature, with one public key. Read-only.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::AggregatorError;
use super::manifest::{FileKind, MANIFEST_NAME, Manifest, read_repomd, sha256_file, walk};
use super::sign::{Checker, RpmSignature};

/// What is wrong with one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Listed (in the manifest or `repomd.xml`) but absent.
    Missing,
    /// Present but its content (sha256 or size) is not what was recorded, or not a regular file.
    Changed,
    /// An RPM without a signature, or `repomd.xml` without `repomd.xml.asc`.
    Unsigned,
    /// A signature that does not verify with the key.
    BadSignature,
    /// Present but listed nowhere.
    Unexpected,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Problem {
    /// What is wrong.
    pub kind: ProblemKind,
    /// The file, relative to the generation.
    pub path: String,
    /// Details (expected and found checksums, rpm's words).
    pub detail: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The generation checked.
    pub path: PathBuf,
    /// Its repository's name, as its manifest says.
    pub repository: String,
    /// Its number.
    pub generation: u64,
    /// Files the manifest lists.
    pub files_checked: usize,
    /// RPM signatures checked.
    pub signatures_checked: usize,
    /// Everything wrong, sorted by kind then path.
    pub problems: Vec<Problem>,
}

impl Report {
    /// Whether nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The paths with problems of `kind`.
    pub fn paths(&self, kind: ProblemKind) -> Vec<&str> {
        self.problems.iter().filter(|p| p.kind == kind).map(|p| p.path.as_str()).collect()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} generation {} ({}): {} files, {} RPM signatures checked, {} problems",
            self.repository,
            self.generation,
            self.path.display(),
            self.files_checked,
            self.signatures_checked,
            self.problems.len()
        )?;
        for p in &self.problems {
            let kind = serde_json::to_value(p.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            writeln!(f, "{kind:>13}  {}  {}", p.path, p.detail)?;
        }
        Ok(())
    }
}

/// Verifies the published repository at `repo` (its `NAME` symlink or a generation directory)
/// with the armored public key `public_key`. Blocking.
pub fn verify(repo: &Path, public_key: &Path) -> Result<Report, AggregatorError> {
    let dir = std::fs::canonicalize(repo).map_err(AggregatorError::io(repo))?;
    let manifest = Manifest::read(&dir)?;
    let checker = Checker::new(public_key)?;
    let mut problems = BTreeSet::new();
    let mut problem = |kind, path: &str, detail: String| {
        problems.insert(Problem { kind, path: path.to_string(), detail });
    };
    let mut intact = BTreeSet::new();
    for entry in &manifest.files {
        let full = dir.join(&entry.path);
        match std::fs::symlink_metadata(&full) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                problem(ProblemKind::Missing, &entry.path, "listed in the manifest".into());
                continue;
            }
            Err(e) => return Err(AggregatorError::Io { path: full, source: e }),
            Ok(m) if !m.is_file() => {
                problem(ProblemKind::Changed, &entry.path, "not a regular file".into());
                continue;
            }
            Ok(_) => {}
        }
        let (sha256, size) = sha256_file(&full)?;
        if sha256 != entry.sha256 || size != entry.size {
            problem(
                ProblemKind::Changed,
                &entry.path,
                format!(
                    "sha256 {sha256} size {size}, recorded {} size {}",
                    entry.sha256, entry.size
                ),
            );
            continue;
        }
        intact.insert(entry.path.as_str());
    }
    // Anything the manifest does not list.
    let listed: BTreeSet<&str> = manifest.files.iter().map(|e| e.path.as_str()).collect();
    for (path, _) in walk(&dir)? {
        if path != MANIFEST_NAME && !listed.contains(path.as_str()) {
            problem(ProblemKind::Unexpected, &path, "not in the manifest".into());
        }
    }
    // The metadata: repomd.xml's checksums and its signature.
    let repomd = dir.join("repodata/repomd.xml");
    if intact.contains("repodata/repomd.xml") {
        match read_repomd(&repomd) {
            Err(e) => problem(ProblemKind::Changed, "repodata/repomd.xml", e.to_string()),
            Ok(data) => {
                for d in data {
                    if listed.contains(d.href.as_str()) && !intact.contains(d.href.as_str()) {
                        continue; // already reported against the manifest
                    }
                    let full = dir.join(&d.href);
                    let Ok(meta) = std::fs::symlink_metadata(&full) else {
                        problem(
                            ProblemKind::Missing,
                            &d.href,
                            format!("{} data of repomd.xml", d.data_type),
                        );
                        continue;
                    };
                    let Some(want) = &d.sha256 else {
                        problem(
                            ProblemKind::Changed,
                            &d.href,
                            "repomd.xml has no sha256 for it".into(),
                        );
                        continue;
                    };
                    let got = if meta.is_file() { Some(sha256_file(&full)?) } else { None };
                    if got.as_ref().map(|g| &g.0) != Some(want)
                        || d.size.is_some_and(|s| Some(s) != got.as_ref().map(|g| g.1))
                    {
                        problem(
                            ProblemKind::Changed,
                            &d.href,
                            format!("not the {} repomd.xml records", d.data_type),
                        );
                    }
                }
            }
        }
        let asc = dir.join("repodata/repomd.xml.asc");
        if !asc.is_file() {
            problem(ProblemKind::Unsigned, "repodata/repomd.xml", "no repomd.xml.asc".into());
        } else if !checker.detached_ok(&asc, &repomd)? {
            problem(
                ProblemKind::BadSignature,
                "repodata/repomd.xml.asc",
                "does not verify with the key".into(),
            );
        }
    }
    // Every intact RPM's signature.
    let mut signatures_checked = 0;
    for entry in &manifest.files {
        if !matches!(entry.kind, FileKind::Package | FileKind::SourcePackage)
            || !intact.contains(entry.path.as_str())
        {
            continue;
        }
        signatures_checked += 1;
        match checker.rpm(&dir.join(&entry.path))? {
            RpmSignature::Good => {}
            RpmSignature::Unsigned => {
                problem(ProblemKind::Unsigned, &entry.path, "no signature".into())
            }
            RpmSignature::Bad(why) => problem(ProblemKind::BadSignature, &entry.path, why),
        }
    }
    Ok(Report {
        path: dir,
        repository: manifest.repository.clone(),
        generation: manifest.generation,
        files_checked: manifest.files.len(),
        signatures_checked,
        problems: problems.into_iter().collect(),
    })
}
