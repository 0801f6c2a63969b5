//! Mounting a function's code into a sandbox that is already running.
//!
//! A pre-started instance (a "spare", see the engine's `spare.rs`) runs with an empty, read-only
//! directory at [`CODE_ROOT`](crate::CODE_ROOT) until a function claims it. Claiming mounts the
//! function's code there from the server's side:
//!
//! ```text
//!  CodeNamespace::of(runtime pid)   open /proc/<pid>/ns/mnt while the spare is known to be ours
//!  mount_code(&namespace, dir):
//!    open_tree(dir, OPEN_TREE_CLONE)      a detached copy of the bind, in the host's namespace
//!    mount_setattr(read-only, nosuid, nodev)
//!    server thread: unshare(CLONE_FS), setns(namespace), move_mount(tree → /var/user)
//! ```
//!
//! The thread unshares its file-system attributes first (a mount namespace can only be joined
//! by a task whose root and working directory are its own), so joining changes nothing for the
//! server's other threads, and the thread ends right after. The new mount covers the empty
//! directory; the instance's processes see the code from then on.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns, unshare};

use crate::CODE_ROOT;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// The mount namespace of a running instance, held open: it stays the same namespace however
/// long the caller keeps it, even if the pid it was found through is reused.
#[derive(Debug)]
pub struct CodeNamespace {
    fd: File,
}

impl CodeNamespace {
    /// Opens the mount namespace of `pid`, which the caller knows to be a live process of the
    /// instance (for example, one that just answered on its control socket).
    ///
    /// # Errors
    ///
    /// The error of opening `/proc/<pid>/ns/mnt`; `InvalidInput` if it is the caller's own
    /// namespace (the pid was not an instance's).
    pub fn of(pid: u32) -> io::Result<CodeNamespace> {
        use std::os::unix::fs::MetadataExt;
        let fd = File::open(format!("/proc/{pid}/ns/mnt"))?;
        let own = std::fs::metadata("/proc/self/ns/mnt")?;
        let theirs = fd.metadata()?;
        if (own.dev(), own.ino()) == (theirs.dev(), theirs.ino()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the process shares the server's mount namespace",
            ));
        }
        Ok(CodeNamespace { fd })
    }
}

/// Mounts `code_dir` read-only (and `nosuid`, `nodev`) at [`CODE_ROOT`] in `namespace`.
/// Needs `CAP_SYS_ADMIN` (the server runs as root to sandbox).
///
/// # Errors
///
/// The failed system call's error.
pub fn mount_code(namespace: &CodeNamespace, code_dir: &Path) -> io::Result<()> {
    let source = CString::new(code_dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the code path"))?;
    let tree = open_tree(&source)?;
    set_attributes(
        &tree,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )?;
    let target = CString::new(CODE_ROOT).map_err(|_| io::Error::from(Errno::EINVAL))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> io::Result<()> {
                unshare(CloneFlags::CLONE_FS)?;
                setns(namespace.fd.as_fd(), CloneFlags::CLONE_NEWNS)?;
                move_mount(&tree, &target)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("code mount thread panicked")))
    })
}

/// Lowers the CPU-time limit (`RLIMIT_CPU`, seconds) of the running process `pid`, for a
/// runtime that cannot lower its own (Node.js). Never raises it: values above the current
/// ones are cut to them.
///
/// `prlimit` on a process of another uid needs `CAP_SYS_RESOURCE`, which a root server may
/// lack (a container's bounding set often leaves it out). Then a short-lived thread takes the
/// process's uid and gid, which the kernel accepts in its place, makes the change and ends:
/// only that thread's credentials change (raw system calls, not the libc wrappers, which
/// would change every thread's).
///
/// # Errors
///
/// The error of `prlimit`, or of reading the process's ids from `/proc`.
pub fn lower_cpu_limit(pid: u32, soft_secs: u64, hard_secs: u64) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(Errno::ESRCH))?;
    match lower_cpu_limit_of(pid, soft_secs, hard_secs) {
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => {
            let (uid, gid) = process_ids(pid)?;
            std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        become_thread_only(uid, gid)?;
                        lower_cpu_limit_of(pid, soft_secs, hard_secs)
                    })
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("rlimit thread panicked")))
            })
        }
        done => done,
    }
}

