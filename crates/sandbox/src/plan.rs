//! Building a [`Plan`] in the parent: every path resolved, every string a `CString`, every
//! allocation done, so that [`Plan::enter`] in the forked child only makes system calls.
//!
//! The root file system of an instance, as the steps build it (after `pivot_root` into a small
//! tmpfs, with the host's root reachable at `/.oldroot` until it is detached):
//!
//! ```text
//! /usr                    read-only bind of the host's (and /bin, /sbin, /lib, /lib64, …:
//!                         a bind if a directory on the host, the same symlink if a symlink)
//! /etc                    generated passwd and group; copies of the few small files
//!                         programs need (hosts, resolv.conf, ld.so.cache, …), read-only
//!                         binds of a few directories (ssl/certs, ld.so.conf.d, …)
//! /dev                    null zero full random urandom (device nodes), fd stdin stdout
//!                         stderr (symlinks)
//! /proc                   fresh, of the new PID namespace, hidepid=2
//! /tmp                    tmpfs, size-bounded, mode 1777
//! /var/user               the function's code, read-only
//! <runtime paths>         read-only binds at their host paths (an interpreter prefix, the
//!                         engine's shim directory)
//! ```
//!
//! Everything but `/tmp` and `/proc` is made read-only and nosuid at the end. Each mount costs
//! tens of microseconds to set up and again to tear down, so there are as few as possible. Binds are not recursive: mounts
//! below a bound host directory are not carried into the sandbox (they show as the directory
//! underneath), so a writable mount nested in `/usr` cannot leak in.

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::sched::CloneFlags;
use nix::sys::resource::{RLIM_INFINITY, Resource};
use nix::unistd::{Gid, Uid};
use seccompiler::BpfProgram;

use crate::cgroup::{CgroupHandle, CgroupLimits};
use crate::child::{self, OLD_ROOT};
use crate::config::{InstanceSpec, Limits, Network};
use crate::netns::NetNamespace;
use crate::{CODE_ROOT, Sandbox, SandboxError, procfs};

/// Host directories shown read-only at the same path (or as the same symlink).
const SYSTEM_DIRS: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// Files and directories of the host's `/etc` shown read-only, where they exist. Not
/// `shadow`, `ssl/private`, or anything with credentials.
const ETC_ENTRIES: [&str; 18] = [
    "hosts",
    "resolv.conf",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "services",
    "protocols",
    "localtime",
    "timezone",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "ssl/certs",
    "ssl/openssl.cnf",
    "ca-certificates",
    "pki/tls/certs",
    "pki/ca-trust",
    "alternatives",
];

/// `/etc` files up to this size are copied into each instance's root instead of bound.
const COPY_LIMIT_BYTES: u64 = 64 * 1024;

/// Device nodes recreated (same device numbers) from the host's `/dev`.
const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];

/// Sandbox paths that runtime paths may not overlap (they are provided by the sandbox itself).
const RESERVED: [&str; 4] = ["/etc", "/dev", "/proc", CODE_ROOT];

/// Processes in an instance's cgroup that are not the function's: init (the waiter stays in
/// the server's cgroup).
const SANDBOX_PROCESSES: u64 = 1;

/// Smallest `/tmp`: tmpfs reads a size of 0 as "unbounded".
const MIN_TMP_BYTES: u64 = 4096;

/// One mount-tree step, run in order in the child after `pivot_root` (paths are inside the new
/// root; bind sources are under [`OLD_ROOT`]).
#[derive(Debug, Clone)]
pub(crate) enum Step {
    Dir {
        path: CString,
    },
    EmptyFile {
        path: CString,
    },
    File {
        path: CString,
        contents: Vec<u8>,
    },
    Symlink {
        target: CString,
        path: CString,
    },
    Bind {
        source: CString,
        target: CString,
    },
    /// A character device node, mode 0666.
    Device {
        path: CString,
        device: u64,
    },
    Tmpfs {
        target: CString,
        options: CString,
    },
    Proc {
        target: CString,
    },
}

/// One `setrlimit` call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rlimit {
    pub(crate) name: &'static str,
    pub(crate) resource: Resource,
    pub(crate) soft: u64,
    pub(crate) hard: u64,
}

/// What the child of a sandboxed instance needs.
#[derive(Debug)]
pub(crate) struct SandboxedPlan {
    /// The instance cgroup's directory, for `clone3(CLONE_INTO_CGROUP)`.
    pub(crate) cgroup_dir: Option<OwnedFd>,
    pub(crate) namespaces: CloneFlags,
    pub(crate) staging: CString,
    pub(crate) root_options: CString,
    pub(crate) put_old: CString,
    pub(crate) steps: Vec<Step>,
    pub(crate) loopback: bool,
    /// A namespace made beforehand for the instance to join (its loopback is already up).
    pub(crate) join_network: Option<NetNamespace>,
    pub(crate) workdir: CString,
    pub(crate) rlimits: Vec<Rlimit>,
    pub(crate) uid: Uid,
    pub(crate) gid: Gid,
    pub(crate) filters: Arc<[BpfProgram]>,
    /// Init starts no runtime: one joins from outside ([`Plan::adopting`]).
    pub(crate) adopt: bool,
}

