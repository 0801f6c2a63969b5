//! Spares: Python instances started before any function needs them, so that a cold start is a
//! claim rather than an interpreter start.
//!
//! ```text
//!  fill (at start-up, after each claim):
//!    prepare_spare: a fresh uid, an empty read-only /var/user, the largest limits, no network
//!    spawn the shim with _NIMBUS_SPARE=1 ── {"spare": true} ──> ready spare (namespace kept)
//!  claim (a cold start of a Python function without public network, sandboxed):
//!    adopt: the spare's uid becomes the function's   (refused if the function has live
//!                                                      instances under another uid)
//!    narrow: memory bound and CPU backstop lowered to the function's
//!    mount_code: the function's code, read-only, over /var/user
//!    {"assign": {env, rlimits}} ──> shim lowers rlimits, takes env, imports the handler
//!                               <── {"ready": true}: an instance of the function
//! ```
//!
//! What a spare can be trusted with: until claimed it runs only the engine's shim, already as
//! an unprivileged uid of its own with the seccomp filter on, so nothing but the code mount
//! needs privilege, and the server does that from outside. The shim can only lower its
//! rlimits, never raise them, so a spare starts with the largest a function may have.
//!
//! # Limitations
//!
//! - Python only, and only for functions without public network (those need the host's
//!   network namespace, chosen when the sandbox is made).
//! - Spares are not counted against the memory budget: each costs one idle interpreter.
//! - A function whose instances are all gone may get a new uid from a spare; its old uid is
//!   given back to the range.
//! - The interpreter has already started when the function's environment arrives: variables
//!   that Python reads only at start-up (`PYTHONHASHSEED`, `PYTHONIOENCODING`, ...) set by
//!   the function have no effect on a claimed spare, while they would on an interpreter
//!   started for the function. `PYTHONPATH` is honoured: the shim adds its entries.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nimbus_sandbox::{CodeNamespace, Isolation};
use serde_json::json;

use crate::instance::{Instance, Limits};
use crate::isolation::{self, Isolator, SPARE_MEMORY_MB};
use crate::runtime::{self, Shims};
use crate::sandbox::Spawner;
use crate::{EngineConfig, EngineError, FunctionSpec, Runtime, protocol};

/// How long a spare may take to say it is waiting.
const SPARE_START_TIMEOUT: Duration = Duration::from_secs(65);
/// The empty directory a spare sees at `/var/user` until it is claimed.
const PLACEHOLDER_DIR: &str = "spare-code";

/// The ready spares and the work of keeping their number up.
#[derive(Debug)]
pub(crate) struct Spares {
    ready: Mutex<Vec<Spare>>,
    target: usize,
    next: AtomicU64,
    filling: AtomicBool,
    closed: AtomicBool,
    placeholder: PathBuf,
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
    /// No spares yet; `config.python_spares` of them once filled. Creates the placeholder code
    /// directory under the runtime directory.
    pub(crate) fn new(config: &EngineConfig) -> Result<Spares, EngineError> {
        let placeholder = config.runtime_dir.join(PLACEHOLDER_DIR);
        let target = if config.sandbox.isolation == Isolation::Sandbox {
            usize::try_from(config.python_spares).unwrap_or(usize::MAX)
        } else {
            0
        };
        if target > 0 {
            create_placeholder(&placeholder)?;
        }
        Ok(Spares {
            ready: Mutex::new(Vec::new()),
            target,
            next: AtomicU64::new(0),
            filling: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            placeholder,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Spare>> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spares ready now.
    pub(crate) fn ready(&self) -> usize {
        self.lock().len()
    }

    /// Whether a cold start of `spec` may take a spare.
    pub(crate) fn serves(&self, spec: &FunctionSpec) -> bool {
        self.target > 0 && spec.runtime == Runtime::Python3 && !spec.network
    }

    /// Starts spares until there are as many as configured. Returns at once if another fill is
    /// under way; a spare that fails to start ends the fill (the next claim tries again).
    pub(crate) async fn fill(&self, context: Context<'_>) {
        if self.target == 0 || self.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        while !self.closed.load(Ordering::Acquire) && self.lock().len() < self.target {
            match self.start_one(&context).await {
                Ok(spare) => {
                    if self.closed.load(Ordering::Acquire) {
                        spare.instance.stop().await;
                        break;
                    }
                    self.lock().push(spare);
                }
                Err(err) => {
                    tracing::warn!(
                        error = &err as &dyn std::error::Error,
                        "cannot start a spare Python instance; cold starts start their own"
                    );
                    break;
                }
            }
        }
        self.filling.store(false, Ordering::Release);
    }

    async fn start_one(&self, context: &Context<'_>) -> Result<Spare, EngineError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let token = crate::engine::new_token().map_err(EngineError::SpawnInstance)?;
        let launch = runtime::spare_launch(context.config, context.shims, &token);
        let sandbox = context
            .isolator
            .prepare_spare(n, &self.placeholder, &launch)?;
        let limits = Limits {
            init_timeout: SPARE_START_TIMEOUT,
            memory_bytes: u64::from(SPARE_MEMORY_MB) << 20,
            log_bytes: context.config.log_limit_bytes,
        };
        let instance =
            Instance::start_spare(context.spawner, &launch, token, limits, sandbox).await?;
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
        let mut spare = self.lock().pop()?;
        let Some(sandbox) = spare.instance.sandbox_mut() else {
            spare.instance.stop().await;
            return None;
        };
        if !sandbox.adopt(spec) {
            // The function runs elsewhere under its own uid: its instances must share it.
            self.lock().push(spare);
            return None;
        }
        let prepared = sandbox.narrow(spec).and_then(|()| {
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

    /// Refuses further fills and hands back every ready spare, to be stopped.
    pub(crate) fn close(&self) -> Vec<Instance> {
        self.closed.store(true, Ordering::Release);
        self.lock().drain(..).map(|spare| spare.instance).collect()
    }
}

/// The frame that hands a spare to `spec`: the environment an instance of it starts with and
/// the rlimits that depend on the function (lowered by the shim).
fn assignment(
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
