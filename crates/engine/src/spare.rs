//! Spares: Python and Node.js instances started before any function needs them, so that a
//! cold start is a claim rather than an interpreter start.
//!
//! ```text
//!  fill (at start-up, after each cold start):
//!    prepare_spare: a fresh uid, an empty read-only /var/user, no network; Python: the largest
//!                   limits; Node.js: 128 MB (V8's heap limit is fixed at start)
//!    spawn the shim with _NIMBUS_SPARE=1 ── {"spare": true} ──> ready spare (namespace kept)
//!      (Python, where instances have a cgroup: forked by the zygote into a sandbox built
//!       without a runtime, see zygote.rs)
//!  claim (a cold start of a function the kind serves: no public network, sandboxed):
//!    adopt: the spare's uid becomes the function's   (refused if the function has live
//!                                                      instances under another uid)
//!    narrow: memory bound lowered; RLIMIT_CPU lowered from outside (prlimit)
//!    mount_code: the function's code, read-only, over /var/user
//!    {"assign": {env, rlimits}} ──> shim takes env (Python also lowers RLIMIT_DATA), imports
//!                               <── {"ready": true}     the handler: an instance of it
//! ```
//!
//! What a spare can be trusted with: until claimed it runs only the engine's shim, already as
//! an unprivileged uid of its own with the seccomp filter on, so nothing but the code mount
//! and the CPU limit needs privilege, and the server does both from outside. Limits are only
//! ever lowered, so a spare starts with the largest its kind serves.
//!
//! # Limitations
//!
//! - Python functions of any memory size, Node.js functions of 128 MB only; no custom
//!   runtimes; only functions without public network (those need the host's network
//!   namespace, chosen when the sandbox is made).
//! - Spares are not counted against the memory budget: each costs one idle interpreter.
//! - A function whose instances are all gone may get a new uid from a spare; its old uid is
//!   given back to the range.
//! - The interpreter has already started when the function's environment arrives: variables
//!   read only at start-up (`PYTHONHASHSEED`, `PYTHONIOENCODING`, `NODE_OPTIONS`, ...) set by
//!   the function have no effect on a claimed spare, while they would on an interpreter
//!   started for the function. `PYTHONPATH` and `NODE_PATH` are honoured: the shims apply them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nimbus_sandbox::{CodeNamespace, Isolation};
use serde_json::json;

use crate::instance::{Instance, Limits};
use crate::isolation::{self, Isolator, NODE_SPARE_MEMORY_MB, SPARE_MEMORY_MB};
use crate::runtime::{self, Shims};
use crate::sandbox::Spawner;
use crate::zygote::Zygote;
use crate::{EngineConfig, EngineError, FunctionSpec, Runtime, protocol};

/// How long a spare may take to say it is waiting.
const SPARE_START_TIMEOUT: Duration = Duration::from_secs(65);
/// The empty directory a spare sees at `/var/user` until it is claimed.
const PLACEHOLDER_DIR: &str = "spare-code";

/// The ready spares of every kind and the work of keeping their numbers up.
#[derive(Debug)]
pub(crate) struct Spares {
    kinds: Vec<Kind>,
    next: AtomicU64,
    closed: AtomicBool,
    /// Notified whenever a kind's fill ends ([`Spares::fills_ended`] waits on it).
    fill_ended: tokio::sync::Notify,
    placeholder: PathBuf,
    /// Forks Python instances, spares or not (`None` if it could not be started). It lives
    /// here, with the spares it mostly forks, and `Engine::start_forked` borrows it.
    zygote: tokio::sync::OnceCell<Option<Zygote>>,
    /// Set when the zygote failed (or is off): Python instances start their own interpreter.
    zygote_failed: AtomicBool,
}

/// Spares of one runtime (and, for Node.js, one memory size).
#[derive(Debug)]
struct Kind {
    runtime: Runtime,
    /// The memory size served; `None`: any (Python lowers its limits when claimed).
    memory_mb: Option<u32>,
    target: usize,
    ready: Mutex<Vec<Spare>>,
    filling: AtomicBool,
}

