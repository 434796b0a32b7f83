//! The syscall filter of every sandboxed program, installed just before its `exec`: the
//! kernel interfaces a compiler never needs and an attacker reaches for to escape or to attack
//! the kernel answer `ENOSYS`: new namespaces (`unshare`, `setns`, `clone` with a
//! `CLONE_NEW*` flag; `clone3`, whose flags the filter cannot see, so that glibc falls back to
//! `clone`), io_uring, bpf, ptrace and reading or writing other processes, perf events, keyrings,
//! userfaultfd, mounts, modules and kexec. Everything else is allowed: a deny list, because the
//! programs are whatever toolchain a client ships, and an allow list would break the ones it
//! does not know.

use std::collections::BTreeMap;

use super::error::{Context, Result};
use nix::libc;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Syscalls refused outright.
const DENIED: &[i64] = &[
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_clone3,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_bpf,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_open_by_handle_at,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
];

/// `clone` flags that make a namespace: `clone` with any of them is refused.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// The filter as a BPF program for this machine's architecture.
pub(super) fn program() -> Result<BpfProgram> {
    let arch: TargetArch = std::env::consts::ARCH
        .try_into()
        .with_context(|| format!("no syscall filter for {}", std::env::consts::ARCH))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&n| (n, Vec::new())).collect();
    let namespace_clones = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let flag = u64::from(flag.unsigned_abs());
            let op = SeccompCmpOp::MaskedEq(flag);
            let flags_have_it = SeccompCondition::new(0, SeccompCmpArgLen::Qword, op, flag)?;
            SeccompRule::new(vec![flags_have_it])
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("the clone rules")?;
    rules.insert(libc::SYS_clone, namespace_clones);
    let enosys = SeccompAction::Errno(libc::ENOSYS.unsigned_abs());
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, enosys, arch)
        .context("build the syscall filter")?;
    filter.try_into().context("compile the syscall filter")
}

/// Installs the filter on this thread; `no_new_privs` must be set (stage 2 sets it first).
pub(super) fn install() -> Result<()> {
    let program = program()?;
    seccompiler::apply_filter(&program).context("install the syscall filter")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_filter_compiles_for_this_machine() {
        let program = super::program().expect("a filter");
        assert!(program.len() > 30, "{} instructions", program.len());
    }
}
