//! The seccomp filters every sandboxed process runs under.
//!
//! A deny list, not an allow list: interpreters and the native modules users bring call a wide
//! and changing set of system calls, so the filter refuses the calls a function never needs and
//! that widen the kernel's attack surface or reach beyond the instance. A refused call fails
//! with `EPERM` inside the function; nothing is killed.
//!
//! Two programs are installed, checked by the kernel on every system call:
//! 1. **guard** (hand-written, seven instructions): on x86-64, any x32-ABI call (number with bit
//!    30 set, which would bypass the number comparisons of the deny list) and `clone3` fail with
//!    `ENOSYS`. `clone3` takes its flags in memory, where BPF cannot look; `ENOSYS` (not `EPERM`)
//!    makes glibc fall back to `clone`, whose flags the deny list can check.
//! 2. **deny list** (compiled by `seccompiler`): the calls in [`DENIED`] fail with `EPERM`, and so
//!    does `clone` with any namespace flag. Any other architecture than the native one kills
//!    the process (`seccompiler`'s architecture check), which also shuts the 32-bit `int 0x80`
//!    entry.
//!
//! Both are compiled once per server, in the parent; the child only installs them.
//!
//! # Limitations
//!
//! - `ioctl`, `prctl`, `personality` and socket families are not filtered by argument; the
//!   unprivileged uid and the namespaces are what bound them.
//! - A deny list cannot refuse system calls added to future kernels; review it when the
//!   minimum kernel moves.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use crate::SandboxError;

/// System calls refused with `EPERM`, and why a function has no use for them.
pub(crate) const DENIED: &[(libc::c_long, &str)] = &[
    // Kernel code: loading modules is the shortest way to own the host.
    (libc::SYS_init_module, "load a kernel module"),
    (libc::SYS_finit_module, "load a kernel module"),
    (libc::SYS_delete_module, "unload a kernel module"),
    (libc::SYS_kexec_load, "replace the running kernel"),
    (libc::SYS_kexec_file_load, "replace the running kernel"),
    (libc::SYS_reboot, "reboot or halt the host"),
    // The file system view is the sandbox: it must not be rearranged from inside.
    (libc::SYS_mount, "change the mount tree"),
    (libc::SYS_umount2, "uncover what the sandbox hides"),
    (libc::SYS_pivot_root, "change the root file system"),
    (libc::SYS_chroot, "change the root directory"),
    (libc::SYS_fsopen, "new mount API"),
    (libc::SYS_fsconfig, "new mount API"),
    (libc::SYS_fsmount, "new mount API"),
    (libc::SYS_fspick, "new mount API"),
    (libc::SYS_move_mount, "new mount API"),
    (libc::SYS_open_tree, "new mount API: clone a mount tree"),
    (
        libc::SYS_mount_setattr,
        "new mount API: make a mount writable",
    ),
    (
        libc::SYS_name_to_handle_at,
        "file handles: reach files by inode",
    ),
    (
        libc::SYS_open_by_handle_at,
        "file handles: escape a bind mount",
    ),
    (libc::SYS_swapon, "change the host's swap"),
    (libc::SYS_swapoff, "change the host's swap"),
    (libc::SYS_quotactl, "change disk quotas"),
    (libc::SYS_quotactl_fd, "change disk quotas"),
    (libc::SYS_acct, "switch process accounting"),
    // Namespaces: new ones (user namespaces above all) open kernel attack surface; joining
    // others is an escape.
    (libc::SYS_unshare, "create namespaces"),
    (libc::SYS_setns, "join another namespace"),
    // Other processes: tracing or reading their memory.
    (libc::SYS_ptrace, "trace a process"),
    (libc::SYS_process_vm_readv, "read another process's memory"),
    (
        libc::SYS_process_vm_writev,
        "write another process's memory",
    ),
    (libc::SYS_kcmp, "compare kernel objects of other processes"),
    (libc::SYS_pidfd_getfd, "steal a file descriptor"),
    (libc::SYS_migrate_pages, "move another process's memory"),
    (libc::SYS_move_pages, "move another process's memory"),
    // Kernel subsystems with a long record of privilege escalations.
    (libc::SYS_bpf, "load eBPF programs"),
    (
        libc::SYS_perf_event_open,
        "performance counters, side channels",
    ),
    (
        libc::SYS_userfaultfd,
        "stall the kernel in page faults (exploit helper)",
    ),
    (libc::SYS_keyctl, "kernel keyrings are not namespaced"),
    (libc::SYS_add_key, "kernel keyrings are not namespaced"),
    (libc::SYS_request_key, "kernel keyrings are not namespaced"),
    (libc::SYS_io_uring_setup, "io_uring bypasses this filter"),
    (libc::SYS_io_uring_enter, "io_uring bypasses this filter"),
    (libc::SYS_io_uring_register, "io_uring bypasses this filter"),
    (libc::SYS_fanotify_init, "watch the host's file system"),
    (libc::SYS_lookup_dcookie, "kernel profiling internals"),
    (libc::SYS_syslog, "read the kernel log"),
    (libc::SYS_vhangup, "hang up terminals"),
    // The host's clock is shared by every namespace.
    (libc::SYS_settimeofday, "set the host clock"),
    (libc::SYS_clock_settime, "set the host clock"),
    (libc::SYS_clock_adjtime, "adjust the host clock"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_iopl, "raw I/O port access"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_ioperm, "raw I/O port access"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_modify_ldt, "segment descriptors (exploit helper)"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_uselib, "obsolete library loading"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS__sysctl, "obsolete sysctl interface"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_nfsservctl, "obsolete NFS server control"),
];