/// What the child of an unsandboxed instance (`--isolation none`) needs.
#[derive(Debug)]
pub(crate) struct UnsandboxedPlan {
    /// The instance cgroup's `cgroup.procs`, to join by writing to it.
    pub(crate) cgroup_procs: Option<OwnedFd>,
    pub(crate) workdir: CString,
    pub(crate) rlimits: Vec<Rlimit>,
}

#[derive(Debug)]
enum Mode {
    Sandboxed(Box<SandboxedPlan>),
    Unsandboxed(UnsandboxedPlan),
}

/// How an instance's memory is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryEnforcement {
    /// cgroup v2 `memory.max`: the kernel enforces it and kills the whole instance on breach.
    Cgroup,
    /// `RLIMIT_DATA` per process plus [`Plan::check_memory`] polled by the caller, which kills
    /// the instance when it reports [`MemoryStatus::Exceeded`].
    Watchdog,
}

/// An instance's memory as [`Plan::check_memory`] saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryStatus {
    /// Below the limit.
    Within {
        /// Memory in use: `memory.current`, or the function's processes' resident sets.
        used_bytes: u64,
    },
    /// The limit was breached: the kernel killed (part of) the instance (cgroup), or the caller
    /// must kill it now (watchdog).
    Exceeded {
        /// Memory in use, or the cgroup's peak.
        used_bytes: u64,
        /// The limit.
        limit_bytes: u64,
    },
}

/// Everything needed to start one instance in its sandbox, prepared in the parent.
///
/// Keep it (for example in an `Arc` shared with the `pre_exec` closure) as long as the instance
/// runs: dropping it kills whatever is left in the instance's cgroup and removes the cgroup,
/// waiting up to two seconds for the processes to die, so drop it after killing the instance
/// (or from a blocking context).
#[derive(Debug)]
pub struct Plan {
    mode: Mode,
    // Declared after `mode`, so the descriptor on `cgroup.procs` closes before the directory
    // is removed.
    cgroup: Option<CgroupHandle>,
    code_root: PathBuf,
    uid: Option<u32>,
    /// Lowered once by [`Plan::lower_memory_limit`] when a pre-started instance is claimed.
    memory_limit_bytes: std::sync::atomic::AtomicU64,
}

impl Plan {
    /// Prepares the sandbox of one instance: resolves and checks paths, creates the instance's
    /// cgroup (with its limits in limit mode) and builds every string the child will use.
    ///
    /// # Errors
    ///
    /// [`SandboxError::IdOutsideRange`] for a uid or gid outside the configured range,
    /// [`SandboxError::InvalidPath`] or [`SandboxError::InspectPath`] for a path that cannot be
    /// mounted, cgroup errors if the instance's cgroup cannot be created.
    pub fn new(sandbox: &Sandbox, spec: &InstanceSpec) -> Result<Plan, SandboxError> {
        let config = sandbox.config();
        let memory_limit_bytes = u64::from(spec.memory_mb) << 20;
        let cgroup = match sandbox.cgroup_root() {
            Some(root) => Some(root.instance(CgroupLimits {
                memory_bytes: memory_limit_bytes,
                pids: spec.limits.nproc.saturating_add(SANDBOX_PROCESSES),
            })?),
            None => None,
        };
        let rlimits = rlimits(&spec.limits);

        let code_dir = canonical(&spec.code_dir)?;
        let (mode, code_root, uid) = match config.isolation {
            crate::Isolation::None => {
                let cgroup_procs = cgroup.as_ref().map(CgroupHandle::open_procs).transpose()?;
                let plan = UnsandboxedPlan {
                    cgroup_procs,
                    workdir: c_path(&code_dir)?,
                    rlimits,
                };
                (Mode::Unsandboxed(plan), code_dir, None)
            }
            crate::Isolation::Sandbox => {
                check_ids(sandbox, spec)?;
                let cgroup_dir = cgroup.as_ref().map(CgroupHandle::open_dir).transpose()?;
                let plan = sandboxed(sandbox, spec, &code_dir, cgroup_dir, rlimits)?;
                let uid = Some(spec.uid);
                (
                    Mode::Sandboxed(Box::new(plan)),
                    PathBuf::from(CODE_ROOT),
                    uid,
                )
            }
        };
        Ok(Plan {
            mode,
            cgroup,
            code_root,
            uid,
            memory_limit_bytes: std::sync::atomic::AtomicU64::new(memory_limit_bytes),
        })
    }

