//! cgroup v2: one directory per server, one per instance under it.
//!
//! ```text
//! <parent>/                      the server's own cgroup, or `SandboxConfig::cgroup_parent`
//! └─ nimbus.<pid>.<n>/           CgroupRoot: created at start-up, removed when dropped;
//!    │                           subtree_control += memory pids (limit mode only)
//!    └─ i<k>/                    CgroupHandle: one per instance; memory.max, memory.swap.max,
//!                                pids.max, memory.oom.group (limit mode only)
//! ```
//!
//! Two modes, chosen at start-up from the parent's `cgroup.subtree_control`:
//! - **limits**: `memory` and `pids` are delegated to the parent's children. Each instance gets
//!   `memory.max`, `memory.swap.max = 0`, `pids.max` and `memory.oom.group = 1` (an OOM kill
//!   takes the whole instance), and reports `memory.current`, `memory.peak` and OOM kills.
//! - **tracking**: no controllers (as on a v1/v2 hybrid host whose v2 tree is empty). The
//!   directories still track every process of an instance and kill them all with `cgroup.kill`;
//!   memory is left to `RLIMIT_DATA` and the watchdog.
//!
//! A sandboxed instance's init is created directly inside its cgroup by the waiter, with
//! `clone3(CLONE_INTO_CGROUP)` (see `child.rs`), so every process of the function is in it from
//! its first instruction; the waiter itself stays in the server's cgroup. The parent could not
//! move the child in time (`std::process::Command::spawn` returns only after `exec`), and a
//! move (a write to `cgroup.procs`) waits for an RCU grace period, 10-15 ms here. An
//! unsandboxed instance joins by writing to `cgroup.procs` and pays that price.
//!
//! # Limitations
//!
//! - The server does not move itself into a leaf cgroup, so on a host that delegates controllers
//!   to the server's own cgroup (systemd `Delegate=yes`) the controllers are not enabled for our
//!   directories (a cgroup with processes may not enable them for its children): point
//!   `cgroup_parent` at a delegated cgroup without processes instead.
//! - Directories left by a server that was killed (`nimbus.<pid>.<n>`) are removed by the next
//!   server to start under the same parent, once no process has that pid. Servers in other PID
//!   namespaces sharing one parent would look dead to each other: give each its own parent.
//! - `cgroup.kill` needs Linux 5.14; before that, killing falls back to signalling every listed
//!   process, which races with processes forked meanwhile (the PID namespace still ends them).

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::SandboxError;

/// How long tearing an instance's cgroup down may wait for its processes to die.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Distinguishes the directories of several [`CgroupRoot`]s in one process (tests make many).
static NEXT_ROOT: AtomicU64 = AtomicU64::new(0);

/// The mount point of the first cgroup v2 hierarchy in `mounts` (the text of `/proc/mounts`).
pub(crate) fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

/// `/proc/mounts` writes spaces, tabs, newlines and backslashes in paths as octal escapes.
fn unescape_mount_path(path: &str) -> String {
    path.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The cgroup v2 path of this process from `/proc/self/cgroup` (the `0::<path>` line).
pub(crate) fn own_cgroup(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
}

/// The server's own cgroup v2 directory, if the host has a cgroup v2 hierarchy.
pub(crate) fn own_cgroup_dir() -> io::Result<Option<PathBuf>> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    let Some(mount) = cgroup2_mount(&mounts) else {
        return Ok(None);
    };
    let own = fs::read_to_string("/proc/self/cgroup")?;
    Ok(own_cgroup(&own).map(|path| match path.trim_matches('/') {
        "" => mount,
        relative => mount.join(relative),
    }))
}

/// Whether `parent` hands the `memory` and `pids` controllers down to its children.
pub(crate) fn delegates_limits(parent: &Path) -> io::Result<bool> {
    let enabled = fs::read_to_string(parent.join("cgroup.subtree_control"))?;
    let has = |name: &str| enabled.split_whitespace().any(|c| c == name);
    Ok(has("memory") && has("pids"))
}

/// Limits written into an instance's cgroup in limit mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CgroupLimits {
    pub(crate) memory_bytes: u64,
    pub(crate) pids: u64,
}

/// The server's own cgroup directory, parent of every instance's.
#[derive(Debug)]
pub(crate) struct CgroupRoot {
    dir: PathBuf,
    limits: bool,
    next_instance: AtomicU64,
}

