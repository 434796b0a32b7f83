//! Killing a whole process group (a compiler driver and its `cc1`/`as`, a sandbox helper and
//! everything under it) when a run is abandoned.

/// Sends SIGKILL to process group `pgid`, unless disarmed; [`Drop`] does it too.
#[derive(Debug)]
pub struct GroupKiller(Option<u32>);

impl GroupKiller {
    /// Arms a killer for the group led by process `pid` (`None`: nothing to kill).
    pub fn new(pid: Option<u32>) -> GroupKiller {
        GroupKiller(pid)
    }

    /// Kills the group now (it stays armed: killing twice is harmless).
    pub fn kill(&self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// The run ended normally: nothing to kill on drop.
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}