    /// Enters the sandbox; call it from `pre_exec`, in the forked child, and nowhere else.
    ///
    /// Sandboxed, this forks twice and only the innermost process returns (to `exec` the
    /// runtime); the process the parent spawned stays behind as the waiter and exits with the
    /// runtime's exit code, or `128 + N` if a signal `N` killed it (125 if the sandbox itself
    /// failed). Killing the spawned process kills the whole instance. Unsandboxed, this joins
    /// the cgroup, sets the rlimits and changes to the code directory.
    ///
    /// It only makes async-signal-safe system calls on data prepared by [`Plan::new`].
    ///
    /// # Errors
    ///
    /// The errno of the first step that failed; the step's name and path are written to the
    /// child's stderr as one line starting with `nimbus-sandbox:`.
    pub fn enter(&self) -> io::Result<()> {
        match &self.mode {
            Mode::Sandboxed(plan) => child::enter_sandbox(plan),
            Mode::Unsandboxed(plan) => child::enter_unsandboxed(plan),
        }
    }

    /// Makes `command`'s child enter `plan` between fork and exec: the plain way to spawn into
    /// a sandbox, for callers with no other work to do in the child.
    #[expect(
        unsafe_code,
        reason = "pre_exec is unsafe; Plan::enter only makes async-signal-safe system calls"
    )]
    pub fn enter_before_exec(plan: &Arc<Plan>, command: &mut std::process::Command) {
        let plan = Arc::clone(plan);
        // SAFETY: the hook runs in the forked child before exec; `Plan::enter` makes only
        // async-signal-safe system calls on data prepared in the parent, and the closure owns
        // a reference to the plan, so it outlives the call.
        unsafe {
            command.pre_exec(move || plan.enter());
        }
    }

    /// Like [`Plan::enter_before_exec`], and the child is tied to the thread that spawns it:
    /// it asks for `SIGKILL` when that thread dies (`PR_SET_PDEATHSIG`), and refuses to start
    /// (`ESRCH`) if the spawning process is already gone by then.
    #[expect(
        unsafe_code,
        reason = "pre_exec is unsafe; the hook only makes async-signal-safe system calls"
    )]
    pub fn enter_before_exec_tied_to_spawner(
        plan: &Arc<Plan>,
        command: &mut std::process::Command,
    ) {
        let plan = Arc::clone(plan);
        // Computed here, before the fork.
        let parent = nix::unistd::getpid();
        let hook = move || -> io::Result<()> {
            die_with(parent)?;
            plan.enter()
        };
        // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe
        // functions may be called. It makes two raw system calls (`prctl(PR_SET_PDEATHSIG)`
        // and `getppid`), compares a copied pid, and calls `Plan::enter`, which makes only
        // async-signal-safe system calls on data prepared in `Plan::new`; the closure owns a
        // reference to the plan, so it outlives the call. On failure it builds an `io::Error`
        // from a raw errno, which does not allocate. It takes no locks.
        unsafe {
            command.pre_exec(hook);
        }
    }

    pub(crate) fn set_adopting(&mut self) {
        if let Mode::Sandboxed(plan) = &mut self.mode {
            plan.adopt = true;
        }
    }

    /// The sandboxed plan, if it adopts its runtime.
    pub(crate) fn adopting_plan(&self) -> Option<&SandboxedPlan> {
        match &self.mode {
            Mode::Sandboxed(plan) if plan.adopt => Some(plan),
            _ => None,
        }
    }

    /// Ties a process that runs outside any sandbox (such as a zygote) to the thread that
    /// spawns it, as [`Plan::enter_before_exec_tied_to_spawner`] does for instances: `SIGKILL`
    /// when that thread dies, `ESRCH` if the spawning process is already gone.
    #[expect(
        unsafe_code,
        reason = "pre_exec is unsafe; the hook only makes async-signal-safe system calls"
    )]
    pub fn tie_to_spawner(command: &mut std::process::Command) {
        let parent = nix::unistd::getpid();
        let hook = move || die_with(parent);
        // SAFETY: the hook runs in the forked child before exec. It makes two raw system calls
        // (`prctl(PR_SET_PDEATHSIG)` and `getppid`) and compares a copied pid; on failure it
        // builds an `io::Error` from a raw errno, which does not allocate. It takes no locks.
        unsafe {
            command.pre_exec(hook);
        }
    }

    /// Lowers the instance's memory limit to `memory_mb` (never raises it): for an instance
    /// started before its function was known, with the largest limit, and claimed by a function
    /// with a smaller one. Writes `memory.max` in limit mode.
    ///
    /// # Errors
    ///
    /// [`SandboxError::WriteCgroup`] if `memory.max` cannot be written.
    pub fn lower_memory_limit(&self, memory_mb: u32) -> Result<(), SandboxError> {
        let bytes = u64::from(memory_mb) << 20;
        let before = self
            .memory_limit_bytes
            .fetch_min(bytes, std::sync::atomic::Ordering::Relaxed);
        if bytes < before
            && let Some(cgroup) = self.cgroup.as_ref().filter(|c| c.is_limited())
        {
            cgroup.set_memory_max(bytes)?;
        }
        Ok(())
    }

    /// The instance's cgroup, if cgroups are in use.
    pub fn cgroup(&self) -> Option<&CgroupHandle> {
        self.cgroup.as_ref()
    }

    /// Where the function sees its code: [`CODE_ROOT`] in the sandbox, the host code directory
    /// without. Use it for `USER_CODE_ROOT`, `PYTHONPATH` and the like; it is also the working
    /// directory `enter` sets.
    pub fn code_root(&self) -> &Path {
        &self.code_root
    }

    /// How this instance's memory is bounded.
    pub fn memory_enforcement(&self) -> MemoryEnforcement {
        match &self.cgroup {
            Some(cgroup) if cgroup.is_limited() => MemoryEnforcement::Cgroup,
            _ => MemoryEnforcement::Watchdog,
        }
    }

    /// The host pid of the process that runs the function (the one `exec`ed after `enter`),
    /// given the pid of the spawned process; `None` once it is gone. Sandboxed, it is the
    /// spawned process's grandchild.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Read`] if `/proc` cannot be read.
    pub fn runtime_pid(&self, spawned_pid: u32) -> Result<Option<u32>, SandboxError> {
        if let Mode::Unsandboxed(_) = self.mode {
            return Ok(Some(spawned_pid));
        }
        let Some(&init) = procfs::children(spawned_pid)?.first() else {
            return Ok(None);
        };
        Ok(procfs::children(init)?.first().copied())
    }

    /// The host pids of the function's processes (those running as its uid): from the
    /// instance's cgroup, or without one from the process tree of `spawned_pid`. The engine can
    /// compare their number with `Limits::nproc` to report a fork bomb (in limit mode,
    /// [`CgroupHandle::pids_limit_hits`] counts refused forks exactly).
    ///
    /// # Errors
    ///
    /// [`SandboxError::Read`] if the cgroup or `/proc` files cannot be read.
    pub fn function_pids(&self, spawned_pid: u32) -> Result<Vec<u32>, SandboxError> {
        let (pids, uid) = self.function_processes(spawned_pid)?;
        procfs::with_uid(&pids, uid)
    }

    /// Every process of the instance (the sandbox's own included) and the function's uid.
    fn function_processes(&self, spawned_pid: u32) -> Result<(Vec<u32>, u32), SandboxError> {
        let pids = match &self.cgroup {
            Some(cgroup) => cgroup.pids()?,
            None => procfs::tree(spawned_pid)?,
        };
        let uid = self.uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw());
        Ok((pids, uid))
    }

    /// Measures the instance's memory against its limit; the watchdog half of
    /// [`MemoryEnforcement::Watchdog`]. Poll it while the instance runs (every few tens of
    /// milliseconds) and kill the instance on [`MemoryStatus::Exceeded`].
    ///
    /// With a memory controller this reads `memory.current` and reports the kernel's OOM kills.
    /// Without, it sums the resident sets (`VmRSS`) of the function's processes: those in the
    /// instance's cgroup, or in the process tree of `spawned_pid` without cgroups, that run as
    /// the function's uid (the sandbox's own processes share the server's pages and are not
    /// counted).
    ///
    /// # Errors
    ///
    /// [`SandboxError::Read`] if the cgroup or `/proc` files cannot be read.
    pub fn check_memory(&self, spawned_pid: u32) -> Result<MemoryStatus, SandboxError> {
        let limit_bytes = self
            .memory_limit_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        if let Some(cgroup) = self.cgroup.as_ref().filter(|c| c.is_limited()) {
            let current = cgroup.memory_current()?.unwrap_or(0);
            if cgroup.oom_kills()?.unwrap_or(0) > 0 {
                let peak = cgroup.memory_peak()?.unwrap_or(current);
                return Ok(MemoryStatus::Exceeded {
                    used_bytes: peak,
                    limit_bytes,
                });
            }
            return Ok(MemoryStatus::Within {
                used_bytes: current,
            });
        }
        let (pids, uid) = self.function_processes(spawned_pid)?;
        let used_bytes = procfs::resident_bytes_of(&pids, uid)?;
        Ok(if used_bytes > limit_bytes {
            MemoryStatus::Exceeded {
                used_bytes,
                limit_bytes,
            }
        } else {
            MemoryStatus::Within { used_bytes }
        })
    }
}

