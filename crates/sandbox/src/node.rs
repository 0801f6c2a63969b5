//! Node-wide state: what this host can do ([`probe`], [`Capabilities`]) and the [`Sandbox`] the
//! server keeps for its lifetime (configuration, compiled seccomp filters, its cgroup
//! directory).

use std::ffi::CString;
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::ForkResult;
use seccompiler::BpfProgram;

use crate::cgroup::{self, CgroupRoot};
use crate::child::{self, probe_exit};
use crate::config::{CgroupUse, Isolation, SandboxConfig};
use crate::plan::{MemoryEnforcement, RootTemplate};
use crate::{SandboxError, seccomp};

/// Whether one isolation feature works on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// It works (the probe tried it).
    Available,
    /// It does not.
    Unavailable {
        /// Why, for the operator.
        reason: String,
    },
}

impl Availability {
    fn unavailable(reason: impl Into<String>) -> Self {
        Availability::Unavailable {
            reason: reason.into(),
        }
    }

    /// Whether it works.
    pub fn is_available(&self) -> bool {
        *self == Availability::Available
    }
}

/// What this host offers of cgroup v2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupSupport {
    /// `memory` and `pids` are delegated under `parent`: limits, peaks, tracking and kill.
    Limits {
        /// The cgroup under which the server creates its directory.
        parent: PathBuf,
    },
    /// A writable cgroup v2 directory without those controllers: tracking and kill only.
    Tracking {
        /// The cgroup under which the server creates its directory.
        parent: PathBuf,
    },
    /// No usable cgroup v2 hierarchy (or disabled by configuration).
    Unavailable {
        /// Why, for the operator.
        reason: String,
    },
}

/// What the probe found; the server logs it at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Mount, PID, IPC, UTS, network and cgroup namespaces, and a tmpfs mount inside them, as
    /// root (needed for namespaces without a user namespace and for per-function uids).
    pub namespaces: Availability,
    /// Installing the seccomp filter, and the filter refusing what it should.
    pub seccomp: Availability,
    /// cgroup v2.
    pub cgroup: CgroupSupport,
}

impl Capabilities {
    /// How memory will be bounded.
    pub fn memory_enforcement(&self) -> MemoryEnforcement {
        match self.cgroup {
            CgroupSupport::Limits { .. } => MemoryEnforcement::Cgroup,
            _ => MemoryEnforcement::Watchdog,
        }
    }

    /// Why the sandbox cannot be set up, if it cannot.
    pub fn missing(&self) -> Option<String> {
        let mut reasons = Vec::new();
        if let Availability::Unavailable { reason } = &self.namespaces {
            reasons.push(format!("namespaces: {reason}"));
        }
        if let Availability::Unavailable { reason } = &self.seccomp {
            reasons.push(format!("seccomp: {reason}"));
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Availability::Available => f.write_str("available"),
            Availability::Unavailable { reason } => write!(f, "unavailable ({reason})"),
        }
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "namespaces {}; seccomp {}; ",
            self.namespaces, self.seccomp
        )?;
        match &self.cgroup {
            CgroupSupport::Limits { parent } => write!(
                f,
                "cgroup v2 with memory and pids limits under {}",
                parent.display()
            )?,
            CgroupSupport::Tracking { parent } => write!(
                f,
                "cgroup v2 for tracking and kill only under {} (memory and pids not delegated)",
                parent.display()
            )?,
            CgroupSupport::Unavailable { reason } => write!(f, "no cgroup v2 ({reason})")?,
        }
        match self.memory_enforcement() {
            MemoryEnforcement::Cgroup => f.write_str("; memory limited by memory.max"),
            MemoryEnforcement::Watchdog => {
                f.write_str("; memory limited by RLIMIT_DATA and the resident-memory watchdog")
            }
        }
    }
}

/// Finds out which isolation features work here: namespaces and seccomp by trying them in a
/// forked child, cgroup v2 by reading (and creating and removing a directory in) the parent
/// cgroup.
///
/// # Errors
///
/// [`SandboxError::Probe`] if the probe child cannot be forked or waited for,
/// [`SandboxError::CompileFilter`] if the filter does not compile, and
/// [`SandboxError::InvalidPath`] for a staging directory that is not an absolute path.
pub fn probe(config: &SandboxConfig) -> Result<Capabilities, SandboxError> {
    let filters = seccomp::compile()?;
    probe_with(config, &filters)
}

