//! Per-run cgroups (pids and memory limits, events read afterwards), made under the caller's
//! parents or the helper's own, and removed once their helper is gone.

use super::*;

/// The run's cgroups as the options ask for them (none unprivileged without a parent).
pub(super) fn cgroups_for(cli: &Cli) -> Result<Cgroups> {
    let privileged = geteuid().is_root();
    if cli.no_cgroup || (!privileged && cli.cgroup_parent.is_empty()) {
        Ok(Cgroups::default())
    } else if cli.cgroup_parent.is_empty() {
        Cgroups::create(&own_cgroup_parents(), false, cli)
    } else {
        Cgroups::create(&cli.cgroup_parent, true, cli)
    }
}

/// The run's cgroups (one per hierarchy); removed when dropped, unless stage 1 is in them.
#[derive(Default)]
pub(super) struct Cgroups {
    pub(super) dirs: Vec<PathBuf>,
    /// A warm helper joined them itself: they cannot be removed while it lives.
    pub(super) joined_by_stage1: bool,
}

impl Cgroups {
    /// Creates `<parent>/discomy-sandbox-<pid>` under each parent that offers a pids or memory
    /// controller, with `pids.max` and the memory limit set. `explicit`: failures are errors.
    pub(super) fn create(parents: &[PathBuf], explicit: bool, cli: &Cli) -> Result<Cgroups> {
        let name = format!("{CGROUP_PREFIX}{}", std::process::id());
        let mut made = Cgroups::default();
        for parent in parents {
            remove_stale(parent);
            match make_cgroup(parent, &name, cli) {
                Ok(Some(dir)) => made.dirs.push(dir),
                Ok(None) if explicit => {
                    bail!("cgroup {} offers neither pids nor memory", parent.display())
                }
                Err(e) if explicit => return Err(e),
                Ok(None) | Err(_) => {}
            }
        }
        Ok(made)
    }

    /// (forks refused by `pids.max`, OOM kills) over all of the run's cgroups.
    pub(super) fn events(&self) -> (u64, u64) {
        let mut pids = 0;
        let mut oom = 0;
        for dir in &self.dirs {
            pids += keyed_value(&dir.join("pids.events"), "max");
            oom += keyed_value(&dir.join("memory.events"), "oom_kill");
            oom += keyed_value(&dir.join("memory.oom_control"), "oom_kill");
        }
        (pids, oom)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        if self.joined_by_stage1 {
            return; // removed by a later helper once this pid is gone
        }
        for dir in &self.dirs {
            // The namespace's processes are gone once PID 1 is reaped, but the cgroup may take
            // a moment to notice.
            for _ in 0..40 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
        }
    }
}

pub(super) fn make_cgroup(parent: &Path, name: &str, cli: &Cli) -> Result<Option<PathBuf>> {
    let dir = parent.join(name);
    fs::create_dir(&dir).with_context(|| format!("create cgroup {}", dir.display()))?;
    let result = (|| -> Result<bool> {
        let subtree = parent.join("cgroup.subtree_control");
        if subtree.exists() && !dir.join("pids.max").exists() {
            // cgroup v2: controllers must be enabled for the parent's children (refused when
            // the parent has processes of its own and is not the root).
            let _ = fs::write(&subtree, "+pids");
            let _ = fs::write(&subtree, "+memory");
        }
        let mut any = false;
        let set = |file: &str, value: &str| -> Result<()> {
            fs::write(dir.join(file), value)
                .with_context(|| format!("write {} to {}/{file}", value, dir.display()))
        };
        if dir.join("pids.max").exists() {
            set("pids.max", &cli.nproc.to_string())?;
            any = true;
        }
        if dir.join("memory.max").exists() {
            set("memory.max", &cli.mem_bytes.to_string())?;
            let _ = set("memory.swap.max", "0");
            any = true;
        } else if dir.join("memory.limit_in_bytes").exists() {
            set("memory.limit_in_bytes", &cli.mem_bytes.to_string())?;
            any = true;
        }
        Ok(any)
    })();
    match result {
        Ok(true) => Ok(Some(dir)),
        Ok(false) => {
            let _ = fs::remove_dir(&dir);
            Ok(None)
        }
        Err(e) => {
            let _ = fs::remove_dir(&dir);
            Err(e)
        }
    }
}

/// Removes run cgroups left by helpers that were killed (their pid no longer exists).
pub(super) fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) =
            name.to_str().and_then(|n| n.strip_prefix(CGROUP_PREFIX)).and_then(|p| p.parse().ok())
        else {
            continue;
        };
        if kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

/// The helper's own cgroup directories: the unified one on a pure v2 host, else the v1 `pids`
/// and `memory` ones.
pub(super) fn own_cgroup_parents() -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/cgroup") else { return Vec::new() };
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(|p| vec![base.join(p.trim_start_matches('/'))])
            .unwrap_or_default();
    }
    let mut dirs = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "pids" || c == "memory") {
            let dir = base.join(controllers).join(path.trim_start_matches('/'));
            if dir.is_dir() {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// The number after `key` in a `key value` lines file (0 when absent).
pub(super) fn keyed_value(path: &Path, key: &str) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Stage 2
// ---------------------------------------------------------------------------------------------
