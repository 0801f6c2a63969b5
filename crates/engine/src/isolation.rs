//! Putting instances into the sandbox of `nimbus-sandbox`: which uid a function runs as, which
//! host paths its runtime needs inside, and the [`InstanceSpec`] of one instance.
//!
//! ```text
//! Engine::new ── Sandbox::new(config.sandbox) ── probe: an error if the sandbox is asked for
//!                                                 and this host cannot provide it
//! cold start ─── IdLease (namespace, name) ─────> uid (= gid), held while the instance lives
//!            ─── Plan::new(InstanceSpec { uid, code, runtime paths, /tmp, network, memory,
//!                                         limits }) ─> Arc<Plan>
//!            ─── spawner: pre_exec(die with the engine; plan.enter())      (see sandbox.rs)
//! running ────── the waiter is the spawned process; plan.runtime_pid() is the runtime's host
//!                pid (memory.rs reads its peak), plan.check_memory() is the watchdog
//! stop ───────── kill the process group, reap the waiter, drop the plan (blocking: it kills
//!                what is left in the instance's cgroup and removes it), release the uid
//! ```
//!
//! Uids: each function (namespace and name) runs as one uid, which is its gid too, from the
//! sandbox's range (`SandboxConfig::first_id`, `id_count`): the slot a hash of the function's
//! key points at, or the next free one after it. The map lives in memory only, so uids are per
//! server lifetime: after a restart a function usually gets the same uid again (the hash), but
//! nothing promises it, and nothing on disk belongs to these uids. Two functions never hold the
//! same uid while both have instances; a uid is taken from a function only when the range is
//! full and that function has no instance left.
//!
//! Runtime paths, bound read-only at their own path: the engine's shim directory and the
//! installation prefix of the interpreter, derived from where it lives (`<prefix>/bin/node`
//! gives `<prefix>`), both for the configured path and for the file it resolves to, which covers
//! pyenv, virtual environments and `/usr`. System directories (`/usr`, `/lib`, ...) are in every
//! sandbox anyway.
//!
//! Every limit and its default is listed in `config.rs`.
//!
//! # Limitations
//!
//! - The prefix is derived from the interpreter's location, not asked of the interpreter: one
//!   whose libraries live outside `<bin>/..` does not start inside.
//! - A custom runtime with public network reaches its runtime API on the host's loopback,
//!   where any local process that finds the port can call it too (see `runtime_api.rs`).
//! - The process count that reports a fork bomb is read after each invocation: a bomb that
//!   ended by itself before the invocation did is not reported (it was contained all the same).
//! - Servers on one host that share a uid range may give two functions the same uid; those
//!   stay apart (namespaces, private roots) but share `RLIMIT_NPROC`. Give each server a range
//!   of its own (`SandboxConfig::first_id`, `[engine] first_uid` of `nimbus serve`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nimbus_sandbox::{
    Capabilities, InstanceSpec, Isolation, Limits, MemoryEnforcement, NetNamespace, Network, Plan,
    Sandbox,
};
use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};

use crate::config::CPU_BACKSTOP_MARGIN;
use crate::pool::FunctionKey;
use crate::runtime::Launch;
use crate::{EngineConfig, EngineError, FunctionSpec, Runtime};

/// Processes of a sandboxed instance that are the sandbox's own and sit in its cgroup: init.
const SANDBOX_PROCESSES: u64 = 1;
/// The namespace of the keys spares hold their uids under: not a valid namespace name, so no
/// function can have it.
const SPARE_NAMESPACE: &str = "\0spare";
/// A Python spare's memory bound until a function claims it: the largest a function may ask
/// for.
pub(crate) const SPARE_MEMORY_MB: u32 = 3072;
/// The only memory size Node.js spares serve (SCF's default): V8's heap limit is fixed when
/// the interpreter starts.
pub(crate) const NODE_SPARE_MEMORY_MB: u32 = 128;
/// A spare's init timeout and timeout, for its CPU backstop until claimed: the largest.
const SPARE_INIT_TIMEOUT: Duration = Duration::from_secs(300);
const SPARE_TIMEOUT: Duration = Duration::from_secs(900);
/// Room left below the CPU backstop, beyond one timeout, before an instance is recycled.
const CPU_RESERVE_SECS: f64 = 5.0;