fn check_ids(sandbox: &Sandbox, spec: &InstanceSpec) -> Result<(), SandboxError> {
    let config = sandbox.config();
    let first = u64::from(config.first_id);
    let end = first + u64::from(config.id_count);
    let inside = |id: u32| id != 0 && (first..end).contains(&u64::from(id));
    if inside(spec.uid) && inside(spec.gid) {
        Ok(())
    } else {
        Err(SandboxError::IdOutsideRange {
            uid: spec.uid,
            gid: spec.gid,
            first: config.first_id,
            end,
        })
    }
}

fn sandboxed(
    sandbox: &Sandbox,
    spec: &InstanceSpec,
    code_dir: &Path,
    cgroup_dir: Option<OwnedFd>,
    rlimits: Vec<Rlimit>,
) -> Result<SandboxedPlan, SandboxError> {
    let staging = sandbox.config().staging_dir.clone();
    let mut namespaces = child::base_namespaces();
    if spec.network == Network::Off {
        namespaces |= CloneFlags::CLONE_NEWNET;
    }
    let join_network = match &spec.network {
        Network::Joined(namespace) => Some(namespace.clone()),
        Network::Off | Network::Host => None,
    };
    Ok(SandboxedPlan {
        cgroup_dir,
        namespaces,
        staging: c_path(&staging)?,
        root_options: c_string(b"size=2m,nr_inodes=4096,mode=0755".to_vec(), &staging)?,
        put_old: c_path(&staging.join(OsStr::from_bytes(&OLD_ROOT.to_bytes()[1..])))?,
        steps: root_steps(sandbox.root_template(), spec, code_dir)?,
        loopback: spec.network == Network::Off,
        join_network,
        workdir: c_path(Path::new(CODE_ROOT))?,
        rlimits,
        uid: Uid::from_raw(spec.uid),
        gid: Gid::from_raw(spec.gid),
        filters: sandbox.filters(),
        adopt: false,
    })
}