/// `clone` flags that create namespaces (`CLONE_NEWTIME` overlaps the exit-signal byte of
/// `clone` and exists for `unshare` and `clone3` only, both refused).
const NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// Compiles the filters, in the order they are to be installed.
pub(crate) fn compile() -> Result<Vec<BpfProgram>, SandboxError> {
    Ok(vec![guard(), deny_list()?])
}

fn deny_list() -> Result<BpfProgram, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED
        .iter()
        .map(|&(number, _why)| (number, Vec::new()))
        .collect();
    rules.insert(libc::SYS_clone, clone_namespace_rules()?);

    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno(libc::EPERM)),
        native_arch(),
    )
    .map_err(SandboxError::CompileFilter)?;
    BpfProgram::try_from(filter).map_err(SandboxError::CompileFilter)
}

/// One rule per namespace flag: `clone` matches if `flags & FLAG == FLAG` for any of them.
fn clone_namespace_rules() -> Result<Vec<SeccompRule>, SandboxError> {
    NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let flag = u64::from(flag.unsigned_abs());
            let condition = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?;
            SeccompRule::new(vec![condition])
        })
        .collect::<Result<_, _>>()
        .map_err(SandboxError::CompileFilter)
}

fn native_arch() -> TargetArch {
    if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else if cfg!(target_arch = "riscv64") {
        TargetArch::riscv64
    } else {
        TargetArch::x86_64
    }
}

fn errno(value: libc::c_int) -> u32 {
    value.unsigned_abs()
}

/// Offsets in `struct seccomp_data`.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
/// `AUDIT_ARCH_X86_64`: `EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_NATIVE: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `AUDIT_ARCH_AARCH64`.
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_NATIVE: u32 = 183 | 0x8000_0000 | 0x4000_0000;
/// `AUDIT_ARCH_RISCV64`.
#[cfg(target_arch = "riscv64")]
const AUDIT_ARCH_NATIVE: u32 = 243 | 0x8000_0000 | 0x4000_0000;
/// Bit 30 of the system call number marks the x32 ABI on x86-64.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The guard program: x32 calls and `clone3` fail with `ENOSYS`.
fn guard() -> BpfProgram {
    let allow = libc::SECCOMP_RET_ALLOW;
    let enosys = libc::SECCOMP_RET_ERRNO | (errno(libc::ENOSYS) & libc::SECCOMP_RET_DATA);
    let clone3 = u32::try_from(libc::SYS_clone3).expect("system call numbers fit in u32");
    // On architectures without x32 no call number has bit 30 set; the check is harmless there.
    vec![
        load(ARCH_OFFSET),
        // Not the native architecture: allow here, the deny list kills it.
        jump_eq(AUDIT_ARCH_NATIVE, 0, 3),
        load(NR_OFFSET),
        jump(libc::BPF_JGE, X32_SYSCALL_BIT, 2, 0),
        jump_eq(clone3, 1, 0),
        ret(allow),
        ret(enosys),
    ]
}

fn code(bits: u32) -> u16 {
    u16::try_from(bits).expect("BPF opcodes fit in 16 bits")
}

fn load(offset: u32) -> sock_filter {
    sock_filter {
        code: code(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS),
        jt: 0,
        jf: 0,
        k: offset,
    }
}

fn jump(op: u32, value: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code(libc::BPF_JMP | op | libc::BPF_K),
        jt,
        jf,
        k: value,
    }
}

fn jump_eq(value: u32, jt: u8, jf: u8) -> sock_filter {
    jump(libc::BPF_JEQ, value, jt, jf)
}

fn ret(action: u32) -> sock_filter {
    sock_filter {
        code: code(libc::BPF_RET | libc::BPF_K),
        jt: 0,
        jf: 0,
        k: action,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_both_programs() {
        let programs = compile().expect("filters compile");
        assert_eq!(programs.len(), 2);
        assert!(programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
    }

    #[test]
    fn deny_list_has_no_duplicates() {
        let mut numbers: Vec<_> = DENIED.iter().map(|&(n, _)| n).collect();
        numbers.sort_unstable();
        let before = numbers.len();
        numbers.dedup();
        assert_eq!(before, numbers.len());
    }

    #[test]
    fn guard_jumps_stay_inside_the_program() {
        let program = guard();
        for (at, instruction) in program.iter().enumerate() {
            let is_jump = instruction.code & 0x07 == u16::try_from(libc::BPF_JMP).unwrap_or(5);
            if is_jump {
                let furthest = at + 1 + usize::from(instruction.jt.max(instruction.jf));
                assert!(furthest < program.len(), "jump at {at} leaves the program");
            }
        }
        let last = program.last().expect("non-empty");
        assert_eq!(last.code, code(libc::BPF_RET | libc::BPF_K));
    }
}