/// The engine's side of the sandbox: created once, used by every cold start.
#[derive(Debug)]
pub(crate) struct Isolator {
    sandbox: Sandbox,
    ids: Arc<Mutex<IdTable>>,
    python_paths: Vec<PathBuf>,
    node_paths: Vec<PathBuf>,
    shim_dir: PathBuf,
    tmp_bytes: u64,
    max_processes: u64,
    max_open_files: u64,
    concurrency: u64,
}

impl Isolator {
    /// Probes the host and sets the sandbox up as `config.sandbox` asks; `shim_dir` is where the
    /// engine's shims are (bound into every sandbox).
    ///
    /// # Errors
    ///
    /// [`EngineError::SetUpSandbox`] if the sandbox is asked for and cannot be provided (its
    /// source says what is missing), or if the probe itself fails.
    pub(crate) fn new(config: &EngineConfig, shim_dir: &Path) -> Result<Isolator, EngineError> {
        let sandbox = Sandbox::new(config.sandbox.clone()).map_err(EngineError::SetUpSandbox)?;
        Ok(Isolator {
            sandbox,
            ids: Arc::default(),
            python_paths: prefixes(&config.python),
            node_paths: config.node.as_deref().map(prefixes).unwrap_or_default(),
            shim_dir: shim_dir.to_owned(),
            tmp_bytes: config.tmp_bytes,
            max_processes: config.max_processes,
            max_open_files: config.max_open_files,
            concurrency: u64::from(config.default_concurrency),
        })
    }

    /// Sandbox or not.
    pub(crate) fn isolation(&self) -> Isolation {
        self.sandbox.isolation()
    }

    /// Whether each instance gets a cgroup of its own.
    pub(crate) fn has_cgroups(&self) -> bool {
        self.sandbox.cgroup_dir().is_some()
    }

    /// What the host offers, as the probe found it.
    pub(crate) fn capabilities(&self) -> &Capabilities {
        self.sandbox.capabilities()
    }

    /// How instances' memory is bounded.
    pub(crate) fn memory_enforcement(&self) -> MemoryEnforcement {
        self.sandbox.memory_enforcement()
    }

    /// The network namespace a new instance of `spec` will join, made now so that the server
    /// can listen inside it: for sandboxed custom-runtime functions without public network,
    /// whose runtime API must be reachable by the instance and by nothing else. `None` for
    /// every other function (they get a fresh namespace, or the host's, from the sandbox).
    ///
    /// # Errors
    ///
    /// [`EngineError::OpenRuntimeApi`] if the namespace cannot be made.
    pub(crate) fn private_network(
        &self,
        spec: &FunctionSpec,
    ) -> Result<Option<NetNamespace>, EngineError> {
        if self.isolation() != Isolation::Sandbox || spec.runtime != Runtime::Custom || spec.network
        {
            return Ok(None);
        }
        NetNamespace::new()
            .map(Some)
            .map_err(EngineError::OpenRuntimeApi)
    }

    /// Prepares the sandbox of a new instance of `spec`, to be started as `launch` says, in
    /// `private_network` if one was made for it ([`Isolator::private_network`]).
    ///
    /// # Errors
    ///
    /// [`EngineError::CodeNotReadable`] if the function's uid could not read its code,
    /// [`EngineError::NoFreeUid`] if the uid range is used up, [`EngineError::PrepareSandbox`]
    /// if the plan cannot be built.
    pub(crate) fn prepare(
        &self,
        spec: &FunctionSpec,
        launch: &Launch,
        private_network: Option<NetNamespace>,
        adopt: bool,
    ) -> Result<InstanceSandbox, EngineError> {
        let isolation = self.isolation();
        if isolation == Isolation::Sandbox {
            check_code_dir(&spec.code_dir)?;
        }
        let key = FunctionKey {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
        };
        let config = self.sandbox.config();
        let uid = IdLease::take(&self.ids, config.first_id, config.id_count, key)?;
        let limits = Limits {
            nproc: self.nproc(),
            nofile: self.max_open_files,
            fsize_bytes: self.tmp_bytes,
            cpu_secs: cpu_backstop_secs(spec),
            data_bytes: Some(launch.data_limit_bytes),
        };
        let mut runtime_paths = match spec.runtime {
            Runtime::Python3 => self.python_paths.clone(),
            Runtime::Nodejs => self.node_paths.clone(),
            Runtime::Custom => Vec::new(),
        };
        runtime_paths.push(self.shim_dir.clone());
        let network = match (spec.network, private_network) {
            (true, _) => Network::Host,
            (false, Some(namespace)) => Network::Joined(namespace),
            (false, None) => Network::Off,
        };
        let instance = InstanceSpec {
            uid: uid.id,
            gid: uid.id,
            code_dir: spec.code_dir.clone(),
            runtime_paths,
            tmp_bytes: self.tmp_bytes,
            network,
            memory_mb: spec.memory_mb,
            limits,
        };
        let plan = Plan::new(&self.sandbox, &instance).map_err(EngineError::PrepareSandbox)?;
        let plan = adopting_if(plan, adopt);
        Ok(self.instance_sandbox(plan, uid, limits.cpu_secs))
    }