/// In a forked child: asks for `SIGKILL` when the thread that forked it dies, and fails with
/// `ESRCH` if `parent` (its process, as it was before the fork) is already gone. Two raw
/// system calls and a comparison; no allocation, even on failure.
fn die_with(parent: nix::unistd::Pid) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    if nix::unistd::getppid() != parent {
        return Err(io::Error::from(nix::errno::Errno::ESRCH));
    }
    Ok(())
}

fn rlimits(limits: &Limits) -> Vec<Rlimit> {
    let both = |name, resource, value| Rlimit {
        name,
        resource,
        soft: value,
        hard: value,
    };
    let mut all = vec![
        both("set RLIMIT_NPROC", Resource::RLIMIT_NPROC, limits.nproc),
        both("set RLIMIT_NOFILE", Resource::RLIMIT_NOFILE, limits.nofile),
        both(
            "set RLIMIT_FSIZE",
            Resource::RLIMIT_FSIZE,
            limits.fsize_bytes,
        ),
        Rlimit {
            name: "set RLIMIT_CPU",
            resource: Resource::RLIMIT_CPU,
            soft: limits.cpu_secs,
            hard: limits.cpu_secs.saturating_add(5),
        },
        both("set RLIMIT_CORE", Resource::RLIMIT_CORE, 0),
    ];
    all.push(both(
        "set RLIMIT_DATA",
        Resource::RLIMIT_DATA,
        limits.data_bytes.unwrap_or(RLIM_INFINITY),
    ));
    all
}

/// The part of every instance's mount tree that depends only on the host (system directories,
/// `/etc`, `/dev`, `/proc`): resolved once per server, not once per instance.
#[derive(Debug, Clone)]
pub(crate) struct RootTemplate(RootBuilder);

impl RootTemplate {
    /// Inspects the host's system directories, `/etc` entries and devices.
    pub(crate) fn new() -> Result<RootTemplate, SandboxError> {
        let mut root = RootBuilder::default();
        for dir in SYSTEM_DIRS {
            root.system_entry(Path::new(dir))?;
        }

        root.dir(Path::new("/etc"))?;
        for entry in ETC_ENTRIES {
            root.etc_entry(&Path::new("/etc").join(entry))?;
        }

        root.dir(Path::new("/dev"))?;
        for device in DEVICES {
            let path = Path::new("/dev").join(device);
            if let Some(metadata) = symlink_metadata(&path)?
                && metadata.file_type().is_char_device()
            {
                root.steps.push(Step::Device {
                    path: c_path(&path)?,
                    device: metadata.rdev(),
                });
            }
        }
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            root.symlink(Path::new(target), &Path::new("/dev").join(name))?;
        }

        root.dir(Path::new("/proc"))?;
        let proc = c_path(Path::new("/proc"))?;
        root.steps.push(Step::Proc { target: proc });
        Ok(RootTemplate(root))
    }
}

