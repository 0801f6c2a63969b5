//! The Linux sandbox every function instance runs in.
//!
//! A function must not read other functions' code, the platform's database or credentials, or
//! the host's files; must not signal or trace processes outside its instance; and must not take
//! the node down with a fork bomb, a memory hog or a full disk. Each instance therefore gets:
//!
//! - its own mount, PID, IPC, UTS and cgroup namespaces, and a network namespace with only
//!   loopback unless the function allows network ([`Network`]); that namespace can be made
//!   beforehand ([`NetNamespace`]) for the server to listen inside it;
//! - a root file system of its own: read-only system directories, a minimal `/etc`, a minimal
//!   `/dev`, a fresh `/proc`, a size-bounded private `/tmp`, the function's code read-only at
//!   [`CODE_ROOT`] and the runtime paths read-only (see `plan.rs`); the host's `/root`, `/home`,
//!   the platform's data directory and other functions' code are not there at all;
//! - an unprivileged host uid and gid per function, no capabilities, `no_new_privs`;
//! - rlimits (processes, open files, file size, CPU time, data segment, no core dumps);
//! - a seccomp filter refusing what a function never needs (see `seccomp.rs`);
//! - a cgroup v2 directory of its own where the host has one: always for tracking and
//!   `cgroup.kill`, and for `memory.max`/`pids.max` where `memory` and `pids` are delegated;
//!   otherwise memory is bounded by `RLIMIT_DATA` and a watchdog ([`Plan::check_memory`]).
//!
//! How the server uses it:
//!
//! ```text
//! start-up:  Sandbox::new(config) ── probe ──> Capabilities (log them; Err if isolation is
//!                                               requested and unavailable)
//! per spawn: Plan::new(&sandbox, &spec)         parent: paths, CStrings, cgroup, limits
//!            Command::pre_exec(move || plan.enter())   child: system calls only
//!            spawn ──> waiter process (kill it = kill the instance)
//!            plan.runtime_pid(pid), plan.check_memory(pid), plan.cgroup()
//! teardown:  kill the spawned process, drop the Plan (kills leftovers, removes the cgroup)
//! ```
//!
//! The process structure inside `enter` (waiter, PID-namespace init, runtime) and why is in
//! `child.rs`; the mount tree in `plan.rs`; cgroups in `cgroup.rs`; a sandbox whose runtime
//! is forked by another process and joins it ([`Plan::adopting`], [`Adoption`]) in `adopt.rs`.
//!
//! `unsafe` is allowed in this crate only, item by item, each block with a `SAFETY:` comment:
//! `fork`, `clone3`, `mount_setattr`, `_exit`, `waitpid` with a raw status, `close_range`,
//! `prctl(PR_CAPBSET_DROP)`, one `ioctl`, and borrowing a raw descriptor.
//!
//! Needs Linux 5.9 or later (`clone3` with `CLONE_INTO_CGROUP`, `close_range`); `cgroup.kill`
//! (5.14) and `mount_setattr` (5.12) are used where present, with slower fallbacks.
//!
//! # Limitations
//!
//! - The server must run as root: the sandbox uses namespaces without a user namespace and
//!   switches to per-function host uids. Rootless operation would need a user namespace with a
//!   uid map per function (and `RLIMIT_NPROC` would then count per mapped uid).
//! - With [`Network::Host`] the function shares the host's network namespace, including
//!   services listening on the host's loopback (the platform's own API, a local database):
//!   a per-instance network namespace with NAT would be needed to allow egress without that.
//! - The waiter and init are forks of the server that never exec: each keeps a copy-on-write
//!   snapshot of the server's memory, so pages the server later writes are duplicated while the
//!   instance lives. Spawning from a small helper process forked early would avoid it.
//! - `RLIMIT_NPROC` counts every process of the function's uid on the host, so it is shared by
//!   all instances of a function; `pids.max` (limit mode) is per instance.
//! - The watchdog samples: memory allocated and touched between two polls beyond the limit is
//!   noticed late, and shared anonymous mappings escape `RLIMIT_DATA` until then.
//! - No `/dev/shm`, `/dev/pts` or `/sys`: POSIX semaphores (Python `multiprocessing` locks)
//!   do not work inside, as on AWS Lambda.
//! - Landlock is not used: the private mount tree already limits what is visible, and a
//!   Landlock ruleset would restate the same paths.

#![warn(missing_docs)]

mod adopt;
mod cgroup;
mod child;
mod config;
mod error;
mod inject;
mod netns;
mod node;
mod plan;
mod procfs;
mod seccomp;

pub use adopt::{Adoption, JOIN_ORDER};
pub use cgroup::CgroupHandle;
pub use config::{
    CgroupUse, DEFAULT_FIRST_ID, DEFAULT_ID_COUNT, DEFAULT_STAGING_DIR, DEFAULT_TMP_BYTES,
    InstanceSpec, Isolation, Limits, Network, SandboxConfig,
};
pub use error::SandboxError;
pub use inject::{CodeNamespace, lower_cpu_limit, mount_code};
pub use netns::NetNamespace;
pub use node::{Availability, Capabilities, CgroupSupport, Sandbox, probe};
pub use plan::{MemoryEnforcement, MemoryStatus, Plan};

/// Where the function's code is mounted inside the sandbox (as on SCF).
pub const CODE_ROOT: &str = "/var/user";
