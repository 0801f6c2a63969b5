//! The forked child's side: everything [`Plan::enter`](crate::Plan::enter) does between `fork`
//! and `exec`.
//!
//! This runs in a child of a multithreaded server, where only async-signal-safe work is allowed:
//! system calls on data the parent prepared ([`SandboxedPlan`]). No allocation, no locks, no
//! formatting machinery; every failure becomes an `io::Error` built from an errno, after one
//! line naming the failed step is written to the child's stderr.
//!
//! ```text
//!  server (spawner thread)
//!    │ fork, std's stdio/cwd/pgid set-up, then Plan::enter:
//!    ▼
//!  waiter ── clone3 into new mount, pid, ipc, uts[, net] namespaces and the instance cgroup
//!    │       closes every descriptor, waits for init, exits with init's exit code.
//!    │       This is the process the server holds: SIGKILL to it kills the whole instance.
//!    ▼
//!  init (pid 1 of the new PID namespace, still root)
//!    │       parent-death signal SIGKILL (set, then checked against a race); cgroup namespace;
//!    │       root file system: private mounts, tmpfs, pivot_root, binds, /tmp, /proc, /dev
//!    │       nodes,
//!    │       then everything read-only but /tmp and /proc;
//!    │       hostname, loopback up, chdir /var/user; fork;
//!    │       closes every descriptor, reaps orphans, exits with the runtime's exit code.
//!    ▼
//!  runtime (pid 2): rlimits, close-on-exec for fds ≥ 3, empty capability bounding set,
//!          setgroups([]), setresgid, setresuid, no_new_privs, seccomp;
//!          returns Ok and std execs the interpreter.
//! ```
//!
//! Killing: SIGKILL to the waiter → the kernel sends init its parent-death SIGKILL → when a PID
//! namespace's init dies, the kernel kills every process in the namespace, whatever session or
//! process group they moved to. The same chain runs when the server dies (the waiter has its own
//! parent-death signal from the engine's hook). A process killed by signal `N` is reported as exit
//! code `128 + N`, as shells do: init, as PID 1, cannot re-raise a signal on itself.
//!
//! Why two waiting processes: the process `std` forks cannot itself enter a new PID namespace
//! (only processes created after `unshare(CLONE_NEWPID)`, or by `clone3` with it, are in it),
//! so the spawned process must create one more; and a runtime as PID 1 would neither reap the
//! orphans of its daemonised children (zombies filling `RLIMIT_NPROC` over a warm instance's
//! life) nor get default signal behaviour.
//!
//! Both waiting processes close every descriptor they inherited, `std`'s exec-error pipe
//! included: otherwise `spawn` would only return when the instance ends. A failure in any of
//! the three processes before `exec` still reaches `spawn` as an error, since each process holds
//! the pipe until then.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::prctl;
use nix::sys::resource::setrlimit;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use nix::sys::stat::{Mode, SFlag, mknod, umask};
use nix::unistd::{
    ForkResult, UnlinkatFlags, chdir, close, mkdir, pipe2, pivot_root, setgroups, sethostname,
    setresgid, setresuid, symlinkat, unlinkat,
};
use seccompiler::BpfProgram;

use crate::plan::{Rlimit, SandboxedPlan, Step, UnsandboxedPlan};

/// Exit code of a waiting process that lost track of its child.
const EXIT_SANDBOX_FAILURE: i32 = 125;
/// Where the host's root is reachable between `pivot_root` and its detachment.
pub(crate) const OLD_ROOT: &CStr = c"/.oldroot";
/// Host name inside the sandbox; resolvable through the host's `/etc/hosts`.
const HOSTNAME: &str = "localhost";
/// Options of the fresh `/proc`: processes of other users (init) are invisible.
const PROC_OPTIONS: &CStr = c"hidepid=2";

