//! A pushed commit's pipeline: the repository fetched at that commit into a bare cache (git,
//! `--depth 1`), its `.discomy.toml` read, and each package directory it names turned into a
//! spec and sources, straight from git's objects: only regular files (no symbolic links, no
//! submodules), each under the upload limit, so a hostile repository cannot make the
//! coordinator read its own files. Blocking; the listener runs it off the async threads.
//!
//! ```toml
//! # .discomy.toml at the top of the repository
//! priority = 0                  # optional
//! [[targets]]                   # where to build: chroots the builders have
//! chroot = "el9"
//! arch = "x86_64"
//! [[packages]]                  # package directories: one .spec and its sources (default ".")
//! dir = "."
//! [[checks]]                    # after the builds, on builders: rpmlint, abidiff
//! kind = "rpmlint"
//! on_failure = "warn"           # or "fail" (the default): the batch fails, nothing is published
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use discomy_protocol::ops::{Target, is_plain_file_name};
use serde::Deserialize;

/// The pipeline file's name.
pub const PIPELINE_FILE: &str = ".discomy.toml";
/// The largest pipeline file read.
const MAX_PIPELINE_BYTES: u64 = 64 << 10;
/// The longest a git command may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the pipeline could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// git failed (fetch, show, …).
    #[error("git {0}")]
    Git(String),
    /// The commit has no `.discomy.toml`, or it is wrong.
    #[error("{PIPELINE_FILE}: {0}")]
    Spec(String),
    /// A package directory is not usable.
    #[error("{0}")]
    Package(String),
}

/// `.discomy.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Priority of the jobs.
    #[serde(default)]
    pub priority: i32,
    /// Where to build.
    pub targets: Vec<Target>,
    /// What to build.
    #[serde(default = "root_package")]
    pub packages: Vec<PackageDir>,
    /// What to check once the packages are built.
    #[serde(default)]
    pub checks: Vec<Check>,
}

/// A check after the builds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Which.
    pub kind: discomy_protocol::ops::CheckKind,
    /// What a failed check does to the batch.
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// What a failed check does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// The batch fails: its status is `failure` and nothing is published.
    #[default]
    Fail,
    /// A warning: the report is kept with the job, the batch goes on.
    Warn,
}

/// One package directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageDir {
    /// Relative to the repository's top.
    #[serde(default = "dot")]
    pub dir: String,
}

fn dot() -> String {
    ".".into()
}

fn root_package() -> Vec<PackageDir> {
    vec![PackageDir { dir: dot() }]
}

impl Pipeline {
    /// Parses and checks the file's text.
    pub fn parse(text: &str) -> Result<Pipeline, PipelineError> {
        let p: Pipeline = toml::from_str(text).map_err(|e| PipelineError::Spec(e.to_string()))?;
        if p.targets.is_empty() || p.targets.len() > 16 {
            return Err(PipelineError::Spec("1 to 16 [[targets]]".into()));
        }
        if p.checks.len() > 8 {
            return Err(PipelineError::Spec("at most 8 [[checks]]".into()));
        }
        if p.packages.is_empty() || p.packages.len() > 256 {
            return Err(PipelineError::Spec("1 to 256 [[packages]]".into()));
        }
        for pkg in &p.packages {
            let ok = pkg.dir == "."
                || (!pkg.dir.starts_with('/')
                    && pkg.dir.split('/').all(|c| is_plain_file_name(c) && c != "."));
            if !ok {
                return Err(PipelineError::Spec(format!("package dir {:?}", pkg.dir)));
            }
        }
        Ok(p)
    }
}

/// A file of a package directory, written out of git into the listener's scratch directory.
#[derive(Debug, Clone)]
pub struct PackageFile {
    /// Its name.
    pub name: String,
    /// Where it is now.
    pub path: PathBuf,
}

/// A bare repository caching what was fetched.
pub struct GitCache {
    dir: PathBuf,
}

/// Runs git with a timeout; stdout goes to `out` (a file) or is captured up to `limit` bytes.
fn git(
    dir: &Path,
    args: &[&str],
    out: Option<std::fs::File>,
    limit: u64,
) -> Result<Vec<u8>, PipelineError> {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(["-c", "protocol.ext.allow=never", "-c", "core.hooksPath=/dev/null"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let capture = out.is_none();
    cmd.stdout(match out {
        Some(file) => Stdio::from(file),
        None => Stdio::piped(),
    });
    let mut child = cmd.spawn().map_err(|e| PipelineError::Git(format!("{}: {e}", args[0])))?;
    let stdout = child.stdout.take().filter(|_| capture);
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout {
            let _ = s.take(limit).read_to_end(&mut buf);
        }
        buf
    });
    let stderr = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr {
            let _ = s.take(8192).read_to_end(&mut buf);
        }
        buf
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > GIT_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(PipelineError::Git(format!("{}: timed out", args[0])));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(PipelineError::Git(format!("{}: {e}", args[0]))),
        }
    };
    let stdout = reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(PipelineError::Git(format!(
            "{} failed ({status}): {}",
            args[0],
            String::from_utf8_lossy(&stderr).trim()
        )))
    }
}