/// The mount-tree steps of one instance: the template, then what is the instance's own.
fn root_steps(
    template: &RootTemplate,
    spec: &InstanceSpec,
    code_dir: &Path,
) -> Result<Vec<Step>, SandboxError> {
    let mut root = template.0.clone();
    for (host, target) in template.0.copied.clone() {
        let contents = fs::read(&host).map_err(|source| SandboxError::InspectPath {
            path: host.clone(),
            source,
        })?;
        root.file(&target, contents)?;
    }
    root.file(Path::new("/etc/passwd"), passwd(spec).into_bytes())?;
    root.file(Path::new("/etc/group"), group(spec).into_bytes())?;

    root.dir(Path::new("/tmp"))?;
    let tmp_bytes = spec.tmp_bytes.max(MIN_TMP_BYTES);
    let options = format!(
        "size={tmp_bytes},nr_inodes={},mode=1777",
        (tmp_bytes / 4096).max(1024)
    );
    root.steps.push(Step::Tmpfs {
        target: c_path(Path::new("/tmp"))?,
        options: c_string(options.into_bytes(), Path::new("/tmp"))?,
    });

    if code_dir == Path::new("/") {
        return Err(invalid(
            code_dir,
            "the host root cannot be the code directory",
        ));
    }
    root.bind(code_dir, Path::new(CODE_ROOT))?;

    for target in runtime_targets(&spec.runtime_paths)? {
        root.runtime_path(&target)?;
    }
    Ok(root.steps)
}

/// Each runtime path at its given absolute path and, if different, at its canonical path,
/// parents first.
fn runtime_targets(paths: &[PathBuf]) -> Result<Vec<PathBuf>, SandboxError> {
    let mut targets = BTreeSet::new();
    for path in paths {
        if !path.is_absolute() {
            return Err(invalid(path, "runtime paths must be absolute"));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(invalid(path, "runtime paths must not contain `..`"));
        }
        let given: PathBuf = path.components().collect();
        targets.insert(canonical(&given)?);
        targets.insert(given);
    }
    let mut targets: Vec<_> = targets.into_iter().collect();
    targets.sort_by_key(|p| p.components().count());
    Ok(targets)
}

/// Accumulates steps, creating each mountpoint's parent directories once.
#[derive(Debug, Default, Clone)]
struct RootBuilder {
    steps: Vec<Step>,
    dirs: BTreeSet<PathBuf>,
    /// Sandbox paths already visible read-only with the host's content.
    shown: Vec<PathBuf>,
    /// Small host files copied into the root at each plan, instead of one bind mount each:
    /// (resolved host path, sandbox path).
    copied: Vec<(PathBuf, PathBuf)>,
}

impl RootBuilder {
    fn dir(&mut self, path: &Path) -> Result<(), SandboxError> {
        let mut at = PathBuf::from("/");
        for component in path.components().skip(1) {
            at.push(component);
            if self.dirs.insert(at.clone()) {
                self.steps.push(Step::Dir { path: c_path(&at)? });
            }
        }
        Ok(())
    }

    fn parent_dir(&mut self, path: &Path) -> Result<(), SandboxError> {
        match path.parent() {
            Some(parent) => self.dir(parent),
            None => Ok(()),
        }
    }

    fn file(&mut self, path: &Path, contents: Vec<u8>) -> Result<(), SandboxError> {
        self.parent_dir(path)?;
        let path = c_path(path)?;
        self.steps.push(Step::File { path, contents });
        Ok(())
    }

    fn symlink(&mut self, target: &Path, path: &Path) -> Result<(), SandboxError> {
        self.parent_dir(path)?;
        self.steps.push(Step::Symlink {
            target: c_path(target)?,
            path: c_path(path)?,
        });
        Ok(())
    }

    /// Binds the host path `host` (resolved) at `target`, read-only.
    fn bind(&mut self, host: &Path, target: &Path) -> Result<(), SandboxError> {
        let source = canonical(host)?;
        let metadata = fs::metadata(&source).map_err(|source_err| SandboxError::InspectPath {
            path: source.clone(),
            source: source_err,
        })?;
        self.parent_dir(target)?;
        if metadata.is_dir() {
            self.dir(target)?;
        } else {
            self.steps.push(Step::EmptyFile {
                path: c_path(target)?,
            });
        }
        let mut under_old_root = OLD_ROOT.to_bytes().to_vec();
        under_old_root.extend_from_slice(source.as_os_str().as_bytes());
        self.steps.push(Step::Bind {
            source: c_string(under_old_root, &source)?,
            target: c_path(target)?,
        });
        Ok(())
    }

    /// `/usr` and friends: the same symlink if a symlink on the host, else a read-only bind.
    fn system_entry(&mut self, path: &Path) -> Result<(), SandboxError> {
        let Some(metadata) = symlink_metadata(path)? else {
            return Ok(());
        };
        if metadata.file_type().is_symlink() {
            let link = read_link(path)?;
            self.symlink(&link, path)?;
        } else if metadata.is_dir() {
            self.bind(path, path)?;
        } else {
            return Ok(());
        }
        self.shown.push(path.to_owned());
        Ok(())
    }