    /// Prepares the sandbox of spare number `n` (see `spare.rs`): an instance of `runtime`
    /// with no function yet, holding a uid no function holds, an empty code directory
    /// (`placeholder`), a memory bound of `memory_mb` and the longest timeouts; a claim narrows
    /// them ([`InstanceSandbox::narrow`]).
    pub(crate) fn prepare_spare(
        &self,
        n: u64,
        placeholder: &Path,
        launch: &Launch,
        runtime: Runtime,
        memory_mb: u32,
        adopt: bool,
    ) -> Result<InstanceSandbox, EngineError> {
        check_code_dir(placeholder)?;
        let key = FunctionKey {
            namespace: SPARE_NAMESPACE.to_owned(),
            name: n.to_string(),
        };
        let config = self.sandbox.config();
        let uid = IdLease::take(&self.ids, config.first_id, config.id_count, key)?;
        let cpu_secs = (SPARE_INIT_TIMEOUT + SPARE_TIMEOUT + CPU_BACKSTOP_MARGIN).as_secs();
        let limits = Limits {
            nproc: self.nproc(),
            nofile: self.max_open_files,
            fsize_bytes: self.tmp_bytes,
            cpu_secs,
            data_bytes: Some(launch.data_limit_bytes),
        };
        let mut runtime_paths = match runtime {
            Runtime::Nodejs => self.node_paths.clone(),
            Runtime::Python3 | Runtime::Custom => self.python_paths.clone(),
        };
        runtime_paths.push(self.shim_dir.clone());
        let instance = InstanceSpec {
            uid: uid.id,
            gid: uid.id,
            code_dir: placeholder.to_owned(),
            runtime_paths,
            tmp_bytes: self.tmp_bytes,
            network: Network::Off,
            memory_mb,
            limits,
        };
        let plan = Plan::new(&self.sandbox, &instance).map_err(EngineError::PrepareSandbox)?;
        let plan = adopting_if(plan, adopt);
        Ok(self.instance_sandbox(plan, uid, cpu_secs))
    }

    fn instance_sandbox(&self, plan: Plan, uid: IdLease, cpu_secs: u64) -> InstanceSandbox {
        let open = |name: &str| {
            plan.cgroup()
                .and_then(|cgroup| std::fs::File::open(cgroup.path().join(name)).ok())
        };
        let (threads, procs, pids_events) = (
            open("cgroup.threads"),
            open("cgroup.procs"),
            open("pids.events"),
        );
        let freeze = plan.cgroup().and_then(|cgroup| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(cgroup.path().join("cgroup.freeze"))
                .ok()
        });
        InstanceSandbox {
            threads,
            procs,
            pids_events,
            freeze,
            plan: Arc::new(plan),
            _uid: uid,
            isolation: self.isolation(),
            max_processes: self.max_processes,
            cpu_secs,
            created: Instant::now(),
        }
    }

    /// `RLIMIT_NPROC`: every instance of a function runs as its uid, so the limit is the
    /// per-instance allowance times the instances a function may have. Unsandboxed, instances
    /// run as the server's user, whose count includes the server and every other function: the
    /// server's own limit stays (root is not bound by it anyway).
    fn nproc(&self) -> u64 {
        match self.isolation() {
            Isolation::Sandbox => self.max_processes.saturating_mul(self.concurrency.max(1)),
            Isolation::None => {
                getrlimit(Resource::RLIMIT_NPROC).map_or(RLIM_INFINITY, |(_, hard)| hard)
            }
        }
    }
}