fn probe_with(
    config: &SandboxConfig,
    filters: &[BpfProgram],
) -> Result<Capabilities, SandboxError> {
    let (namespaces, seccomp) = probe_isolation(&config.staging_dir, filters)?;
    Ok(Capabilities {
        namespaces,
        seccomp,
        cgroup: probe_cgroup(config),
    })
}

fn probe_isolation(
    staging: &Path,
    filters: &[BpfProgram],
) -> Result<(Availability, Availability), SandboxError> {
    if !nix::unistd::geteuid().is_root() {
        let reason = "the server does not run as root, which namespaces without a user \
                      namespace and per-function uids need";
        let untried = "not tried without namespaces";
        return Ok((
            Availability::unavailable(reason),
            Availability::unavailable(untried),
        ));
    }
    if !staging.is_absolute() || !staging.is_dir() {
        return Err(SandboxError::InvalidPath {
            path: staging.to_owned(),
            reason: "the staging directory must be an existing absolute directory",
        });
    }
    let staging_c =
        CString::new(staging.as_os_str().as_bytes()).map_err(|_| SandboxError::InvalidPath {
            path: staging.to_owned(),
            reason: "contains a NUL byte",
        })?;

    let child = match child::fork_process().map_err(|e| SandboxError::Probe(e.into()))? {
        ForkResult::Child => child::probe_child(&staging_c, filters),
        ForkResult::Parent { child } => child,
    };
    let code = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, signal, _)) => break 128 + signal as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(SandboxError::Probe(errno.into())),
        }
    };
    Ok(interpret_probe_exit(code))
}

/// Turns the probe child's exit code (`step << 6 | errno`) into availabilities.
fn interpret_probe_exit(code: i32) -> (Availability, Availability) {
    let errno = nix::errno::Errno::from_raw(code & probe_exit::ERRNO_MASK);
    let untried = || Availability::unavailable("not tried: namespaces failed first");
    match code >> probe_exit::STEP_SHIFT {
        0 if code == 0 => (Availability::Available, Availability::Available),
        probe_exit::UNSHARE => (
            Availability::unavailable(format!("unshare failed: {errno}")),
            untried(),
        ),
        probe_exit::MOUNT => (
            Availability::unavailable(format!("mounting a tmpfs failed: {errno}")),
            untried(),
        ),
        probe_exit::SECCOMP if code & probe_exit::ERRNO_MASK == 0 => (
            Availability::Available,
            Availability::unavailable("the filter did not refuse unshare"),
        ),
        probe_exit::SECCOMP => (
            Availability::Available,
            Availability::unavailable(format!("installing the filter failed: {errno}")),
        ),
        _ => (
            Availability::unavailable(format!("the probe child ended with code {code}")),
            Availability::unavailable(format!("the probe child ended with code {code}")),
        ),
    }
}

fn probe_cgroup(config: &SandboxConfig) -> CgroupSupport {
    let unavailable = |reason: String| CgroupSupport::Unavailable { reason };
    if config.cgroup == CgroupUse::Off {
        return unavailable("disabled by configuration".to_owned());
    }
    let parent = match &config.cgroup_parent {
        Some(parent) => parent.clone(),
        None => match cgroup::own_cgroup_dir() {
            Ok(Some(dir)) => dir,
            Ok(None) => return unavailable("no cgroup v2 hierarchy is mounted".to_owned()),
            Err(err) => return unavailable(format!("cannot find this process's cgroup: {err}")),
        },
    };
    if !parent.join("cgroup.procs").exists() {
        return unavailable(format!("{} is not a cgroup v2 directory", parent.display()));
    }
    let trial = parent.join(format!("nimbus-probe.{}", std::process::id()));
    match fs::create_dir(&trial) {
        Ok(()) => {
            let _ = fs::remove_dir(&trial);
        }
        Err(err) => {
            return unavailable(format!(
                "cannot create a directory in {}: {err}",
                parent.display()
            ));
        }
    }
    match cgroup::delegates_limits(&parent) {
        Ok(true) => CgroupSupport::Limits { parent },
        Ok(false) => CgroupSupport::Tracking { parent },
        Err(err) => unavailable(format!(
            "cannot read {}/cgroup.subtree_control: {err}",
            parent.display()
        )),
    }
}