impl GitCache {
    /// The cache at `dir` (a bare repository, made when missing).
    pub fn open(dir: &Path) -> Result<GitCache, PipelineError> {
        if !dir.join("HEAD").is_file() {
            std::fs::create_dir_all(dir)
                .map_err(|e| PipelineError::Git(format!("{}: {e}", dir.display())))?;
            git(dir, &["init", "--bare", "-q", "."], None, 0)?;
        }
        Ok(GitCache { dir: dir.to_path_buf() })
    }

    /// Fetches commit `sha` from `url` (by id, else through `git_ref`), and checks it is there.
    pub fn fetch(&self, url: &str, git_ref: &str, sha: &str) -> Result<(), PipelineError> {
        if url.starts_with('-') || git_ref.starts_with('-') {
            return Err(PipelineError::Git("a URL or ref may not start with '-'".into()));
        }
        let have =
            |s: &GitCache| git(&s.dir, &["cat-file", "-e", &format!("{sha}^{{commit}}")], None, 0);
        if have(self).is_ok() {
            return Ok(());
        }
        let by_id =
            git(&self.dir, &["fetch", "-q", "--no-tags", "--depth", "1", "--", url, sha], None, 0);
        if by_id.is_err() {
            git(
                &self.dir,
                &["fetch", "-q", "--no-tags", "--depth", "50", "--", url, git_ref],
                None,
                0,
            )?;
        }
        have(self)
            .map(|_| ())
            .map_err(|_| PipelineError::Git(format!("{sha} is not in {url} {git_ref}")))
    }

    /// The pipeline of commit `sha`.
    pub fn pipeline(&self, sha: &str) -> Result<Pipeline, PipelineError> {
        let object = format!("{sha}:{PIPELINE_FILE}");
        let size = git(&self.dir, &["cat-file", "-s", &object], None, 64)
            .map_err(|_| PipelineError::Spec(format!("no {PIPELINE_FILE} in {sha}")))?;
        let size: u64 = String::from_utf8_lossy(&size).trim().parse().unwrap_or(u64::MAX);
        if size > MAX_PIPELINE_BYTES {
            return Err(PipelineError::Spec(format!("larger than {MAX_PIPELINE_BYTES} bytes")));
        }
        let text = git(&self.dir, &["cat-file", "blob", &object], None, MAX_PIPELINE_BYTES)?;
        Pipeline::parse(&String::from_utf8_lossy(&text))
    }

    /// The regular files directly in `dir` at `sha`, written into `into`; each at most
    /// `max_bytes`, at most 1024 of them, exactly one `.spec` among them (returned first).
    pub fn package(
        &self,
        sha: &str,
        dir: &str,
        into: &Path,
        max_bytes: u64,
    ) -> Result<Vec<PackageFile>, PipelineError> {
        let tree = if dir == "." { sha.to_owned() } else { format!("{sha}:{dir}") };
        let listing = git(&self.dir, &["ls-tree", "-z", "-l", &tree], None, 4 << 20)
            .map_err(|e| PipelineError::Package(format!("{dir}: {e}")))?;
        let mut files = Vec::new();
        for entry in listing.split(|&b| b == 0).filter(|e| !e.is_empty()) {
            let entry = String::from_utf8_lossy(entry);
            // "MODE TYPE OID SIZE\tNAME"
            let Some((meta, name)) = entry.split_once('\t') else { continue };
            let meta: Vec<&str> = meta.split_whitespace().collect();
            let [mode, kind, oid, size] = meta.as_slice() else { continue };
            if *kind != "blob" || !matches!(*mode, "100644" | "100755") || name.starts_with('.') {
                continue; // links, submodules, directories and dot files stay out
            }
            if !is_plain_file_name(name) {
                return Err(PipelineError::Package(format!("{dir}: file name {name:?}")));
            }
            let size: u64 = size.parse().unwrap_or(u64::MAX);
            if size > max_bytes {
                return Err(PipelineError::Package(format!(
                    "{dir}/{name}: {size} bytes, over the limit"
                )));
            }
            if files.len() >= 1024 {
                return Err(PipelineError::Package(format!("{dir}: more than 1024 files")));
            }
            let path = into.join(format!("{}-{name}", files.len()));
            let file = std::fs::File::create(&path)
                .map_err(|e| PipelineError::Package(format!("{}: {e}", path.display())))?;
            git(&self.dir, &["cat-file", "blob", oid], Some(file), 0)?;
            files.push(PackageFile { name: name.to_owned(), path });
        }
        let specs = files.iter().filter(|f| f.name.ends_with(".spec")).count();
        if specs != 1 {
            return Err(PipelineError::Package(format!(
                "{dir}: {specs} .spec files, expected one"
            )));
        }
        files.sort_by_key(|f| !f.name.ends_with(".spec"));
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pipelines_are_checked() {
        let p = Pipeline::parse("[[targets]]\nchroot = \"el9\"\narch = \"x86_64\"\n").unwrap();
        assert_eq!(p.packages.len(), 1);
        assert_eq!(p.packages[0].dir, ".");
        for bad in [
            "",
            "[[targets]]\nchroot = \"el9\"\narch = \"x86_64\"\n[[packages]]\ndir = \"../x\"\n",
            "[[targets]]\nchroot = \"el9\"\narch = \"x86_64\"\n[[packages]]\ndir = \"/etc\"\n",
            "unknown = 1\n[[targets]]\nchroot = \"el9\"\narch = \"x86_64\"\n",
        ] {
            assert!(Pipeline::parse(bad).is_err(), "{bad:?}");
        }
    }
}