/// The sandboxed path of `Plan::enter`.
pub(crate) fn enter_sandbox(plan: &SandboxedPlan) -> io::Result<()> {
    // Waiter: creates init in the new namespaces and, where there is one, the instance cgroup.
    step("clear the dumpable flag", None, prctl::set_dumpable(false))?;
    if let Some(namespace) = &plan.join_network {
        step(
            "join the network namespace",
            None,
            setns(namespace.fd(), CloneFlags::CLONE_NEWNET),
        )?;
    }
    let (alive_read, alive_write) = step("create a pipe", None, pipe2(OFlag::O_CLOEXEC))?;
    let cgroup = plan.cgroup_dir.as_ref().map(AsRawFd::as_raw_fd);
    if let Some(init) = step("create init", None, clone_init(plan.namespaces, cgroup))? {
        wait_and_exit(init, alive_write.as_raw_fd());
    }

    // Init, pid 1. The waiter may have been killed before the parent-death signal was set:
    // its end of the pipe is then closed.
    drop(alive_write);
    step(
        "set the parent-death signal",
        None,
        prctl::set_pdeathsig(Signal::SIGKILL),
    )?;
    if parent_gone(alive_read.as_fd()) {
        exit_now(EXIT_SANDBOX_FAILURE);
    }
    drop(alive_read);
    // A cgroup namespace made by clone3 would be rooted at the waiter's cgroup, not ours.
    step(
        "unshare the cgroup namespace",
        None,
        unshare(CloneFlags::CLONE_NEWCGROUP),
    )?;
    // Modes below are exact; the runtime gets the usual umask back before it is forked.
    umask(Mode::empty());
    build_root(plan)?;
    step("set the host name", None, sethostname(HOSTNAME))?;
    if plan.loopback {
        step("bring up the loopback interface", None, bring_up_loopback())?;
    }
    let workdir = plan.workdir.as_c_str();
    step("enter the code directory", Some(workdir), chdir(workdir))?;
    umask(Mode::from_bits_truncate(0o022));
    if plan.adopt {
        reap_forever();
    }
    if let ForkResult::Parent { child } = step("fork the runtime", None, fork_process())? {
        reap_until(child.as_raw());
    }

    // Runtime, pid 2: drop everything, then std execs.
    become_function(plan)
}

/// The unsandboxed path of `Plan::enter`: cgroup, rlimits and working directory only.
pub(crate) fn enter_unsandboxed(plan: &UnsandboxedPlan) -> io::Result<()> {
    if let Some(procs) = &plan.cgroup_procs {
        step(
            "join the instance cgroup",
            None,
            write_all(procs.as_fd(), b"0"),
        )?;
    }
    apply_rlimits(&plan.rlimits)?;
    let workdir = plan.workdir.as_c_str();
    step("enter the code directory", Some(workdir), chdir(workdir))
}

/// Assembles the root file system on a tmpfs at the staging directory and pivots into it.
fn build_root(plan: &SandboxedPlan) -> io::Result<()> {
    let root = c"/";
    let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
    step(
        "make the mount tree private",
        Some(root),
        mount(None::<&CStr>, root, None::<&CStr>, private, None::<&CStr>),
    )?;
    let staging = plan.staging.as_c_str();
    // Not nodev: the device nodes of /dev live on it.
    let tmpfs_flags = MsFlags::MS_NOSUID;
    step(
        "mount the root tmpfs",
        Some(staging),
        mount(
            Some(c"tmpfs"),
            staging,
            Some(c"tmpfs"),
            tmpfs_flags,
            Some(plan.root_options.as_c_str()),
        ),
    )?;
    let put_old = plan.put_old.as_c_str();
    step(
        "create the old-root directory",
        Some(put_old),
        mkdir(put_old, Mode::from_bits_truncate(0o700)),
    )?;
    step("pivot_root", Some(staging), pivot_root(staging, put_old))?;
    step("enter the new root", Some(root), chdir(root))?;

    for each in &plan.steps {
        run_step(each)?;
    }

    step(
        "detach the host root",
        Some(OLD_ROOT),
        umount2(OLD_ROOT, MntFlags::MNT_DETACH),
    )?;
    step(
        "remove the old-root directory",
        Some(OLD_ROOT),
        unlinkat(None, OLD_ROOT, UnlinkatFlags::RemoveDir),
    )?;
    seal(plan)
}

/// Makes every mount read-only and nosuid except `/tmp` and `/proc` themselves (binds below
/// `/tmp` stay read-only): one recursive `mount_setattr` (Linux 5.12+) and two exceptions,
/// or, where that fails, one remount per mount.
fn seal(plan: &SandboxedPlan) -> io::Result<()> {
    let sealed = set_mount_attributes(c"/", true, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0);
    if sealed.is_ok() {
        for writable in [c"/tmp", c"/proc"] {
            step(
                "make a mount writable again",
                Some(writable),
                set_mount_attributes(writable, false, 0, MOUNT_ATTR_RDONLY),
            )?;
        }
        return Ok(());
    }
    for each in &plan.steps {
        if let Step::Bind { target, .. } = each {
            remount_read_only(target, MsFlags::MS_NODEV)?;
        }
    }
    remount_read_only(c"/", MsFlags::empty())
}