/// One instance's sandbox: its plan and its claim on the function's uid.
///
/// Dropping it may block (up to two seconds, while the plan waits for the processes left in the
/// instance's cgroup to die): drop it from a blocking context, after killing the instance.
#[derive(Debug)]
pub(crate) struct InstanceSandbox {
    /// The instance cgroup's `cgroup.threads`, kept open: it is read after every invocation.
    /// Declared first, so it is closed before the plan removes the cgroup.
    threads: Option<std::fs::File>,
    /// Its `cgroup.procs`, kept open for the same reason.
    procs: Option<std::fs::File>,
    /// Its `pids.events` (with the pids controller only), kept open for the same reason.
    pids_events: Option<std::fs::File>,
    /// Its `cgroup.freeze` (cgroup v2 has it with or without controllers), kept open: idle
    /// instances are frozen and thawed through it.
    freeze: Option<std::fs::File>,
    plan: Arc<Plan>,
    // Declared after `plan`: the uid is released only once the plan has killed what was left.
    _uid: IdLease,
    isolation: Isolation,
    max_processes: u64,
    cpu_secs: u64,
    /// When the plan was made: the instance cannot have used more CPU time than the wall time
    /// since, times the CPUs it can run on.
    created: Instant,
}

impl InstanceSandbox {
    /// The plan, for `pre_exec` and the watchdog.
    pub(crate) fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// Gives a spare's uid to the function `spec`, if the function holds no uid in use by a
    /// live instance (its instances must share one uid); `false` otherwise, and nothing
    /// changes.
    pub(crate) fn adopt(&mut self, spec: &FunctionSpec) -> bool {
        let key = FunctionKey {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
        };
        self._uid.rekey(key)
    }

    /// Narrows a spare's limits to those of the function that claimed it: the memory bound
    /// and the CPU backstop (the shim lowers its own rlimits).
    pub(crate) fn narrow(&mut self, spec: &FunctionSpec) -> Result<(), EngineError> {
        self.plan
            .lower_memory_limit(spec.memory_mb)
            .map_err(EngineError::PrepareSandbox)?;
        self.cpu_secs = self.cpu_secs.min(cpu_backstop_secs(spec));
        Ok(())
    }

    /// Whether the plan's memory check replaces the engine's own watchdog: in the sandbox,
    /// where the spawned process is a waiter and the function's processes are found by uid.
    pub(crate) fn checks_memory(&self) -> bool {
        self.isolation == Isolation::Sandbox
    }

    /// The host pid of the runtime, given the spawned process's; `None` if it is already gone.
    pub(crate) fn runtime_pid(&self, spawned: u32) -> Option<u32> {
        self.plan.runtime_pid(spawned).unwrap_or_else(|err| {
            tracing::debug!(
                spawned,
                error = &err as &dyn std::error::Error,
                "cannot find runtime"
            );
            None
        })
    }

    /// Counts the function's processes and threads, and checks for refused forks.
    pub(crate) fn census(&self, spawned: u32) -> Census {
        let refused = self
            .pids_events
            .as_ref()
            .and_then(refused_forks)
            .unwrap_or(0);
        let tasks = self.tasks(spawned);
        let counted = tasks.unwrap_or(0);
        let report = (counted > self.max_processes || refused > 0).then(|| {
            format!(
                "Process limit reached: {counted} processes and threads were running in this \
                 instance, which may run {}; the instance is stopped.",
                self.max_processes
            )
        });
        Census { tasks, report }
    }

    /// Whether the instance runs other processes of the function besides its runtime (ones an
    /// invocation started and left running). `tasks` is what a [`Census`] just counted, if
    /// one did: a single task is the runtime's one thread, so nothing else can be running.
    pub(crate) fn runs_more_than_the_runtime(&self, spawned: u32, tasks: Option<u64>) -> bool {
        if tasks.is_some_and(|tasks| tasks <= 1) {
            return false;
        }
        if let Some(file) = &self.procs {
            let own = match self.isolation {
                Isolation::Sandbox => SANDBOX_PROCESSES,
                Isolation::None => 0,
            };
            return count_lines(file).is_some_and(|all| all > own + 1);
        }
        self.plan
            .function_pids(spawned)
            .is_ok_and(|pids| pids.len() > 1)
    }