#[expect(
    unsafe_code,
    reason = "prlimit on another process has no wrapper in nix"
)]
fn lower_cpu_limit_of(pid: libc::pid_t, soft_secs: u64, hard_secs: u64) -> io::Result<()> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a null new limit only reads the current one into `current`, a valid `rlimit`
    // on this frame that outlives the call.
    let read = unsafe { libc::prlimit(pid, libc::RLIMIT_CPU, std::ptr::null(), &raw mut current) };
    Errno::result(read)?;
    let hard = hard_secs.min(current.rlim_max);
    let limit = libc::rlimit {
        rlim_cur: soft_secs.min(hard).min(current.rlim_cur),
        rlim_max: hard,
    };
    // SAFETY: `limit` is a valid `rlimit` on this frame that outlives the call; the old
    // limit is not asked for.
    let written = unsafe {
        libc::prlimit(
            pid,
            libc::RLIMIT_CPU,
            &raw const limit,
            std::ptr::null_mut(),
        )
    };
    Errno::result(written).map(drop).map_err(io::Error::from)
}

/// The real uid and gid of `pid`, from `/proc/<pid>/status`.
fn process_ids(pid: libc::pid_t) -> io::Result<(libc::uid_t, libc::gid_t)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let first = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|ids| ids.split_whitespace().next())
            .and_then(|id| id.parse::<u32>().ok())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("no {key} in status"))
            })
    };
    Ok((first("Uid:")?, first("Gid:")?))
}

/// Gives the calling thread, and only it, the ids `uid` and `gid`; it cannot get root back,
/// so it must end after its one task.
#[expect(
    unsafe_code,
    reason = "per-thread credentials need the raw system calls: the libc wrappers change all threads"
)]
fn become_thread_only(uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: plain system calls on integer arguments; they change only this thread's
    // credentials, which no other thread reads.
    let gid_set = unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) };
    Errno::result(gid_set)?;
    // SAFETY: as above.
    let uid_set = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
    Errno::result(uid_set).map(drop).map_err(io::Error::from)
}

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)`: a detached bind of `path`.
#[expect(unsafe_code, reason = "open_tree has no wrapper in nix or glibc 2.36")]
fn open_tree(path: &CString) -> io::Result<OwnedFd> {
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: `path` is a NUL-terminated string that outlives the call; the kernel only reads
    // it. On success the call returns a new descriptor that nothing else owns.
    let result =
        unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    let fd = Errno::result(result)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(Errno::EBADF))?;
    // SAFETY: `fd` was just returned by open_tree and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(tree, "", AT_EMPTY_PATH, set)` on a detached tree.
#[expect(
    unsafe_code,
    reason = "mount_setattr has no wrapper in nix or glibc 2.36"
)]
fn set_attributes(tree: &OwnedFd, set: u64) -> io::Result<()> {
    let attributes = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the empty path is a NUL-terminated static string, `attributes` a complete
    // `struct mount_attr` whose size is passed along; both outlive the call and the kernel only
    // reads them. `tree` is an open descriptor for the duration of the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &raw const attributes,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(result).map(drop).map_err(io::Error::from)
}

/// `move_mount(tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`.
#[expect(unsafe_code, reason = "move_mount has no wrapper in nix or glibc 2.36")]
fn move_mount(tree: &OwnedFd, target: &CString) -> io::Result<()> {
    // SAFETY: both paths are NUL-terminated strings that outlive the call and that the kernel
    // only reads; `tree` is an open descriptor for the duration of the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    Errno::result(result).map(drop).map_err(io::Error::from)
}