fn remount_read_only(target: &CStr, extra: MsFlags) -> io::Result<()> {
    let flags =
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | extra;
    step(
        "make a mount read-only",
        Some(target),
        mount(None::<&CStr>, target, None::<&CStr>, flags, None::<&CStr>),
    )
}

fn run_step(each: &Step) -> io::Result<()> {
    match each {
        Step::Dir { path } => {
            let path = path.as_c_str();
            match mkdir(path, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => Ok(()),
                Err(errno) => step("create a directory", Some(path), Err(errno)),
            }
        }
        Step::EmptyFile { path } => create_file(path, b""),
        Step::File { path, contents } => create_file(path, contents),
        Step::Symlink { target, path } => step(
            "create a symbolic link",
            Some(path),
            symlinkat(target.as_c_str(), None, path.as_c_str()),
        ),
        Step::Bind { source, target } => bind(source, target),
        Step::Device { path, device } => step(
            "create a device node",
            Some(path),
            mknod(
                path.as_c_str(),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                *device,
            ),
        ),
        Step::Tmpfs { target, options } => step(
            "mount a tmpfs",
            Some(target),
            mount(
                Some(c"tmpfs"),
                target.as_c_str(),
                Some(c"tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(options.as_c_str()),
            ),
        ),
        Step::Proc { target } => step(
            "mount /proc",
            Some(target),
            mount(
                Some(c"proc"),
                target.as_c_str(),
                Some(c"proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some(PROC_OPTIONS),
            ),
        ),
    }
}

/// Binds `source` (under the old root) at `target`; `seal` makes it read-only later.
fn bind(source: &CStr, target: &CStr) -> io::Result<()> {
    step(
        "bind mount",
        Some(target),
        mount(
            Some(source),
            target,
            None::<&CStr>,
            MsFlags::MS_BIND,
            None::<&CStr>,
        ),
    )
}

fn create_file(path: &CStr, contents: &[u8]) -> io::Result<()> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC;
    let fd = step(
        "create a file",
        Some(path),
        open(path, flags, Mode::from_bits_truncate(0o444)),
    )?;
    let written = write_all(borrow(fd), contents);
    let closed = close(fd);
    step("write a file", Some(path), written.and(closed))
}

/// Turns the current process into the function's: limits, then identity, then the filter.
fn become_function(plan: &SandboxedPlan) -> io::Result<()> {
    apply_rlimits(&plan.rlimits)?;
    // Descriptors the server opened without close-on-exec must not reach the function.
    step(
        "mark descriptors close-on-exec",
        None,
        close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC),
    )?;
    step(
        "empty the capability bounding set",
        None,
        drop_bounding_set(),
    )?;
    step("clear supplementary groups", None, setgroups(&[]))?;
    step(
        "set the function's gid",
        None,
        setresgid(plan.gid, plan.gid, plan.gid),
    )?;
    step(
        "set the function's uid",
        None,
        setresuid(plan.uid, plan.uid, plan.uid),
    )?;
    install_filters(&plan.filters)
}

/// Sets no_new_privs and installs the seccomp programs, in order.
pub(crate) fn install_filters(filters: &[BpfProgram]) -> io::Result<()> {
    for program in filters {
        if let Err(err) = seccompiler::apply_filter(program) {
            let errno = match err {
                seccompiler::Error::Prctl(err) | seccompiler::Error::Seccomp(err) => {
                    err.raw_os_error().map_or(Errno::EINVAL, Errno::from_raw)
                }
                _ => Errno::EINVAL,
            };
            return step("install the seccomp filter", None, Err(errno));
        }
    }
    Ok(())
}

fn apply_rlimits(rlimits: &[Rlimit]) -> io::Result<()> {
    for limit in rlimits {
        step(
            limit.name,
            None,
            setrlimit(limit.resource, limit.soft, limit.hard),
        )?;
    }
    Ok(())
}

/// Whether the other end of the pipe (held by the parent) has been closed.
fn parent_gone(read_end: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(read_end, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => false,
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        Err(_) => true,
    }
}