/// The server's sandbox: configuration, capabilities, compiled filters and its own cgroup
/// directory. Create one at start-up and keep it; every [`Plan`](crate::Plan) is built from it.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    capabilities: Capabilities,
    cgroup_root: Option<CgroupRoot>,
    filters: Arc<[BpfProgram]>,
    root_template: RootTemplate,
}

impl Sandbox {
    /// Probes the host, refuses to go on if isolation is requested but unavailable, resolves the
    /// host part of every instance's mount tree, and creates the server's cgroup directory when
    /// cgroups are usable.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Unavailable`] if `config.isolation` is [`Isolation::Sandbox`] and
    /// namespaces or seccomp do not work; probe and cgroup errors.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let filters: Arc<[BpfProgram]> = seccomp::compile()?.into();
        let root_template = RootTemplate::new()?;
        let capabilities = probe_with(&config, &filters)?;
        if config.isolation == Isolation::Sandbox
            && let Some(reason) = capabilities.missing()
        {
            return Err(SandboxError::Unavailable { reason });
        }
        let cgroup_root = match &capabilities.cgroup {
            CgroupSupport::Limits { parent } => Some(CgroupRoot::create(parent, true)?),
            CgroupSupport::Tracking { parent } => Some(CgroupRoot::create(parent, false)?),
            CgroupSupport::Unavailable { .. } => None,
        };
        Ok(Sandbox {
            config,
            capabilities,
            cgroup_root,
            filters,
            root_template,
        })
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// What the probe found.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Sandbox or not.
    pub fn isolation(&self) -> Isolation {
        self.config.isolation
    }

    /// The server's cgroup directory (parent of the instances'), if cgroups are in use.
    pub fn cgroup_dir(&self) -> Option<&Path> {
        self.cgroup_root.as_ref().map(CgroupRoot::path)
    }

    /// How instances' memory is bounded.
    pub fn memory_enforcement(&self) -> MemoryEnforcement {
        match &self.cgroup_root {
            Some(root) if root.limits() => MemoryEnforcement::Cgroup,
            _ => MemoryEnforcement::Watchdog,
        }
    }

    pub(crate) fn cgroup_root(&self) -> Option<&CgroupRoot> {
        self.cgroup_root.as_ref()
    }

    pub(crate) fn filters(&self) -> Arc<[BpfProgram]> {
        Arc::clone(&self.filters)
    }

    pub(crate) fn root_template(&self) -> &RootTemplate {
        &self.root_template
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_probe_exit_codes() {
        let (ns, sc) = interpret_probe_exit(0);
        assert!(ns.is_available() && sc.is_available());

        let (ns, sc) = interpret_probe_exit(probe_exit::UNSHARE << probe_exit::STEP_SHIFT | 1);
        assert!(matches!(ns, Availability::Unavailable { ref reason } if reason.contains("EPERM")));
        assert!(!sc.is_available());

        let (ns, sc) = interpret_probe_exit(probe_exit::SECCOMP << probe_exit::STEP_SHIFT);
        assert!(ns.is_available());
        assert!(
            matches!(sc, Availability::Unavailable { ref reason } if reason.contains("did not"))
        );
    }

    #[test]
    fn reports_cgroups_disabled_by_configuration() {
        let config = SandboxConfig {
            cgroup: CgroupUse::Off,
            ..SandboxConfig::default()
        };
        assert!(matches!(
            probe_cgroup(&config),
            CgroupSupport::Unavailable { .. }
        ));
    }

    #[test]
    fn lists_what_is_missing() {
        let capabilities = Capabilities {
            namespaces: Availability::unavailable("no root"),
            seccomp: Availability::Available,
            cgroup: CgroupSupport::Unavailable {
                reason: "off".to_owned(),
            },
        };
        assert_eq!(
            capabilities.missing().as_deref(),
            Some("namespaces: no root")
        );
        assert_eq!(
            capabilities.memory_enforcement(),
            MemoryEnforcement::Watchdog
        );
        assert!(capabilities.to_string().contains("RLIMIT_DATA"));
    }
}
