//! Runtimes that join a sandbox from outside instead of being started inside it.
//!
//! A plan made with [`Plan::adopting`] builds the same sandbox as any other (waiter, init, root
//! file system, namespaces, cgroup), but init starts no runtime: once the root is built it
//! closes its descriptors and reaps whatever ends up in its PID namespace until it is killed.
//! The runtime is a process forked by someone else, such as a pre-initialised interpreter that
//! forks its instances (a zygote), which joins the sandbox with what [`Plan::adoption`] gives:
//!
//! ```text
//!  zygote (root, host namespaces)
//!    │ setns(pid) (for its children only), fork, setns back to its own PID namespace
//!    ▼
//!  runtime (in init's PID namespace): writes 0 to the instance's cgroup.procs; setns ipc,
//!          uts, net, cgroup, mnt (in JOIN_ORDER, from Adoption::namespaces; root and working
//!          directory become the sandbox's); chdir workdir; rlimits; empty capability
//!          bounding set; setgroups([]); setresgid, setresuid; dumpable again; no_new_privs;
//!          seccomp (Adoption::filters)
//! ```
//!
//! The runtime ends up with what a runtime started by init has, but for its parent (the
//! zygote, outside the namespace: `getppid()` is 0) and its memory, the zygote's.
//! Killing the spawned waiter still kills it: it is in init's PID namespace.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use crate::{CODE_ROOT, SandboxError, procfs};

/// The namespaces a joining runtime enters, in the order to enter them: the PID namespace
/// (which only its forker can enter, for its children) before the process exists, the mount
/// namespace last (after it, the host's paths are gone).
pub const JOIN_ORDER: [&str; 6] = ["ipc", "uts", "net", "cgroup", "pid", "mnt"];

/// What a process needs to become the runtime of an adopting plan's sandbox.
#[derive(Debug)]
pub struct Adoption {
    /// Init's namespaces, named and ordered as [`JOIN_ORDER`].
    pub namespaces: Vec<(&'static str, OwnedFd)>,
    /// The instance cgroup's `cgroup.procs`, opened for writing, where there is a cgroup.
    pub cgroup_procs: Option<OwnedFd>,
    /// The function's uid and gid.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// The working directory inside the sandbox.
    pub workdir: PathBuf,
    /// `(resource, soft, hard)` for each `setrlimit`, `resource` as `<sys/resource.h>`
    /// numbers it.
    pub rlimits: Vec<(i32, u64, u64)>,
    /// The seccomp programs to install in order, each an array of `struct sock_filter` in
    /// this machine's byte order.
    pub filters: Vec<Vec<u8>>,
}

impl crate::Plan {
    /// The same plan, whose init starts no runtime: one joins later, with
    /// [`Plan::adoption`](crate::Plan::adoption). Unsandboxed plans are left as they are.
    #[must_use]
    pub fn adopting(mut self) -> crate::Plan {
        self.set_adopting();
        self
    }

    /// Whether init starts no runtime and waits for one to join.
    pub fn adopts(&self) -> bool {
        self.adopting_plan().is_some()
    }

    /// What a process needs to join the sandbox of this (adopting) plan as its runtime, given
    /// the pid of the spawned waiter; call it after `spawn` returned.
    ///
    /// # Errors
    ///
    /// [`SandboxError::NotAdopting`] for a plan that starts its own runtime or has no sandbox,
    /// [`SandboxError::Read`] if init is gone or its namespaces cannot be opened, cgroup errors
    /// if `cgroup.procs` cannot be opened.
    pub fn adoption(&self, spawned_pid: u32) -> Result<Adoption, SandboxError> {
        let Some(plan) = self.adopting_plan() else {
            return Err(SandboxError::NotAdopting);
        };
        let Some(&init) = procfs::children(spawned_pid)?.first() else {
            return Err(SandboxError::Read {
                path: PathBuf::from(format!("/proc/{spawned_pid}/task")),
                source: std::io::Error::other("the sandbox's init is gone"),
            });
        };
        let mut namespaces = Vec::with_capacity(JOIN_ORDER.len());
        for name in JOIN_ORDER {
            let path = PathBuf::from(format!("/proc/{init}/ns/{name}"));
            match std::fs::File::open(&path) {
                Ok(file) => namespaces.push((name, OwnedFd::from(file))),
                Err(source) => return Err(SandboxError::Read { path, source }),
            }
        }
        let cgroup_procs = self
            .cgroup()
            .map(crate::CgroupHandle::open_procs)
            .transpose()?;
        let rlimits = plan
            .rlimits
            .iter()
            .map(|limit| (limit.resource as i32, limit.soft, limit.hard))
            .collect();
        let filters = plan
            .filters
            .iter()
            .map(|program| program.iter().flat_map(filter_bytes).collect())
            .collect();
        Ok(Adoption {
            namespaces,
            cgroup_procs,
            uid: plan.uid.as_raw(),
            gid: plan.gid.as_raw(),
            workdir: PathBuf::from(CODE_ROOT),
            rlimits,
            filters,
        })
    }
}

/// One `struct sock_filter` as the kernel reads it: `u16 code, u8 jt, u8 jf, u32 k`.
fn filter_bytes(filter: &seccompiler::sock_filter) -> [u8; 8] {
    let mut bytes = [0; 8];
    bytes[..2].copy_from_slice(&filter.code.to_ne_bytes());
    bytes[2] = filter.jt;
    bytes[3] = filter.jf;
    bytes[4..].copy_from_slice(&filter.k.to_ne_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_is_eight_bytes_in_the_kernel_layout() {
        let filter = seccompiler::sock_filter {
            code: 0x0015,
            jt: 1,
            jf: 2,
            k: 0xdead_beef,
        };
        let bytes = filter_bytes(&filter);
        assert_eq!(u16::from_ne_bytes([bytes[0], bytes[1]]), 0x0015);
        assert_eq!((bytes[2], bytes[3]), (1, 2));
        assert_eq!(
            u32::from_ne_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            0xdead_beef
        );
    }
}