    /// Freezes (`true`) or thaws every process of the instance, init included, with the
    /// cgroup v2 freezer. A freeze takes effect as each process next enters the kernel, a
    /// thaw at once.
    ///
    /// # Errors
    /// `Unsupported` when this instance has no cgroup v2 to freeze with; otherwise the
    /// error of writing `cgroup.freeze`.
    pub(crate) fn set_frozen(&self, frozen: bool) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        let Some(file) = &self.freeze else {
            return Err(std::io::ErrorKind::Unsupported.into());
        };
        let value: &[u8] = if frozen { b"1" } else { b"0" };
        file.write_at(value, 0).map(drop)
    }

    /// The function's processes and threads in this instance.
    fn tasks(&self, spawned: u32) -> Option<u64> {
        if let Some(file) = &self.threads {
            let all = count_lines(file)?;
            let own = match self.isolation {
                Isolation::Sandbox => SANDBOX_PROCESSES,
                Isolation::None => 0,
            };
            return Some(all.saturating_sub(own));
        }
        let pids = self.plan.function_pids(spawned).ok()?;
        Some(pids.iter().map(|&pid| threads_of(pid)).sum())
    }

    /// Whether the runtime process has used so much CPU time that its `RLIMIT_CPU` backstop
    /// might end it during its next invocation of up to `timeout`: the instance should then be
    /// stopped rather than kept.
    pub(crate) fn cpu_nearly_spent(&self, runtime_pid: u32, timeout: Duration) -> bool {
        // A few thousand seconds: exact as a float.
        let limit = self.cpu_secs as f64;
        let room = limit - timeout.as_secs_f64() - CPU_RESERVE_SECS;
        // Most instances are far from it: no need to read /proc after every invocation.
        let most_possible = self.created.elapsed().as_secs_f64() * cpus();
        if most_possible < room {
            return false;
        }
        cpu_seconds(runtime_pid).is_some_and(|used| used >= room)
    }
}

/// `plan`, adopting its runtime (`Plan::adopting`, a zygote's fork) if `adopt` and it has a
/// cgroup: a runtime that joined from outside is found through the cgroup only.
fn adopting_if(plan: Plan, adopt: bool) -> Plan {
    if adopt && plan.cgroup().is_some() {
        plan.adopting()
    } else {
        plan
    }
}

/// The CPU-time backstop of an instance of `spec`, in whole seconds.
pub(crate) fn cpu_backstop_secs(spec: &FunctionSpec) -> u64 {
    let total = spec.init_timeout + spec.timeout + CPU_BACKSTOP_MARGIN;
    total.as_secs() + u64::from(total.subsec_nanos() > 0)
}

/// Refuses a code directory the function's own uid could not read (it is neither owner nor in
/// the group, so only the "other" bits count).
fn check_code_dir(dir: &Path) -> Result<(), EngineError> {
    use std::os::unix::fs::PermissionsExt;
    // A directory that cannot be inspected at all is reported by the plan.
    let Ok(metadata) = std::fs::metadata(dir) else {
        return Ok(());
    };
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o005 == 0o005 {
        Ok(())
    } else {
        Err(EngineError::CodeNotReadable {
            path: dir.to_owned(),
            mode,
        })
    }
}

/// The installation prefixes of `binary`: `<prefix>/bin/<name>` gives `<prefix>`, for the path
/// as given and for the file it resolves to.
fn prefixes(binary: &Path) -> Vec<PathBuf> {
    let resolved = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_owned());
    let mut found: Vec<PathBuf> = Vec::new();
    for path in [binary, resolved.as_path()] {
        let Some(prefix) = path.parent().and_then(Path::parent) else {
            continue;
        };
        if prefix.is_absolute() && prefix != Path::new("/") && !found.iter().any(|p| p == prefix) {
            found.push(prefix.to_owned());
        }
    }
    found
}

/// The number of threads of `pid`; 0 once it is gone.
fn threads_of(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| tasks.count() as u64)
        .unwrap_or(0)
}

/// The `max` count of an open `pids.events`: the forks `pids.max` refused.
fn refused_forks(file: &std::fs::File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut text = [0_u8; 256];
    let n = file.read_at(&mut text, 0).ok()?;
    std::str::from_utf8(&text[..n])
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("max "))
        .and_then(|count| count.trim().parse().ok())
}

/// What one look at an instance's processes found ([`InstanceSandbox::census`]).
#[derive(Debug)]
pub(crate) struct Census {
    /// The function's processes and threads, if they could be counted.
    pub(crate) tasks: Option<u64>,
    /// One log line if the instance ran more processes and threads than one instance may (a
    /// fork bomb, contained by `RLIMIT_NPROC` or `pids.max`). An instance with a report must
    /// be stopped.
    pub(crate) report: Option<String>,
}

