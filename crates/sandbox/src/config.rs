//! What the server and the engine tell the sandbox: node-wide settings ([`SandboxConfig`]) and
//! one instance's needs ([`InstanceSpec`], [`Limits`]). Every default lives here, and a test pins
//! them.

use std::path::PathBuf;

use crate::netns::NetNamespace;

/// First host uid and gid handed to functions by default.
///
/// Far above the ids that distributions hand to people and services, and below 2^31 so that no
/// tool mistakes it for a negative number.
pub const DEFAULT_FIRST_ID: u32 = 2_000_000_000;

/// How many uids (and gids, the same numbers) functions may use by default.
pub const DEFAULT_ID_COUNT: u32 = 100_000;

/// Where the sandbox's root filesystem is assembled by default (only inside the instance's own
/// mount namespace: the host never sees anything mounted there).
pub const DEFAULT_STAGING_DIR: &str = "/tmp";

/// Default size bound of an instance's private `/tmp` (SCF gives 512 MB).
pub const DEFAULT_TMP_BYTES: u64 = 512 * 1024 * 1024;

/// Whether instances run inside the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Namespaces, a private root filesystem, an unprivileged uid, rlimits and seccomp (default).
    Sandbox,
    /// `--isolation none`: instances run as the server's user, in its namespaces and with its
    /// view of the file system; only the rlimits and the working directory are applied. For hosts
    /// where namespaces are unavailable; the caller must log a loud warning.
    None,
}

/// Whether the server may put each instance in a cgroup v2 directory of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupUse {
    /// Use cgroup v2 when a writable hierarchy is found: for tracking and `cgroup.kill` always,
    /// for `memory.max` and `pids.max` when the parent delegates `memory` and `pids` (default).
    Auto,
    /// Never create cgroups; memory is then limited with `RLIMIT_DATA` plus the watchdog.
    Off,
}

/// Node-wide sandbox settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Sandbox or not; see [`Isolation`].
    pub isolation: Isolation,
    /// First host uid/gid that functions may run as.
    pub first_id: u32,
    /// Number of uids/gids from `first_id` on that functions may run as.
    pub id_count: u32,
    /// Whether cgroups are used.
    pub cgroup: CgroupUse,
    /// The cgroup v2 directory under which the server creates its own; `None` means the cgroup
    /// the server runs in.
    pub cgroup_parent: Option<PathBuf>,
    /// An existing host directory on which each instance mounts the tmpfs that becomes its root
    /// (in the instance's mount namespace only).
    pub staging_dir: PathBuf,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            isolation: Isolation::Sandbox,
            first_id: DEFAULT_FIRST_ID,
            id_count: DEFAULT_ID_COUNT,
            cgroup: CgroupUse::Auto,
            cgroup_parent: None,
            staging_dir: PathBuf::from(DEFAULT_STAGING_DIR),
        }
    }
}

/// Network access of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// A network namespace of its own with only a loopback interface (default).
    Off,
    /// No network either, but in a namespace made beforehand, where the server may have bound
    /// listeners meant for this instance alone (see [`NetNamespace`]).
    Joined(NetNamespace),
    /// The host's network namespace: egress works, and so does host loopback.
    Host,
}

/// Per-process resource limits (`setrlimit`) of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_NPROC`: processes (and threads) of the function's uid on the whole host, so across
    /// all instances of the function.
    pub nproc: u64,
    /// `RLIMIT_NOFILE`: open file descriptors per process.
    pub nofile: u64,
    /// `RLIMIT_FSIZE`: largest file a process may write, in bytes.
    pub fsize_bytes: u64,
    /// `RLIMIT_CPU`: CPU seconds per process, a backstop behind the engine's timeout
    /// (`SIGXCPU` at this many seconds, `SIGKILL` five seconds later).
    pub cpu_secs: u64,
    /// `RLIMIT_DATA`: heap and private writable mappings per process, in bytes; `None` for no
    /// limit. Not `RLIMIT_AS`, which stops Node.js from starting.
    pub data_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            nproc: 256,
            nofile: 1024,
            fsize_bytes: DEFAULT_TMP_BYTES,
            cpu_secs: 900,
            data_bytes: None,
        }
    }
}

/// One instance's sandbox: who it runs as, what it sees and what it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Unprivileged host uid, distinct per function, inside the configured id range.
    pub uid: u32,
    /// Unprivileged host gid, distinct per function, inside the configured id range.
    pub gid: u32,
    /// The function's code, mounted read-only at [`CODE_ROOT`](crate::CODE_ROOT). It must be
    /// readable by `uid` or `gid`.
    pub code_dir: PathBuf,
    /// Host paths mounted read-only at the same path: the interpreter's prefix (such as
    /// `/root/.pyenv/versions/3.11.7`), the engine's runtime shim directory. Paths under `/usr`
    /// and the other system directories are visible anyway and need not be listed.
    pub runtime_paths: Vec<PathBuf>,
    /// Size bound of the private `/tmp`, in bytes.
    pub tmp_bytes: u64,
    /// Network access.
    pub network: Network,
    /// Memory limit of the whole instance, in MiB (cgroup `memory.max`, or the watchdog's bound).
    pub memory_mb: u32,
    /// Per-process limits.
    pub limits: Limits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pinned() {
        let config = SandboxConfig::default();
        assert_eq!(config.isolation, Isolation::Sandbox);
        assert_eq!((config.first_id, config.id_count), (2_000_000_000, 100_000));
        assert_eq!(config.cgroup, CgroupUse::Auto);
        assert_eq!(config.cgroup_parent, None);
        assert_eq!(config.staging_dir, PathBuf::from("/tmp"));
        assert!(u64::from(config.first_id) + u64::from(config.id_count) < 1 << 31);

        let limits = Limits::default();
        assert_eq!(limits.nproc, 256);
        assert_eq!(limits.nofile, 1024);
        assert_eq!(limits.fsize_bytes, 512 << 20);
        assert_eq!(limits.cpu_secs, 900);
        assert_eq!(limits.data_bytes, None);
        assert_eq!(DEFAULT_TMP_BYTES, 512 << 20);
    }
}