/// The waiter: keeps only the liveness pipe, waits for init and exits with its code.
fn wait_and_exit(init: libc::pid_t, keep: RawFd) -> ! {
    let keep = u32::try_from(keep).unwrap_or(0);
    if keep > 0 {
        let _ = close_range(0, keep - 1, 0);
    }
    let _ = close_range(keep.saturating_add(1), u32::MAX, 0);
    loop {
        match wait_for(init) {
            Ok((_, code)) => exit_now(code),
            Err(Errno::EINTR) => {}
            Err(_) => exit_now(EXIT_SANDBOX_FAILURE),
        }
    }
}

/// Init: reaps every child until the runtime exits, then exits with its code, which makes the
/// kernel kill what is left in the namespace.
fn reap_until(runtime: libc::pid_t) -> ! {
    let _ = close_range(0, u32::MAX, 0);
    loop {
        match wait_for(-1) {
            Ok((pid, code)) if pid == runtime => exit_now(code),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => exit_now(EXIT_SANDBOX_FAILURE),
        }
    }
}

/// Init of a sandbox whose runtime joins from outside (`adopt.rs`): reaps whatever is
/// reparented to it until it is killed. The runtime is not its child, so its end cannot be
/// waited for here; the server sees it on the runtime's channels and kills the waiter.
fn reap_forever() -> ! {
    let _ = close_range(0, u32::MAX, 0);
    let mut children = SigSet::empty();
    children.add(Signal::SIGCHLD);
    // Blocked, SIGCHLD stays pending for sigwait even though init ignores it by default.
    let _ = children.thread_block();
    loop {
        while wait_raw(-1, libc::WNOHANG | libc::__WALL).is_ok_and(|(pid, _)| pid > 0) {}
        let _ = children.wait();
    }
}

/// Waits for `pid` (or any child for -1) to terminate: its pid and exit code, with death by
/// signal `N` as `128 + N`.
fn wait_for(pid: libc::pid_t) -> Result<(libc::pid_t, i32), Errno> {
    loop {
        let (reaped, status) = wait_raw(pid, 0)?;
        if libc::WIFEXITED(status) {
            return Ok((reaped, libc::WEXITSTATUS(status)));
        }
        if libc::WIFSIGNALED(status) {
            return Ok((reaped, 128 + libc::WTERMSIG(status)));
        }
    }
}

#[expect(
    unsafe_code,
    reason = "waitpid with a raw status word: nix's WaitStatus cannot represent real-time signals"
)]
fn wait_raw(pid: libc::pid_t, options: libc::c_int) -> Result<(libc::pid_t, libc::c_int), Errno> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a live, writable c_int on this stack frame for the whole call, which
    // is all waitpid writes through the pointer.
    let reaped = unsafe { libc::waitpid(pid, &raw mut status, options) };
    Errno::result(reaped).map(|reaped| (reaped, status))
}

/// `struct clone_args` of `clone3(2)`, up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7), missing from the libc crate for glibc targets.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Forks like `fork(2)` but with `clone3`, so that the child starts in new `namespaces` and,
/// given a cgroup directory descriptor, directly in that cgroup. Moving a process later
/// (writing to `cgroup.procs`) waits for an RCU grace period: 10-15 ms measured here, several
/// times the cost of the rest of the sandbox. `Some(pid)` in the parent, `None` in the child.
#[expect(
    unsafe_code,
    reason = "clone3 has no wrapper in nix or glibc; a fork-like call is unsafe by nature"
)]
fn clone_init(namespaces: CloneFlags, cgroup: Option<RawFd>) -> nix::Result<Option<libc::pid_t>> {
    let mut args = CloneArgs {
        flags: u64::try_from(namespaces.bits()).map_err(|_| Errno::EINVAL)?,
        exit_signal: u64::try_from(libc::SIGCHLD).map_err(|_| Errno::EINVAL)?,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = u64::try_from(fd).map_err(|_| Errno::EBADF)?;
    }
    // SAFETY: the kernel reads `args` (live on this frame, its size passed along) during the
    // call only. With no stack given, the child continues on a copy-on-write copy of this
    // stack, exactly like fork(2); this process is single-threaded (a child forked for
    // `pre_exec`), so no lock can be held by a thread that does not exist in the copy. Unlike
    // glibc's fork, clone3 leaves the child's cached thread id (in its thread control block)
    // stale: the child only calls thin system-call wrappers, glibc's fork (which sets the id
    // of its own child) and `_exit`, none of which reads it.
    let result = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw mut args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match Errno::result(result)? {
        0 => Ok(None),
        pid => libc::pid_t::try_from(pid)
            .map(Some)
            .map_err(|_| Errno::EOVERFLOW),
    }
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;

/// `mount_setattr(2)` on `path`, on the whole tree below it if `recursive`.
#[expect(
    unsafe_code,
    reason = "mount_setattr has no wrapper in nix or glibc 2.36"
)]
fn set_mount_attributes(path: &CStr, recursive: bool, set: u64, clear: u64) -> nix::Result<()> {
    let attributes = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: `path` is a NUL-terminated string and `attributes` a complete `struct
    // mount_attr` whose size is passed along; both outlive the call, and the kernel only reads
    // them.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &raw const attributes,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(result).map(drop)
}