/// The lines of a kernel file read from its start through an open descriptor.
fn count_lines(file: &std::fs::File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut chunk = [0_u8; 4096];
    let (mut offset, mut lines) = (0_u64, 0_u64);
    loop {
        match file.read_at(&mut chunk, offset).ok()? {
            0 => return Some(lines),
            n => {
                lines += chunk[..n].iter().filter(|&&b| b == b'\n').count() as u64;
                offset += n as u64;
            }
        }
    }
}

/// The host's online CPUs: a function may widen its affinity, but not past these.
fn cpus() -> f64 {
    static CPUS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
            .ok()
            .flatten()
            .filter(|&n| n > 0)
            .map_or(1.0, |n| n as f64)
    })
}

/// CPU time (user and system, all threads) `pid` has used, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_cpu_ticks(&stat)?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)?;
    Some(ticks as f64 / per_second as f64)
}

/// `utime + stime` from `/proc/<pid>/stat` (fields 14 and 15, counted after the command name,
/// which may hold spaces and ends at the last `)`).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// Which function holds which uid.
#[derive(Debug, Default)]
struct IdTable {
    by_function: HashMap<FunctionKey, Holder>,
    by_id: HashMap<u32, FunctionKey>,
}

#[derive(Debug)]
struct Holder {
    id: u32,
    /// Leases (instances) alive.
    live: usize,
}

impl IdTable {
    /// A uid no function holds, looking from `start` on; when every uid is held, the uid of a
    /// function without instances, taken from it.
    fn free_id(&mut self, first: u32, count: u32, start: u64) -> Option<u32> {
        if (self.by_id.len() as u64) < u64::from(count) {
            for step in 0..u64::from(count) {
                let slot = (start + step) % u64::from(count);
                let id = u32::try_from(u64::from(first) + slot).ok()?;
                if !self.by_id.contains_key(&id) {
                    return Some(id);
                }
            }
        }
        let (key, id) = self
            .by_function
            .iter()
            .find(|(_, holder)| holder.live == 0)
            .map(|(key, holder)| (key.clone(), holder.id))?;
        self.by_function.remove(&key);
        self.by_id.remove(&id);
        Some(id)
    }
}

/// An instance's claim on its function's uid; dropping it gives the claim back.
#[derive(Debug)]
struct IdLease {
    table: Arc<Mutex<IdTable>>,
    key: FunctionKey,
    id: u32,
}

impl IdLease {
    fn take(
        table: &Arc<Mutex<IdTable>>,
        first: u32,
        count: u32,
        key: FunctionKey,
    ) -> Result<IdLease, EngineError> {
        let mut ids = lock(table);
        let id = match ids.by_function.get_mut(&key) {
            Some(holder) => {
                holder.live += 1;
                holder.id
            }
            None => {
                let start = slot_of(&key) % u64::from(count.max(1));
                let id = ids
                    .free_id(first, count, start)
                    .ok_or(EngineError::NoFreeUid { count })?;
                ids.by_id.insert(id, key.clone());
                ids.by_function.insert(key.clone(), Holder { id, live: 1 });
                id
            }
        };
        drop(ids);
        Ok(IdLease {
            table: Arc::clone(table),
            key,
            id,
        })
    }
}

impl IdLease {
    /// Moves this lease to the function `key`: its own if `key` holds no uid, or holds one
    /// with no live instance (that uid is given back). `false`, with nothing changed, if `key`
    /// has live instances under another uid.
    fn rekey(&mut self, key: FunctionKey) -> bool {
        let mut ids = lock(&self.table);
        if let Some(holder) = ids.by_function.get(&key) {
            if holder.live > 0 {
                return false;
            }
            let old = holder.id;
            ids.by_id.remove(&old);
            ids.by_function.remove(&key);
        }
        let live = ids
            .by_function
            .remove(&self.key)
            .map_or(1, |holder| holder.live);
        ids.by_id.insert(self.id, key.clone());
        ids.by_function
            .insert(key.clone(), Holder { id: self.id, live });
        drop(ids);
        self.key = key;
        true
    }
}

impl Drop for IdLease {
    fn drop(&mut self) {
        let mut ids = lock(&self.table);
        if let Some(holder) = ids.by_function.get_mut(&self.key)
            && holder.id == self.id
        {
            holder.live = holder.live.saturating_sub(1);
        }
    }
}