impl Kind {
    fn lock(&self) -> MutexGuard<'_, Vec<Spare>> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn serves(&self, spec: &FunctionSpec) -> bool {
        self.target > 0
            && spec.runtime == self.runtime
            && self.memory_mb.is_none_or(|mb| mb == spec.memory_mb)
            && !spec.network
    }

    /// The memory bound a spare of this kind starts with.
    fn start_memory_mb(&self) -> u32 {
        self.memory_mb.unwrap_or(SPARE_MEMORY_MB)
    }
}

#[derive(Debug)]
struct Spare {
    instance: Instance,
    namespace: CodeNamespace,
}

/// What filling and claiming need from the engine.
pub(crate) struct Context<'a> {
    pub(crate) config: &'a EngineConfig,
    pub(crate) shims: &'a Shims,
    pub(crate) isolator: &'a Isolator,
    pub(crate) spawner: &'a Spawner,
}

impl Spares {
    /// No spares yet; `config.python_spares` and `config.node_spares` of them once filled
    /// (sandboxed only). Creates the placeholder code directory under the runtime directory.
    pub(crate) fn new(config: &EngineConfig) -> Result<Spares, EngineError> {
        let placeholder = config.runtime_dir.join(PLACEHOLDER_DIR);
        let mut kinds = Vec::new();
        if config.sandbox.isolation == Isolation::Sandbox {
            let count = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
            kinds.push(Kind {
                runtime: Runtime::Python3,
                memory_mb: None,
                target: count(config.python_spares),
                ready: Mutex::default(),
                filling: AtomicBool::new(false),
            });
            if config.node.is_some() {
                kinds.push(Kind {
                    runtime: Runtime::Nodejs,
                    memory_mb: Some(NODE_SPARE_MEMORY_MB),
                    target: count(config.node_spares),
                    ready: Mutex::default(),
                    filling: AtomicBool::new(false),
                });
            }
            kinds.retain(|kind| kind.target > 0);
        }
        if !kinds.is_empty() {
            create_placeholder(&placeholder)?;
        }
        Ok(Spares {
            kinds,
            next: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            fill_ended: tokio::sync::Notify::new(),
            placeholder,
            zygote: tokio::sync::OnceCell::new(),
            zygote_failed: AtomicBool::new(!config.python_zygote),
        })
    }

    /// Spares ready now, of every kind.
    pub(crate) fn ready(&self) -> usize {
        self.kinds.iter().map(|kind| kind.lock().len()).sum()
    }

    /// Whether a cold start of `spec` may take a spare.
    pub(crate) fn serves(&self, spec: &FunctionSpec) -> bool {
        self.kinds.iter().any(|kind| kind.serves(spec))
    }

    /// Starts spares until each kind has as many as configured. A kind whose fill is under
    /// way is left to it; a spare that fails to start ends its kind's fill (the next cold
    /// start tries again).
    pub(crate) async fn fill(&self, context: Context<'_>) {
        // Started ahead too, so that no cold start waits for it.
        self.zygote(&context).await;
        for kind in &self.kinds {
            if kind.filling.swap(true, Ordering::AcqRel) {
                continue;
            }
            while !self.closed.load(Ordering::Acquire) && kind.lock().len() < kind.target {
                match self.start_one(&context, kind).await {
                    Ok(spare) => {
                        if self.closed.load(Ordering::Acquire) {
                            spare.instance.stop().await;
                            break;
                        }
                        kind.lock().push(spare);
                    }
                    Err(err) => {
                        tracing::warn!(
                            runtime = kind.runtime.scf_name(),
                            error = &err as &dyn std::error::Error,
                            "cannot start a spare instance; cold starts start their own"
                        );
                        break;
                    }
                }
            }
            kind.filling.store(false, Ordering::Release);
            self.fill_ended.notify_waiters();
        }
    }