/// `fork(2)`.
#[expect(
    unsafe_code,
    reason = "fork is unsafe in a multithreaded program; callers are single-threaded children"
)]
pub(crate) fn fork_process() -> nix::Result<ForkResult> {
    // SAFETY: every caller is either a child forked by std for `pre_exec` or the probe's forked
    // child, so this process has exactly one thread and no lock held by a vanished thread can
    // be hit. The new child, too, only makes async-signal-safe system calls until it execs or
    // calls `_exit`.
    unsafe { nix::unistd::fork() }
}

/// `_exit(2)`: ends the process without running atexit handlers or flushing std's buffers,
/// which belong to the server.
#[expect(unsafe_code, reason = "libc::_exit is an extern function")]
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes any int and never returns; skipping destructors and atexit handlers
    // is the point, since the memory they would touch is a copy of the server's.
    unsafe { libc::_exit(code) }
}

/// `close_range(2)` (Linux 5.9+).
#[expect(
    unsafe_code,
    reason = "libc::close_range is an extern function; nix lacks it"
)]
fn close_range(first: u32, last: u32, flags: libc::c_uint) -> nix::Result<()> {
    let flags = libc::c_int::try_from(flags).map_err(|_| Errno::EINVAL)?;
    // SAFETY: close_range takes plain integers. The descriptors it closes are owned by objects
    // of this process (std's pipe end, copies of the server's OwnedFds), but the callers never
    // return to code that uses them: they loop on waitpid and call `_exit`. With
    // CLOSE_RANGE_CLOEXEC nothing is closed at all.
    let result = unsafe { libc::close_range(first, last, flags) };
    Errno::result(result).map(drop)
}

/// Removes every capability from the bounding set, so nothing the function executes can gain
/// one back (no_new_privs covers set-uid files; this covers file capabilities the same way).
#[expect(unsafe_code, reason = "prctl(PR_CAPBSET_DROP) has no nix wrapper")]
fn drop_bounding_set() -> nix::Result<()> {
    for capability in 0..64 {
        // SAFETY: PR_CAPBSET_DROP reads its second argument as a capability number and no
        // pointer; the unused arguments are zero as prctl(2) asks.
        let result = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) };
        match Errno::result(result) {
            Ok(_) => {}
            // Past the last capability this kernel knows.
            Err(Errno::EINVAL) => return Ok(()),
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}

/// Sets `IFF_UP` on `lo` in the new network namespace (`ip` is not available inside, and a
/// netlink message would need more code for the same effect).
///
/// Writes the flags without reading them first: of the flags `SIOCSIFFLAGS` can change, a fresh
/// loopback has none set but the one we want.
#[expect(
    unsafe_code,
    reason = "ioctl(SIOCSIFFLAGS) with a struct ifreq has no nix wrapper"
)]
pub(crate) fn bring_up_loopback() -> nix::Result<()> {
    let socket = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut name = [0; libc::IFNAMSIZ];
    for (slot, byte) in name.iter_mut().zip(b"lo") {
        *slot = libc::c_char::from_ne_bytes([*byte]);
    }
    let flags = libc::c_short::try_from(libc::IFF_UP).map_err(|_| Errno::EINVAL)?;
    let request = libc::ifreq {
        ifr_name: name,
        ifr_ifru: libc::__c_anonymous_ifr_ifru { ifru_flags: flags },
    };
    // SAFETY: SIOCSIFFLAGS reads one `struct ifreq`: `request` is a complete, initialised
    // ifreq that lives on this stack frame across the call, with a NUL-terminated name and
    // the flags member of the union set, which is the member this request reads.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &raw const request) };
    Errno::result(result).map(drop)
}

fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> nix::Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}

#[expect(
    unsafe_code,
    reason = "nix 0.29's open returns a raw descriptor, which must be borrowed to write to it"
)]
fn borrow<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // SAFETY: only called by `create_file` on the descriptor `open` just returned, which it
    // closes after its last use of the borrow.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Passes `result` through; on failure first writes one line naming the step, the path and the