impl CgroupRoot {
    /// Creates `nimbus.<pid>.<n>` under `parent`, enabling `memory` and `pids` for its children
    /// when `limits` is set.
    ///
    /// First removes what servers that died left under `parent` ([`sweep_stale`]); a name
    /// still taken (a dead process of the same pid left it, with processes inside) is skipped.
    pub(crate) fn create(parent: &Path, limits: bool) -> Result<CgroupRoot, SandboxError> {
        sweep_stale(parent);
        let dir = loop {
            let name = format!(
                "nimbus.{}.{}",
                std::process::id(),
                NEXT_ROOT.fetch_add(1, Ordering::Relaxed)
            );
            let dir = parent.join(name);
            match fs::create_dir(&dir) {
                Ok(()) => break dir,
                // Left by an earlier process that had this pid: reuse the name if it is empty.
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    if remove_tree(&dir).is_ok() && fs::create_dir(&dir).is_ok() {
                        break dir;
                    }
                }
                Err(source) => return Err(SandboxError::CreateCgroup { path: dir, source }),
            }
        };
        let root = CgroupRoot {
            dir,
            limits,
            next_instance: AtomicU64::new(0),
        };
        if limits {
            write_control(&root.dir.join("cgroup.subtree_control"), "+memory +pids")?;
        }
        Ok(root)
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether instances get memory and pids limits.
    pub(crate) fn limits(&self) -> bool {
        self.limits
    }

    /// Creates the cgroup of one instance; `limits` applies only in limit mode.
    pub(crate) fn instance(&self, limits: CgroupLimits) -> Result<CgroupHandle, SandboxError> {
        let k = self.next_instance.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.join(format!("i{k}"));
        fs::create_dir(&dir).map_err(|source| SandboxError::CreateCgroup {
            path: dir.clone(),
            source,
        })?;
        let handle = CgroupHandle {
            dir,
            limited: self.limits,
            removed: false,
        };
        if self.limits {
            write_limits(&handle.dir, limits)?;
        }
        Ok(handle)
    }
}

/// Removes the `nimbus.<pid>.<n>` directories under `parent` whose server is gone (no process
/// has that pid any more), instance directories first. They are empty, since instances die
/// with their server; one that still holds processes stays (`rmdir` refuses it).
fn sweep_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(server_pid) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = remove_tree(&entry.path());
        }
    }
}