    async fn start_one(&self, context: &Context<'_>, kind: &Kind) -> Result<Spare, EngineError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let token = crate::engine::new_token().map_err(EngineError::SpawnInstance)?;
        let memory_mb = kind.start_memory_mb();
        let launch = runtime::spare_launch(
            context.config,
            context.shims,
            kind.runtime,
            memory_mb,
            &token,
        )?;
        let zygote = match kind.runtime {
            Runtime::Python3 => self.zygote(context).await,
            Runtime::Nodejs | Runtime::Custom => None,
        };
        let sandbox = context.isolator.prepare_spare(
            n,
            &self.placeholder,
            &launch,
            kind.runtime,
            memory_mb,
            zygote.is_some(),
        )?;
        let zygote = zygote.filter(|_| sandbox.plan().adopts());
        let limits = Limits {
            init_timeout: SPARE_START_TIMEOUT,
            memory_bytes: u64::from(memory_mb) << 20,
            log_bytes: context.config.log_limit_bytes,
        };
        let started =
            Instance::start_spare(context.spawner, zygote, &launch, token, limits, sandbox).await;
        if let (Err(err), Some(zygote)) = (&started, zygote) {
            self.zygote_failed(zygote, err).await;
        }
        let instance = started?;
        // It just answered: its runtime is alive, and the pid names it.
        match CodeNamespace::of(instance.runtime_pid()) {
            Ok(namespace) => Ok(Spare {
                instance,
                namespace,
            }),
            Err(err) => {
                instance.stop().await;
                Err(EngineError::SpawnInstance(err))
            }
        }
    }

    /// The zygote, started on first use; `None` if it is off or failed, or instances are not
    /// sandboxed with a cgroup each (a runtime it forks is found through the cgroup only).
    pub(crate) async fn zygote(&self, context: &Context<'_>) -> Option<&Zygote> {
        if self.zygote_failed.load(Ordering::Acquire)
            || self.closed.load(Ordering::Acquire)
            || context.isolator.isolation() != Isolation::Sandbox
            || !context.isolator.has_cgroups()
        {
            return None;
        }
        let zygote = self
            .zygote
            .get_or_init(|| async {
                // The base environment every Python spare starts with, less its own token.
                let launch = runtime::spare_launch(
                    context.config,
                    context.shims,
                    Runtime::Python3,
                    SPARE_MEMORY_MB,
                    "",
                );
                let started = match launch {
                    Ok(launch) => Zygote::start(context.spawner, &launch).await,
                    Err(err) => Err(err),
                };
                started
                    .inspect(|zygote| {
                        tracing::info!(
                            pid = zygote.pid(),
                            "Python instances are forked from a zygote, whose memory they share"
                        );
                    })
                    .inspect_err(|err| {
                        tracing::warn!(
                            error = err as &dyn std::error::Error,
                            "cannot start the Python zygote; Python instances start their own interpreter"
                        );
                    })
                    .ok()
            })
            .await;
        zygote.as_ref()
    }

    /// Takes note that `zygote` could not start an instance: it is stopped, and instances
    /// start their own interpreter from now on.
    pub(crate) async fn zygote_failed(&self, zygote: &Zygote, err: &EngineError) {
        self.zygote_failed.store(true, Ordering::Release);
        zygote.stop().await;
        let output = match err {
            EngineError::InstanceExitedAtStart { output } => output.as_str(),
            _ => "",
        };
        tracing::warn!(
            error = err as &dyn std::error::Error,
            output,
            "the Python zygote could not start an instance; Python instances start their own interpreter from now on"
        );
    }

