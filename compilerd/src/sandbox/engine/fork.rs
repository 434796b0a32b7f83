//! Stage 2 as a forked child of stage 1, not a second `exec` of the helper: the helper is
//! single-threaded, so the child goes on with the same code. Each `exec` of the static helper
//! costs its C library's start-up (CPU probing that traps to the hypervisor on virtual
//! machines) and the page faults of its relocations, on the farm's busiest path.
//!
//! The child waits for its options (the same NUL-separated command line as before) on a pipe,
//! which becomes its standard input: the program it runs inherits that, at its end.

use super::*;

/// A stage 2 waiting for its options.
pub(super) struct Stage2 {
    pid: Pid,
    options: Option<File>,
}

impl Stage2 {
    /// Forks stage 2. In a new PID namespace the first child is its PID 1.
    ///
    /// The workspace denies `unsafe`; `fork` is the one exception, for the reason above.
    #[allow(unsafe_code)]
    pub(super) fn start() -> Result<Stage2> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe to stage 2")?;
        // SAFETY: the helper has one thread (nothing here starts any), so the child may go on
        // running this program's code.
        match unsafe { nix::unistd::fork() }.context("fork stage 2")? {
            nix::unistd::ForkResult::Child => {
                drop(write);
                let code = stage2_from(read);
                std::process::exit(i32::from(code));
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(read);
                Ok(Stage2 { pid: child, options: Some(File::from(write)) })
            }
        }
    }

    /// Hands stage 2 its options (once).
    pub(super) fn hand(&mut self, options: &[u8]) -> Result<()> {
        let mut pipe = self.options.take().context("stage 2 has its options already")?;
        pipe.write_all(options).context("hand stage 2 its options")
    }

    /// Waits for stage 2 (the program, once it has run it).
    pub(super) fn wait(mut self) -> Result<std::process::ExitStatus> {
        drop(self.options.take());
        loop {
            match nix::sys::wait::waitpid(self.pid, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => {
                    return Ok(std::process::ExitStatus::from_raw((code & 0xff) << 8));
                }
                Ok(nix::sys::wait::WaitStatus::Signaled(_, signal, _)) => {
                    return Ok(std::process::ExitStatus::from_raw(signal as i32));
                }
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => bail!("wait for stage 2: {e}"),
            }
        }
    }
}

/// The child: its options from `pipe` (nothing: stage 1 went away unused), then stage 2, its
/// own set-up failures recorded in the status file its options name.
fn stage2_from(pipe: std::os::fd::OwnedFd) -> u8 {
    // The pipe is the program's standard input too.
    if nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&pipe), 0).is_err() {
        return SETUP_EXIT_CODE;
    }
    drop(pipe);
    let argv = std::env::args_os().take(1).collect();
    let cli = match options_from_stdin(argv) {
        Ok(Some(cli)) => cli,
        Ok(None) => return 0,
        Err(e) => {
            let _ = writeln!(io::stderr(), "{SETUP_PREFIX}{e:#}");
            return SETUP_EXIT_CODE;
        }
    };
    let mut status = open_status(&cli);
    let result = match &cli.stage2 {
        Some(newroot) => stage2(&cli, newroot),
        None => Err(setup_error!("stage 2 options without --stage2")),
    };
    exit_code(result, &mut status)
}