/// The pid in a server directory's name, `nimbus.<pid>.<n>`.
fn server_pid(name: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix("nimbus.")?.split_once('.')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Removes a server directory and the instance directories in it; fails (leaving the rest) if
/// one still holds processes.
fn remove_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        if entry.file_type()?.is_dir() {
            fs::remove_dir(entry.path())?;
        }
    }
    fs::remove_dir(dir)
}

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        // Fails while instances still exist; their own handles remove them.
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Writes the limits of an instance into its cgroup directory `dir`.
pub(crate) fn write_limits(dir: &Path, limits: CgroupLimits) -> Result<(), SandboxError> {
    write_control(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
    // Without swap accounting the file is absent, and there is nothing to bound.
    let swap = dir.join("memory.swap.max");
    if swap.exists() {
        write_control(&swap, "0")?;
    }
    write_control(&dir.join("pids.max"), &limits.pids.to_string())?;
    let oom_group = dir.join("memory.oom.group");
    if oom_group.exists() {
        write_control(&oom_group, "1")?;
    }
    Ok(())
}

fn write_control(path: &Path, value: &str) -> Result<(), SandboxError> {
    fs::write(path, value).map_err(|source| SandboxError::WriteCgroup {
        path: path.to_owned(),
        source,
    })
}

fn read_control(path: &Path) -> Result<String, SandboxError> {
    fs::read_to_string(path).map_err(|source| SandboxError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads a control file holding one number; `Ok(None)` if the file does not exist.
fn read_number(path: &Path) -> Result<Option<u64>, SandboxError> {
    match fs::read_to_string(path) {
        Ok(text) => parse_number(&text)
            .map(Some)
            .ok_or_else(|| SandboxError::Read {
                path: path.to_owned(),
                source: io::Error::new(io::ErrorKind::InvalidData, "not a number"),
            }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SandboxError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn parse_number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The value of `key` in a flat keyed file such as `cgroup.events` or `memory.events`.
pub(crate) fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| parse_number(value)).flatten()
    })
}

/// One instance's cgroup directory. Dropping it kills whatever still runs in it and removes it.
#[derive(Debug)]
pub struct CgroupHandle {
    dir: PathBuf,
    limited: bool,
    removed: bool,
}

impl CgroupHandle {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether the memory and pids controllers limit this cgroup.
    pub fn is_limited(&self) -> bool {
        self.limited
    }

    /// Opens the directory, for `clone3(CLONE_INTO_CGROUP)` (read-only, close-on-exec).
    pub(crate) fn open_dir(&self) -> Result<OwnedFd, SandboxError> {
        fs::File::open(&self.dir)
            .map(OwnedFd::from)
            .map_err(|source| SandboxError::Read {
                path: self.dir.clone(),
                source,
            })
    }

    /// Opens `cgroup.procs` for the child to join with (write-only, close-on-exec).
    pub(crate) fn open_procs(&self) -> Result<OwnedFd, SandboxError> {
        let path = self.dir.join("cgroup.procs");
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map(OwnedFd::from)
            .map_err(|source| SandboxError::WriteCgroup { path, source })
    }

    /// Kills every process in the cgroup (`cgroup.kill`; on kernels without it, `SIGKILL` to
    /// each listed process).
    ///
    /// # Errors
    ///
    /// [`SandboxError::WriteCgroup`] or [`SandboxError::Read`] if the control files cannot be
    /// used.
    pub fn kill(&self) -> Result<(), SandboxError> {
        let kill_file = self.dir.join("cgroup.kill");
        if kill_file.exists() {
            return write_control(&kill_file, "1");
        }
        for pid in self.pids()? {
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            match kill(Pid::from_raw(raw), Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(errno) => {
                    return Err(SandboxError::WriteCgroup {
                        path: self.dir.join("cgroup.procs"),
                        source: errno.into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The host pids of the processes in the cgroup.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Read`] if `cgroup.procs` cannot be read.
    pub fn pids(&self) -> Result<Vec<u32>, SandboxError> {
        let text = read_control(&self.dir.join("cgroup.procs"))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Whether any live process is left in the cgroup.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Read`] if `cgroup.events` cannot be read.
    pub fn is_populated(&self) -> Result<bool, SandboxError> {
        let path = self.dir.join("cgroup.events");
        let text = read_control(&path)?;
        keyed_value(&text, "populated")
            .map(|n| n != 0)
            .ok_or_else(|| SandboxError::Read {
                path,
                source: io::Error::new(io::ErrorKind::InvalidData, "no populated key"),
            })
    }

    /// Writes `memory.max` (limit mode only).
    pub(crate) fn set_memory_max(&self, bytes: u64) -> Result<(), SandboxError> {
        write_control(&self.dir.join("memory.max"), &bytes.to_string())
    }

    /// `memory.current` in bytes; `None` without the memory controller.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Read`] if the file exists but cannot be read.
    pub fn memory_current(&self) -> Result<Option<u64>, SandboxError> {
        read_number(&self.dir.join("memory.current"))
    }

    /// `memory.peak` in bytes (Linux 5.19+); `None` without the memory controller.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Read`] if the file exists but cannot be read.
    pub fn memory_peak(&self) -> Result<Option<u64>, SandboxError> {
        read_number(&self.dir.join("memory.peak"))
    }

    /// How many forks the `pids.max` limit refused (the `max` count of `pids.events`); `None`
    /// without the pids controller. A non-zero count is how a fork bomb shows in limit mode.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Read`] if the file exists but cannot be read.
    pub fn pids_limit_hits(&self) -> Result<Option<u64>, SandboxError> {
        let path = self.dir.join("pids.events");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(keyed_value(&text, "max").unwrap_or(0))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SandboxError::Read { path, source }),
        }
    }

    /// How many processes the kernel killed for exceeding `memory.max` (the `oom_kill` count of
    /// `memory.events`); `None` without the memory controller.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Read`] if the file exists but cannot be read.
    pub fn oom_kills(&self) -> Result<Option<u64>, SandboxError> {
        let path = self.dir.join("memory.events");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(keyed_value(&text, "oom_kill").unwrap_or(0))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SandboxError::Read { path, source }),
        }
    }

    /// Kills every process in the cgroup, waits (up to two seconds) until none is left and
    /// removes the directory.
    ///
    /// # Errors
    ///
    /// [`SandboxError::RemoveCgroup`] if processes are still alive after the wait or the
    /// directory cannot be removed; errors of [`kill`](Self::kill).
    pub fn remove(mut self) -> Result<(), SandboxError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), SandboxError> {
        if self.removed {
            return Ok(());
        }
        let deadline = Instant::now() + TEARDOWN_TIMEOUT;
        loop {
            // Zombies do not count as members, so this succeeds as soon as every process has
            // exited, reaped or not.
            match fs::remove_dir(&self.dir) {
                Ok(()) => {
                    self.removed = true;
                    return Ok(());
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    self.removed = true;
                    return Ok(());
                }
                Err(err)
                    if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                {
                    self.kill()?;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(source) => {
                    return Err(SandboxError::RemoveCgroup {
                        path: self.dir.clone(),
                        source,
                    });
                }
            }
        }
    }
}

impl Drop for CgroupHandle {
    fn drop(&mut self) {
        // Nothing to report to: a directory that cannot be removed stays, empty or not, and
        // the server's root directory keeps it in sight.
        let _ = self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_among_v1_mounts() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
        assert_eq!(
            cgroup2_mount("none /a\\040b cgroup2 rw 0 0\n"),
            Some(PathBuf::from("/a b"))
        );
    }

    #[test]
    fn reads_the_v2_line_of_proc_self_cgroup() {
        let text = "4:memory:/process_api/x\n1:cpu:/\n0::/system.slice/nimbus.service\n";
        assert_eq!(own_cgroup(text), Some("/system.slice/nimbus.service"));
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn sweeps_the_directories_of_dead_servers_only() {
        let parent = tempfile::tempdir().expect("temporary directory");
        // pid_max is at most 2^22: no process has this pid.
        let dead = parent.path().join("nimbus.99999999.0");
        let alive = parent
            .path()
            .join(format!("nimbus.{}.7", std::process::id()));
        let foreign = parent.path().join("other.1.0");
        for dir in [
            dead.join("i0"),
            dead.join("i3"),
            alive.join("i0"),
            foreign.clone(),
        ] {
            fs::create_dir_all(dir).expect("mkdir");
        }
        sweep_stale(parent.path());
        assert!(!dead.exists());
        assert!(alive.join("i0").exists());
        assert!(foreign.exists());
        assert_eq!(server_pid("nimbus.12.3"), Some(12));
        assert_eq!(server_pid("nimbus.12"), None);
        assert_eq!(server_pid("nimbus-probe.12"), None);
    }

    #[test]
    fn limits_need_both_memory_and_pids_delegated() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let control = dir.path().join("cgroup.subtree_control");
        fs::write(&control, "cpu memory pids\n").expect("write");
        assert!(delegates_limits(dir.path()).expect("read"));
        fs::write(&control, "memory\n").expect("write");
        assert!(!delegates_limits(dir.path()).expect("read"));
        fs::write(&control, "").expect("write");
        assert!(!delegates_limits(dir.path()).expect("read"));
    }

    #[test]
    fn writes_instance_limits_into_control_files() {
        let dir = tempfile::tempdir().expect("temporary directory");
        for file in [
            "memory.max",
            "memory.swap.max",
            "pids.max",
            "memory.oom.group",
        ] {
            fs::write(dir.path().join(file), "max\n").expect("write");
        }
        let limits = CgroupLimits {
            memory_bytes: 128 << 20,
            pids: 67,
        };
        write_limits(dir.path(), limits).expect("write limits");
        let read = |f: &str| fs::read_to_string(dir.path().join(f)).expect("read");
        assert_eq!(read("memory.max"), "134217728");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "67");
        assert_eq!(read("memory.oom.group"), "1");
    }

    #[test]
    fn skips_swap_and_oom_group_files_the_kernel_lacks() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let limits = CgroupLimits {
            memory_bytes: 1 << 20,
            pids: 8,
        };
        write_limits(dir.path(), limits).expect("write limits");
        assert!(!dir.path().join("memory.swap.max").exists());
        assert!(!dir.path().join("memory.oom.group").exists());
        assert!(dir.path().join("pids.max").exists());
    }

    #[test]
    fn reads_keyed_values() {
        let events = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(keyed_value(events, "oom_kill"), Some(2));
        assert_eq!(keyed_value(events, "oom"), Some(1));
        assert_eq!(keyed_value("populated 0\nfrozen 0\n", "populated"), Some(0));
        assert_eq!(keyed_value("populated 1\n", "frozen"), None);
    }

    #[test]
    fn reports_missing_controller_files_as_none() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let handle = CgroupHandle {
            dir: dir.path().to_owned(),
            limited: false,
            removed: true,
        };
        assert_eq!(handle.memory_current().expect("read"), None);
        assert_eq!(handle.memory_peak().expect("read"), None);
        assert_eq!(handle.oom_kills().expect("read"), None);
        fs::write(dir.path().join("memory.peak"), "4096\n").expect("write");
        fs::write(dir.path().join("memory.events"), "oom 0\noom_kill 1\n").expect("write");
        assert_eq!(handle.memory_peak().expect("read"), Some(4096));
        assert_eq!(handle.oom_kills().expect("read"), Some(1));
    }
}
