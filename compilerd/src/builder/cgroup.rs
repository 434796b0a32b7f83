//! One cgroup per build, with its memory, CPU and process limits: `discomy/job-ID-ATTEMPT` under
//! cgroup v2 (`/sys/fs/cgroup`, `memory.max`, `cpu.max`, `pids.max`) or, on a v1 host, under each
//! of the `memory`, `cpu` and `pids` hierarchies (`memory.limit_in_bytes`,
//! `cpu.cfs_quota_us`/`cfs_period_us`, `pids.max`).
//!
//! The build's first process joins it itself before it execs the runner (see
//! [`JobCgroup::procs_files`]), so no process of the build ever runs outside. Removing it kills
//! whatever is left. Cgroups are best effort: when they cannot be made the build runs without
//! (the caller counts it), it never fails for it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The builder's own subtree.
const PARENT: &str = "discomy";
/// A build's process limit (a fork bomb stops here).
const PIDS_MAX: u64 = 16384;
/// CFS period, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// What a build may use.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Memory in bytes.
    pub memory: Option<u64>,
    /// CPUs (fractions allowed).
    pub cpus: Option<f64>,
}

/// Why a cgroup could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither a v2 hierarchy with the controllers nor v1 hierarchies are mounted.
    #[error("no usable cgroup hierarchy under {CGROUP_ROOT}")]
    Unavailable,
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io { path: path.to_path_buf(), source }
}

/// The cgroup of one build.
#[derive(Debug)]
pub struct JobCgroup {
    /// One directory (v2) or one per controller hierarchy (v1).
    dirs: Vec<PathBuf>,
}

impl JobCgroup {
    /// Makes the cgroup `discomy/NAME` with `limits` (`name` a plain name).
    pub fn create(name: &str, limits: Limits) -> Result<JobCgroup, CgroupError> {
        Self::create_under(Path::new(CGROUP_ROOT), name, limits)
    }

    fn create_under(root: &Path, name: &str, limits: Limits) -> Result<JobCgroup, CgroupError> {
        if root.join("cgroup.controllers").is_file() {
            return create_v2(root, name, limits);
        }
        if root.join("memory/memory.limit_in_bytes").is_file() {
            return create_v1(root, name, limits);
        }
        Err(CgroupError::Unavailable)
    }

    /// The `cgroup.procs` files the build's first process writes its pid to.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Whether the memory limit killed a process of the build (`oom_kill` events).
    pub fn oom_killed(&self) -> bool {
        self.dirs.iter().any(|d| {
            let events = fs::read_to_string(d.join("memory.events"))
                .or_else(|_| fs::read_to_string(d.join("memory.oom_control")))
                .unwrap_or_default();
            events.lines().any(|l| l.strip_prefix("oom_kill ").is_some_and(|n| n.trim() != "0"))
        })
    }