    /// An `/etc` entry: a symlink into an already shown tree stays a symlink (time zone
    /// libraries read the link's name), a small file is copied at each plan (mounts cost more
    /// to set up and tear down than a few kilobytes cost to copy), a directory is bound.
    fn etc_entry(&mut self, path: &Path) -> Result<(), SandboxError> {
        let Some(metadata) = symlink_metadata(path)? else {
            return Ok(());
        };
        if metadata.file_type().is_symlink() {
            let Ok(resolved) = fs::canonicalize(path) else {
                // A dangling link on the host: nothing to show.
                return Ok(());
            };
            if self.is_shown(&resolved) {
                let link = read_link(path)?;
                return self.symlink(&link, path);
            }
        }
        let resolved = canonical(path)?;
        let metadata = fs::metadata(&resolved).map_err(|source| SandboxError::InspectPath {
            path: resolved.clone(),
            source,
        })?;
        if metadata.is_file() && metadata.len() <= COPY_LIMIT_BYTES {
            self.copied.push((resolved, path.to_owned()));
            return Ok(());
        }
        self.bind(path, path)
    }

    fn runtime_path(&mut self, target: &Path) -> Result<(), SandboxError> {
        if target == Path::new("/") {
            return Err(invalid(target, "the host root cannot be a runtime path"));
        }
        if RESERVED.iter().any(|r| target.starts_with(r)) {
            return Err(invalid(target, "overlaps a path the sandbox provides"));
        }
        if self.is_shown(target) {
            return Ok(());
        }
        self.bind(target, target)?;
        self.shown.push(target.to_owned());
        Ok(())
    }

    fn is_shown(&self, path: &Path) -> bool {
        self.shown.iter().any(|shown| path.starts_with(shown))
    }
}

fn passwd(spec: &InstanceSpec) -> String {
    format!(
        "root:x:0:0:root:/root:/usr/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
         function:x:{}:{}:function:/tmp:/usr/sbin/nologin\n",
        spec.uid, spec.gid
    )
}

fn group(spec: &InstanceSpec) -> String {
    format!("root:x:0:\nnogroup:x:65534:\nfunction:x:{}:\n", spec.gid)
}

fn canonical(path: &Path) -> Result<PathBuf, SandboxError> {
    fs::canonicalize(path).map_err(|source| SandboxError::InspectPath {
        path: path.to_owned(),
        source,
    })
}

fn symlink_metadata(path: &Path) -> Result<Option<fs::Metadata>, SandboxError> {
    match fs::symlink_metadata(path) {
        Ok(metadata) => Ok(Some(metadata)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SandboxError::InspectPath {
            path: path.to_owned(),
            source,
        }),
    }
}

fn read_link(path: &Path) -> Result<PathBuf, SandboxError> {
    fs::read_link(path).map_err(|source| SandboxError::InspectPath {
        path: path.to_owned(),
        source,
    })
}

fn c_path(path: &Path) -> Result<CString, SandboxError> {
    c_string(path.as_os_str().as_bytes().to_vec(), path)
}

fn c_string(bytes: Vec<u8>, path: &Path) -> Result<CString, SandboxError> {
    CString::new(bytes).map_err(|_| invalid(path, "contains a NUL byte"))
}