/// errno to the child's stderr (the instance log), since the spawn error carries the errno only.
fn step<T>(what: &str, path: Option<&CStr>, result: nix::Result<T>) -> io::Result<T> {
    result.map_err(|errno| {
        report(what, path, errno);
        io::Error::from(errno)
    })
}

fn report(what: &str, path: Option<&CStr>, errno: Errno) {
    let mut line = Line::default();
    line.push(b"nimbus-sandbox: cannot ");
    line.push(what.as_bytes());
    if let Some(path) = path {
        line.push(b" ");
        line.push(path.to_bytes());
    }
    line.push(b": errno ");
    line.push_number(errno as i32);
    line.push(b"\n");
    let _ = nix::unistd::write(io::stderr().as_fd(), line.as_bytes());
}

/// A fixed-size line buffer on the stack; what does not fit is cut.
struct Line {
    bytes: [u8; 512],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            bytes: [0; 512],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, more: &[u8]) {
        for &byte in more {
            if let Some(slot) = self.bytes.get_mut(self.len) {
                *slot = byte;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, value: i32) {
        let mut digits = [0u8; 12];
        let mut at = digits.len();
        let mut rest = value.unsigned_abs();
        loop {
            at -= 1;
            // The remainder is below 10.
            digits[at] = b'0' + u8::try_from(rest % 10).unwrap_or(0);
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if value < 0 {
            self.push(b"-");
        }
        self.push(digits.get(at..).unwrap_or_default());
    }

    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// Namespaces every sandbox's init is created in; `CLONE_NEWNET` is added when the network is
/// off. (The cgroup namespace is created by init itself.)
pub(crate) fn base_namespaces() -> CloneFlags {
    CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
}

/// Exit code of the probe child: 0, or `step << STEP_SHIFT | errno` for the first failed step
/// (errno 0 with `SECCOMP`: the filter installed but did not refuse `unshare`).
pub(crate) mod probe_exit {
    pub(crate) const STEP_SHIFT: i32 = 6;
    pub(crate) const ERRNO_MASK: i32 = (1 << STEP_SHIFT) - 1;
    pub(crate) const UNSHARE: i32 = 1;
    pub(crate) const MOUNT: i32 = 2;
    pub(crate) const SECCOMP: i32 = 3;

    /// The exit code for `step` failing with `errno` (errnos above 63 are cut to 63).
    pub(crate) fn code(step: i32, errno: nix::errno::Errno) -> i32 {
        step << STEP_SHIFT | (errno as i32).min(ERRNO_MASK)
    }
}

/// The probe's child: tries the namespaces, a tmpfs on the staging directory and the filter,
/// and exits with the code [`probe_exit`] describes.
pub(crate) fn probe_child(staging: &CStr, filters: &[BpfProgram]) -> ! {
    let namespaces = base_namespaces() | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWCGROUP;
    if let Err(errno) = unshare(namespaces) {
        exit_now(probe_exit::code(probe_exit::UNSHARE, errno));
    }
    let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
    let mounted =
        mount(None::<&CStr>, c"/", None::<&CStr>, private, None::<&CStr>).and_then(|()| {
            mount(
                Some(c"tmpfs"),
                staging,
                Some(c"tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(c"size=64k"),
            )
        });
    if let Err(errno) = mounted {
        exit_now(probe_exit::code(probe_exit::MOUNT, errno));
    }
    if let Err(err) = install_filters(filters) {
        let errno = err.raw_os_error().map_or(Errno::EINVAL, Errno::from_raw);
        exit_now(probe_exit::code(probe_exit::SECCOMP, errno));
    }
    match unshare(CloneFlags::CLONE_NEWUTS) {
        Err(Errno::EPERM) => exit_now(0),
        _ => exit_now(probe_exit::SECCOMP << probe_exit::STEP_SHIFT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_report_lines_without_allocating() {
        let mut line = Line::default();
        line.push(b"cannot x: errno ");
        line.push_number(13);
        assert_eq!(line.as_bytes(), b"cannot x: errno 13");
        let mut line = Line::default();
        line.push_number(0);
        line.push_number(-2);
        assert_eq!(line.as_bytes(), b"0-2");
    }

    #[test]
    fn cuts_lines_that_do_not_fit() {
        let mut line = Line::default();
        line.push(&[b'a'; 600]);
        assert_eq!(line.as_bytes().len(), 512);
    }
}