fn lock(table: &Mutex<IdTable>) -> MutexGuard<'_, IdTable> {
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A stable hash of a function's key (FNV-1a), so that a function tends to get the same uid
/// from one server start to the next.
fn slot_of(key: &FunctionKey) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let bytes = key
        .namespace
        .bytes()
        .chain(std::iter::once(0))
        .chain(key.name.bytes());
    bytes.fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> FunctionKey {
        FunctionKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_function_keeps_its_uid_and_others_get_their_own() {
        let table = Arc::default();
        let a1 = IdLease::take(&table, 1000, 100, key("a")).expect("uid");
        let a2 = IdLease::take(&table, 1000, 100, key("a")).expect("uid");
        let b = IdLease::take(&table, 1000, 100, key("b")).expect("uid");
        assert_eq!(a1.id, a2.id);
        assert_ne!(a1.id, b.id);
        assert!((1000..1100).contains(&a1.id) && (1000..1100).contains(&b.id));
        drop((a1, a2));
        // Without instances, a keeps its uid while the range has room.
        let again = IdLease::take(&table, 1000, 100, key("a")).expect("uid");
        let slot = u32::try_from(slot_of(&key("a")) % 100).expect("below 100");
        assert_eq!(again.id, 1000 + slot);
    }

    #[test]
    fn a_full_range_reuses_only_uids_of_functions_without_instances() {
        let table = Arc::default();
        let a = IdLease::take(&table, 5, 2, key("a")).expect("uid");
        let b = IdLease::take(&table, 5, 2, key("b")).expect("uid");
        assert!(matches!(
            IdLease::take(&table, 5, 2, key("c")),
            Err(EngineError::NoFreeUid { count: 2 })
        ));
        let b_id = b.id;
        drop(b);
        let c = IdLease::take(&table, 5, 2, key("c")).expect("b's uid, now unused");
        assert_eq!(c.id, b_id);
        assert_ne!(c.id, a.id);
        // b comes back and finds the range full of functions with instances.
        assert!(IdLease::take(&table, 5, 2, key("b")).is_err());
    }

    #[test]
    fn the_slot_hash_is_stable() {
        assert_eq!(slot_of(&key("a")), slot_of(&key("a")));
        assert_ne!(slot_of(&key("ab")), slot_of(&key("a")));
        let split = FunctionKey {
            namespace: "defaulta".into(),
            name: "b".into(),
        };
        assert_ne!(slot_of(&split), slot_of(&key("ab")));
    }

    #[test]
    fn prefixes_are_the_parents_of_bin() {
        assert_eq!(
            prefixes(Path::new("/nonexistent/py/bin/python3")),
            [PathBuf::from("/nonexistent/py")]
        );
        assert!(prefixes(Path::new("/nonexistent-bin/python3")).is_empty());
        assert!(prefixes(Path::new("python3")).is_empty());
    }

    #[test]
    fn parses_cpu_ticks_after_the_command_name() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn cpu_backstop_covers_init_timeout_and_timeout() {
        let spec = FunctionSpec {
            namespace: "default".into(),
            name: "f".into(),
            version: "$LATEST".into(),
            revision: 1,
            runtime: Runtime::Python3,
            runtime_name: String::new(),
            handler: "index.main_handler".into(),
            code_dir: "/srv/code".into(),
            memory_mb: 128,
            timeout: Duration::from_millis(3500),
            init_timeout: Duration::from_secs(65),
            environment: Vec::new(),
            region: "ap-guangzhou".into(),
            network: false,
            reserved_concurrency_mb: None,
        };
        assert_eq!(cpu_backstop_secs(&spec), 65 + 4 + 600);
    }

    #[test]
    fn refuses_code_only_its_owner_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let set = |mode| {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
        };
        set(0o700);
        assert!(matches!(
            check_code_dir(dir.path()),
            Err(EngineError::CodeNotReadable { mode: 0o700, .. })
        ));
        set(0o755);
        assert!(check_code_dir(dir.path()).is_ok());
    }

    #[test]
    fn refused_forks_are_read_from_pids_events() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pids.events");
        std::fs::write(&path, "max 7\n").expect("write");
        let file = std::fs::File::open(&path).expect("open");
        assert_eq!(refused_forks(&file), Some(7));
        // Read again from the start: the file is kept open and re-read.
        std::fs::write(&path, "max 9\n").expect("write");
        assert_eq!(refused_forks(&file), Some(9));
        std::fs::write(&path, "").expect("write");
        assert_eq!(refused_forks(&file), None);
    }
}