    /// Makes a spare an instance of `spec`; `None` if there is no spare to take or it cannot
    /// serve this function (then nothing was used up, or the spare was stopped), so that the
    /// caller starts an instance the usual way.
    pub(crate) async fn claim(
        &self,
        context: &Context<'_>,
        spec: &FunctionSpec,
        limits: Limits,
    ) -> Option<Result<Instance, EngineError>> {
        let started = std::time::Instant::now();
        let kind = self.kinds.iter().find(|kind| kind.serves(spec))?;
        let mut spare = kind.lock().pop()?;
        let runtime_pid = spare.instance.runtime_pid();
        let Some(sandbox) = spare.instance.sandbox_mut() else {
            spare.instance.stop().await;
            return None;
        };
        if !sandbox.adopt(spec) {
            // The function runs elsewhere under its own uid: its instances must share it.
            kind.lock().push(spare);
            return None;
        }
        let cpu = isolation::cpu_backstop_secs(spec);
        let prepared = sandbox
            .narrow(spec)
            .and_then(|()| {
                nimbus_sandbox::lower_cpu_limit(runtime_pid, cpu, cpu.saturating_add(5))
                    .map_err(EngineError::SpawnInstance)
            })
            .and_then(|()| {
                nimbus_sandbox::mount_code(&spare.namespace, &spec.code_dir)
                    .map_err(EngineError::SpawnInstance)
            });
        let assignment = prepared.and_then(|()| assignment(context.config, context.shims, spec));
        let assignment = match assignment {
            Ok(assignment) => assignment,
            Err(err) => {
                tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "cannot hand a spare to the function; starting an instance instead"
                );
                spare.instance.stop().await;
                return None;
            }
        };
        let mounted_us = started.elapsed().as_micros();
        let assigned = spare.instance.assign(&assignment, limits).await;
        tracing::debug!(
            mounted_us,
            ready_us = started.elapsed().as_micros(),
            "spare handed over"
        );
        Some(assigned)
    }

    /// Waits until no fill is under way. After [`Spares::close`], a fill stops the spare it
    /// was starting and ends: shutdown waits for that, so that no spare (and no cgroup of
    /// one) outlives the engine.
    pub(crate) async fn fills_ended(&self) {
        loop {
            let ended = self.fill_ended.notified();
            tokio::pin!(ended);
            // Registered before the check, so an end between the two is not missed.
            ended.as_mut().enable();
            if self
                .kinds
                .iter()
                .all(|kind| !kind.filling.load(Ordering::Acquire))
            {
                return;
            }
            ended.await;
        }
    }

    /// Stops the zygote, if one was started, and keeps any from starting later: call it after
    /// [`Spares::close`]. Waits for a start under way.
    pub(crate) async fn stop_zygote(&self) {
        if let Some(zygote) = self.zygote.get_or_init(|| async { None }).await {
            zygote.stop().await;
        }
    }

    /// Refuses further fills and hands back every ready spare, to be stopped.
    pub(crate) fn close(&self) -> Vec<Instance> {
        self.closed.store(true, Ordering::Release);
        self.kinds
            .iter()
            .flat_map(|kind| kind.lock().drain(..).collect::<Vec<_>>())
            .map(|spare| spare.instance)
            .collect()
    }
}

/// The frame that hands a spare to `spec`: the environment an instance of it starts with and
/// the rlimits that depend on the function (lowered by the shim).
pub(crate) fn assignment(
    config: &EngineConfig,
    shims: &Shims,
    spec: &FunctionSpec,
) -> Result<Vec<u8>, EngineError> {
    // The spare keeps its own log token; the variable this sets is dropped by the shim.
    let launch = runtime::launch(config, shims, spec, "")?;
    let cpu = isolation::cpu_backstop_secs(spec);
    protocol::encode(&json!({
        "assign": {
            "env": launch.env,
            "rlimits": {
                "RLIMIT_DATA": [launch.data_limit_bytes, launch.data_limit_bytes],
                "RLIMIT_CPU": [cpu, cpu.saturating_add(5)],
            },
        }
    }))
}

/// An empty directory every spare's uid may read.
fn create_placeholder(path: &Path) -> Result<(), EngineError> {
    use std::os::unix::fs::PermissionsExt;
    let create = std::fs::create_dir_all(path)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)));
    create.map_err(|source| EngineError::CreateRuntimeDir {
        path: path.to_owned(),
        source,
    })
}
