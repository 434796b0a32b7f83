//! Removing what dead processes left behind: directories named `PREFIX<pid>` or
//! `PREFIX<pid>-…` whose process is gone (killed with SIGKILL, or the host lost power). The
//! worker's default work directories (under `/dev/shm` they would hold memory until reboot) and
//! the sandbox helpers' mount points both use it.

use std::path::Path;

/// Removes every directory in `parent` named `prefix` + a pid (optionally followed by `-…`)
/// whose pid is not alive. A directory whose pid is alive (its owner, or an unrelated process
/// that reused the pid) is left alone, as is every other name.
pub fn remove_dirs_of_dead_pids(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .map(|rest| rest.split_once('-').map_or(rest, |(pid, _)| pid))
            .and_then(|pid| pid.parse::<i32>().ok())
            .filter(|pid| *pid > 0)
        else {
            continue;
        };
        let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_processes_directories_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        // Beyond any pid_max (2^22): no such process.
        let dead = 1 << 23;
        let gone = [format!("w-{dead}"), format!("w-{dead}-x1Yz")];
        let kept = [format!("w-{}", std::process::id()), "w-notapid".into(), format!("v-{dead}")];
        for name in gone.iter().chain(&kept) {
            let dir = parent.path().join(name);
            std::fs::create_dir_all(dir.join("unit-x/out")).unwrap();
            std::fs::write(dir.join("unit-x/out/unit.o"), b"object").unwrap();
        }
        remove_dirs_of_dead_pids(parent.path(), "w-");
        for name in &gone {
            assert!(!parent.path().join(name).exists(), "{name} was left");
        }
        for name in &kept {
            assert!(parent.path().join(name).join("unit-x/out/unit.o").exists(), "{name} went");
        }
    }
}