    /// Kills what is left in it and removes it (waiting up to a few seconds for the processes to
    /// go).
    pub fn remove(self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for dir in self.dirs.iter().rev() {
            loop {
                let pids = pids_in(dir);
                for pid in &pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() > deadline => {
                        tracing::warn!("cannot remove cgroup {}: {e}", dir.display());
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

fn pids_in(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err(path))
}

/// A leftover cgroup of the same name (a builder killed mid-build): emptied and removed.
fn clear(dir: &Path) {
    if dir.is_dir() {
        JobCgroup { dirs: vec![dir.to_path_buf()] }.remove();
    }
}

fn create_v2(root: &Path, name: &str, limits: Limits) -> Result<JobCgroup, CgroupError> {
    let available = fs::read_to_string(root.join("cgroup.controllers")).map_err(io_err(root))?;
    let wanted: Vec<&str> = ["memory", "cpu", "pids"]
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect();
    if !wanted.contains(&"memory") || !wanted.contains(&"cpu") {
        return Err(CgroupError::Unavailable);
    }
    let enable: String = wanted.iter().map(|c| format!("+{c} ")).collect();
    let parent = root.join(PARENT);
    write(&root.join("cgroup.subtree_control"), enable.trim_end())?;
    make_dir(&parent)?;
    write(&parent.join("cgroup.subtree_control"), enable.trim_end())?;
    let dir = parent.join(name);
    clear(&dir);
    make_dir(&dir)?;
    let cgroup = JobCgroup { dirs: vec![dir.clone()] };
    let set = || -> Result<(), CgroupError> {
        if let Some(memory) = limits.memory {
            write(&dir.join("memory.max"), &memory.to_string())?;
            // Best effort: no swap, so the limit is the limit.
            let _ = fs::write(dir.join("memory.swap.max"), "0");
        }
        if let Some(cpus) = limits.cpus {
            write(&dir.join("cpu.max"), &format!("{} {CPU_PERIOD_US}", quota_us(cpus)))?;
        }
        if wanted.contains(&"pids") {
            write(&dir.join("pids.max"), &PIDS_MAX.to_string())?;
        }
        Ok(())
    };
    match set() {
        Ok(()) => Ok(cgroup),
        Err(e) => {
            cgroup.remove();
            Err(e)
        }
    }
}

fn create_v1(root: &Path, name: &str, limits: Limits) -> Result<JobCgroup, CgroupError> {
    let hierarchy = |controller: &str| {
        [controller.to_owned(), format!("{controller},cpuacct"), format!("cpuacct,{controller}")]
            .into_iter()
            .map(|d| root.join(d))
            .find(|d| d.join("cgroup.procs").is_file())
    };
    let memory = hierarchy("memory").ok_or(CgroupError::Unavailable)?;
    let cpu = hierarchy("cpu").ok_or(CgroupError::Unavailable)?;
    let pids = hierarchy("pids");
    let mut cgroup = JobCgroup { dirs: Vec::new() };
    let mut make = |base: &Path| -> Result<PathBuf, CgroupError> {
        let parent = base.join(PARENT);
        make_dir(&parent)?;
        let dir = parent.join(name);
        clear(&dir);
        make_dir(&dir)?;
        cgroup.dirs.push(dir.clone());
        Ok(dir)
    };
    let made = (|| -> Result<(), CgroupError> {
        let mem = make(&memory)?;
        if let Some(limit) = limits.memory {
            write(&mem.join("memory.limit_in_bytes"), &limit.to_string())?;
            // Best effort (swap accounting may be off): memory and swap together.
            let _ = fs::write(mem.join("memory.memsw.limit_in_bytes"), limit.to_string());
        }
        let cpu_dir = make(&cpu)?;
        if let Some(cpus) = limits.cpus {
            write(&cpu_dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            write(&cpu_dir.join("cpu.cfs_quota_us"), &quota_us(cpus).to_string())?;
        }
        if let Some(pids) = &pids {
            let dir = make(pids)?;
            write(&dir.join("pids.max"), &PIDS_MAX.to_string())?;
        }
        Ok(())
    })();
    match made {
        Ok(()) => Ok(cgroup),
        Err(e) => {
            cgroup.remove();
            Err(e)
        }
    }
}

fn quota_us(cpus: f64) -> u64 {
    // Config checks keep cpus within 0.01..=4096: the product fits.
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quota_is_cpus_times_period() {
        assert_eq!(quota_us(2.0), 200_000);
        assert_eq!(quota_us(0.5), 50_000);
        assert_eq!(quota_us(0.001), 1000);
    }

    #[test]
    fn v2_layout_is_written() {
        // A fake v2 root: plain files stand in for the kernel's.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory pids\n").unwrap();
        let limits = Limits { memory: Some(1 << 30), cpus: Some(1.5) };
        let cg = JobCgroup::create_under(root, "job-1-1", limits).unwrap();
        let dir = root.join("discomy/job-1-1");
        assert_eq!(fs::read_to_string(dir.join("memory.max")).unwrap(), "1073741824");
        assert_eq!(fs::read_to_string(dir.join("cpu.max")).unwrap(), "150000 100000");
        assert_eq!(
            fs::read_to_string(root.join("discomy/cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        assert_eq!(cg.procs_files(), [dir.join("cgroup.procs")]);
        assert!(!cg.oom_killed());
    }

    #[test]
    fn missing_hierarchies_are_unavailable() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            JobCgroup::create_under(tmp.path(), "job-1-1", Limits::default()),
            Err(CgroupError::Unavailable)
        ));
    }
}