fn invalid(path: &Path, reason: &'static str) -> SandboxError {
    SandboxError::InvalidPath {
        path: path.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;

    fn spec(code_dir: &Path) -> InstanceSpec {
        InstanceSpec {
            uid: 2_000_000_001,
            gid: 2_000_000_001,
            code_dir: code_dir.to_owned(),
            runtime_paths: Vec::new(),
            tmp_bytes: 1 << 20,
            network: Network::Off,
            memory_mb: 64,
            limits: Limits::default(),
        }
    }

    fn template() -> RootTemplate {
        RootTemplate::new().expect("the host's system directories")
    }

    fn targets(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Bind { target, .. } => Some(target.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn builds_the_root_without_secrets() {
        let code = tempfile::tempdir().expect("temporary directory");
        let steps = root_steps(&template(), &spec(code.path()), code.path()).expect("steps");
        let bound = targets(&steps);
        assert!(bound.contains(&CODE_ROOT.to_owned()));
        assert!(bound.contains(&"/usr".to_owned()));
        let devices: Vec<_> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Device { path, .. } => Some(path.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        assert!(devices.contains(&"/dev/null".to_owned()), "{devices:?}");
        let copied = steps.iter().any(|s| {
            matches!(s, Step::File { path, contents }
                if path.to_bytes() == b"/etc/ld.so.cache" && !contents.is_empty())
        });
        assert!(copied, "ld.so.cache is not copied");
        assert!(
            !bound
                .iter()
                .any(|t| t.contains("shadow") || t.contains("private"))
        );
        assert!(
            !bound
                .iter()
                .any(|t| t.starts_with("/root") || t.starts_with("/home"))
        );
    }

    #[test]
    fn every_bind_source_is_under_the_old_root() {
        let code = tempfile::tempdir().expect("temporary directory");
        let steps = root_steps(&template(), &spec(code.path()), code.path()).expect("steps");
        for each in &steps {
            if let Step::Bind { source, .. } = each {
                assert!(source.to_bytes().starts_with(b"/.oldroot/"), "{source:?}");
            }
        }
    }

    #[test]
    fn creates_parents_before_children_and_each_once() {
        let code = tempfile::tempdir().expect("temporary directory");
        let steps = root_steps(&template(), &spec(code.path()), code.path()).expect("steps");
        let dirs: Vec<_> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Dir { path } => Some(PathBuf::from(OsStr::from_bytes(path.to_bytes()))),
                _ => None,
            })
            .collect();
        let unique: BTreeSet<_> = dirs.iter().collect();
        assert_eq!(unique.len(), dirs.len());
        let var = dirs.iter().position(|d| d == Path::new("/var"));
        let user = dirs.iter().position(|d| d == Path::new(CODE_ROOT));
        assert!(var < user && var.is_some());
    }

    #[test]
    fn runtime_paths_under_system_dirs_are_not_bound_again() {
        let code = tempfile::tempdir().expect("temporary directory");
        let mut spec = spec(code.path());
        spec.runtime_paths = vec![PathBuf::from("/usr/bin")];
        let steps = root_steps(&template(), &spec, code.path()).expect("steps");
        assert!(!targets(&steps).contains(&"/usr/bin".to_owned()));
    }

    #[test]
    fn runtime_paths_are_bound_at_their_own_path() {
        let code = tempfile::tempdir().expect("temporary directory");
        let shim = tempfile::tempdir().expect("temporary directory");
        let mut spec = spec(code.path());
        spec.runtime_paths = vec![shim.path().to_owned(), shim.path().join("../x")];
        assert!(matches!(
            root_steps(&template(), &spec, code.path()),
            Err(SandboxError::InvalidPath { .. })
        ));
        spec.runtime_paths = vec![shim.path().to_owned()];
        let steps = root_steps(&template(), &spec, code.path()).expect("steps");
        let expected = shim.path().to_string_lossy().into_owned();
        assert!(targets(&steps).contains(&expected));
    }

    #[test]
    fn refuses_runtime_paths_over_reserved_ones() {
        let code = tempfile::tempdir().expect("temporary directory");
        let mut spec = spec(code.path());
        spec.runtime_paths = vec![PathBuf::from("/etc")];
        assert!(matches!(
            root_steps(&template(), &spec, code.path()),
            Err(SandboxError::InvalidPath { .. })
        ));
        spec.runtime_paths = vec![PathBuf::from("relative")];
        assert!(matches!(
            root_steps(&template(), &spec, code.path()),
            Err(SandboxError::InvalidPath { .. })
        ));
    }

    #[test]
    fn tmp_is_size_bounded_even_when_asked_for_zero() {
        let code = tempfile::tempdir().expect("temporary directory");
        let mut spec = spec(code.path());
        spec.tmp_bytes = 0;
        let steps = root_steps(&template(), &spec, code.path()).expect("steps");
        let options = steps
            .iter()
            .find_map(|s| match s {
                Step::Tmpfs { options, .. } => Some(options.to_string_lossy().into_owned()),
                _ => None,
            })
            .expect("a tmpfs step");
        assert!(options.starts_with("size=4096,"), "{options}");
        assert!(options.ends_with("mode=1777"));
    }

    #[test]
    fn generated_passwd_names_the_function_user() {
        let spec = spec(Path::new("/"));
        assert!(passwd(&spec).contains("function:x:2000000001:2000000001:"));
        assert!(group(&spec).contains("function:x:2000000001:"));
    }

    #[test]
    fn rlimits_cover_every_limit() {
        let limits = Limits {
            data_bytes: Some(1 << 30),
            ..Limits::default()
        };
        let all = rlimits(&limits);
        let data = all
            .iter()
            .find(|r| r.resource == Resource::RLIMIT_DATA)
            .expect("RLIMIT_DATA");
        assert_eq!((data.soft, data.hard), (1 << 30, 1 << 30));
        let cpu = all
            .iter()
            .find(|r| r.resource == Resource::RLIMIT_CPU)
            .expect("RLIMIT_CPU");
        assert_eq!((cpu.soft, cpu.hard), (900, 905));
        assert!(
            all.iter()
                .any(|r| r.resource == Resource::RLIMIT_CORE && r.hard == 0)
        );
        assert!(all.iter().any(|r| r.resource == Resource::RLIMIT_NPROC));
    }
}
