//! The engine: admits an invocation, finds or starts an instance, runs the invocation on it,
//! and turns whatever happened into an [`InvocationOutcome`].
//!
//! ```text
//! invoke ─> Pools::acquire ─┬─ Exceeded, OverBudget ──────────────────> 432 at once
//!                           ├─ Warm(instance) ─┐
//!                           └─ Cold ── start ──┴─> Lease ─> Instance::run ─> outcome
//!                                                    │
//!                       reusable: back to the pool <─┴─> otherwise: stop (kill group, reap)
//! ```
//!
//! A [`Lease`] is the invocation's claim on one of its function's instance slots. It owns the
//! instance while it runs, advertises the instance's process group so that shutdown can kill it,
//! and, if the invocation is dropped half-way (its caller went away), gives the slot back and
//! lets the instance die with it.
//!
//! Background work: one reaper task stops instances idle for longer than the keep-alive; one
//! freezer, woken when an instance goes idle, freezes it once it has been idle for
//! [`EngineConfig::freeze_after`] (as SCF does; thawed by its next run); one idle watcher,
//! woken when an instance goes idle with processes an invocation left running, measures such
//! instances at the memory watchdog's pace and stops any past its limit (what holds those
//! processes where no cgroup v2 lets the freezer work). All hold only a weak reference, so
//! dropping the last [`Engine`] ends them.
//!
//! # Limitations
//!
//! - Concurrency is per function: its reserved MB over its memory size when it has a
//!   reservation ([`FunctionSpec::reserved_concurrency_mb`]), else the node-wide
//!   [`EngineConfig::default_concurrency`]; and the node's memory budget
//!   ([`EngineConfig::memory_budget_mb`]) bounds all live instances.
//! - Python and Node.js cold starts take a spare (an interpreter started ahead, see
//!   `spare.rs`) when there is one; custom runtimes start their instances on demand.
//! - A failed start (init timeout, crash while loading) is not remembered: every invocation
//!   that needs an instance tries once more, so a function whose init always fails costs one
//!   start per call (never more, never in a loop). A back-off would spare the host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use nimbus_sandbox::{Capabilities, Isolation, MemoryEnforcement};
use nix::sys::signal::Signal;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::Runtime;
use crate::instance::{Aftermath, Instance, Invocation, Limits, Run, RunEnd};
use crate::isolation::Isolator;
use crate::log::{self, Body, Report};
use crate::memory;
use crate::pool::{Admission, Demand, FunctionKey, Pools, Tag, Ticket};
use crate::protocol::{self, EventFrame, Greeting, Reply};
use crate::runtime::{self, Shims};
use crate::runtime_api;
use crate::sandbox::{self, Spawner};
use crate::spare::{self, Spares};
use crate::{
    EngineConfig, EngineError, FunctionSpec, InvocationOutcome, InvocationRequest,
    InvocationResult, scf,
};

/// Runs invocations on pools of instances. Cheap to clone: clones share the pools.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: EngineConfig,
    shims: Shims,
    isolator: Isolator,
    spawner: Spawner,
    pools: Mutex<Pools<Instance>>,
    /// Python instances started ahead of need (see `spare.rs`).
    spares: Spares,
    /// Wakes the idle watcher: an instance went idle with processes left running.
    idle_watch: Arc<Notify>,
    /// Wakes the freezer: an instance went idle.
    freezer: Arc<Notify>,
    /// The runtime pid of each running invocation, by request id: whom [`Engine::interrupt`]
    /// signals.
    running: Mutex<HashMap<String, u32>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The idle watcher and the freezer may be parked: let them see the engine is gone.
        self.idle_watch.notify_one();
        self.freezer.notify_one();
    }
}

impl Engine {
    /// Writes the runtime shims into [`EngineConfig::runtime_dir`], sets up the sandbox
    /// ([`EngineConfig::sandbox`]), starts the thread that spawns instances and the task that
    /// stops idle ones.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidConfig`] for a bad setting, [`EngineError::NoRuntime`] outside a
    /// tokio runtime, [`EngineError::CreateRuntimeDir`] or [`EngineError::WriteShim`] if the
    /// shims cannot be written, [`EngineError::SetUpSandbox`] if the sandbox is asked for and
    /// this host cannot provide it (the error's source says what is missing),
    /// [`EngineError::StartSpawner`] if no thread can be started.
    pub fn new(config: EngineConfig) -> Result<Engine, EngineError> {
        config.validate()?;
        let runtime = Handle::try_current().map_err(|_| EngineError::NoRuntime)?;
        let shims = Shims::install(&config.runtime_dir)?;
        let isolator = Isolator::new(&config, shims.dir())?;
        let spawner = Spawner::start(runtime.clone())?;
        let period = reaper_period(config.keep_alive);
        let pools = Pools::with_budget(config.memory_budget_mb);
        let spares = Spares::new(&config)?;
        let inner = Arc::new(Inner {
            config,
            shims,
            isolator,
            spawner,
            pools: Mutex::new(pools),
            spares,
            idle_watch: Arc::new(Notify::new()),
            freezer: Arc::new(Notify::new()),
            running: Mutex::default(),
        });
        runtime.spawn(reap_idle(Arc::downgrade(&inner), period));
        runtime.spawn(watch_idle(
            Arc::downgrade(&inner),
            Arc::clone(&inner.idle_watch),
        ));
        if let Some(after) = inner.config.freeze_after {
            runtime.spawn(freeze_idle(
                Arc::downgrade(&inner),
                Arc::clone(&inner.freezer),
                after,
            ));
        }
        inner.refill_spares();
        Ok(Engine { inner })
    }

    /// Runs one invocation of `spec`.
    ///
    /// Never fails as a Rust error: user failures and platform failures alike come back as
    /// [`InvocationResult::Failed`] with their SCF status code (platform failures as 500, logged
    /// here once).
    pub async fn invoke(
        &self,
        spec: &FunctionSpec,
        request: InvocationRequest,
    ) -> InvocationOutcome {
        let span = tracing::info_span!(
            "invocation",
            namespace = %spec.namespace,
            function = %spec.name,
            request_id = %request.request_id,
        );
        self.inner.invoke(spec, request).instrument(span).await
    }

    /// Sends `SIGTERM` to the runtime running the invocation `request_id`, so that its code
    /// can end it of its own accord (the invocation's caller decides how long to wait).
    /// Returns false when no such invocation is running.
    pub fn interrupt(&self, request_id: &str) -> bool {
        let pid = self.inner.running_invocations().get(request_id).copied();
        let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) else {
            return false;
        };
        // The pid is registered only while its instance runs this invocation; a runtime that
        // died meanwhile is unregistered as soon as the engine notices, before its pid could
        // plausibly be given to another process.
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM) {
            Ok(()) => true,
            Err(err) => {
                tracing::debug!(pid, %err, "cannot interrupt the invocation");
                false
            }
        }
    }

    /// Stops every idle instance of a function (after an update or delete). Invocations running
    /// on it finish, and their instances are then stopped instead of pooled.
    pub async fn retire(&self, namespace: &str, name: &str) {
        let key = FunctionKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let retired = self.inner.lock().retire(&key);
        tracing::debug!(
            namespace,
            function = name,
            count = retired.len(),
            "retiring instances"
        );
        stop_all(retired).await;
    }

    /// Stops everything: refuses new invocations, kills every instance (running invocations end
    /// as failed) and waits until all are reaped.
    pub async fn shutdown(&self) {
        let (idle, mut leases) = {
            let mut pools = self.inner.lock();
            let (idle, busy) = pools.close();
            // Killed under the lock: no lease can reap one of these meanwhile.
            for pid in busy {
                sandbox::kill_group(pid);
            }
            (idle, pools.watch_leases())
        };
        stop_all(idle).await;
        stop_all(self.inner.spares.close()).await;
        self.inner.spares.fills_ended().await;
        self.inner.spares.stop_zygote().await;
        // The sender lives in the pools this engine holds, so waiting cannot fail.
        let _ = leases.wait_for(|open| *open == 0).await;
        tracing::debug!("engine shut down");
    }

    /// Whether instances run in the sandbox ([`EngineConfig::sandbox`]).
    pub fn isolation(&self) -> Isolation {
        self.inner.isolator.isolation()
    }

    /// What the host offered the sandbox when the engine started (for the start-up log).
    pub fn capabilities(&self) -> &Capabilities {
        self.inner.isolator.capabilities()
    }

    /// How instances' memory is bounded: cgroup `memory.max`, or `RLIMIT_DATA` and a watchdog.
    pub fn memory_enforcement(&self) -> MemoryEnforcement {
        self.inner.isolator.memory_enforcement()
    }

    /// Spare Python instances ready to be claimed right now (see [`EngineConfig::python_spares`]).
    pub fn spare_instances(&self) -> usize {
        self.inner.spares.ready()
    }

    /// Instances alive right now (idle or running), all functions.
    pub fn live_instances(&self) -> usize {
        self.inner.lock().live()
    }

    /// Memory counted against [`EngineConfig::memory_budget_mb`] right now: the sum of
    /// `memory_mb` over live instances.
    pub fn live_memory_mb(&self) -> u64 {
        self.inner.lock().committed_mb()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Pools<Instance>> {
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn running_invocations(&self) -> MutexGuard<'_, HashMap<String, u32>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn invoke(
        self: &Arc<Self>,
        spec: &FunctionSpec,
        request: InvocationRequest,
    ) -> InvocationOutcome {
        let key = FunctionKey {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
        };
        let tag = tag_of(spec);
        let limit = match spec.reserved_concurrency_mb {
            Some(reserved) => reserved / spec.memory_mb.max(1),
            None => self.config.default_concurrency,
        };
        let demand = Demand {
            key: &key,
            tag: &tag,
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            memory_mb: spec.memory_mb,
        };
        let grant = self.lock().acquire(demand);
        if !grant.evicted.is_empty() {
            tracing::debug!(count = grant.evicted.len(), "stopping idle instances");
        }
        stop_all(grant.evicted).await;

        let (warm, ticket) = match (grant.admission, grant.ticket) {
            (Admission::Warm(instance), Some(ticket)) => (Some(instance), ticket),
            (Admission::Cold, Some(ticket)) => (None, ticket),
            (Admission::Exceeded, _) => {
                let message = match spec.reserved_concurrency_mb {
                    Some(reserved) => scf::reserved_message(&spec.name, reserved),
                    None => scf::concurrency_message(&spec.name, limit),
                };
                tracing::debug!("concurrency exceeded");
                return rejected(&request, scf::CONCURRENCY_EXCEEDED, &message);
            }
            (Admission::OverBudget, _) => {
                let message = scf::budget_message(&spec.name, self.config.memory_budget_mb);
                tracing::debug!("memory budget exhausted");
                return rejected(&request, scf::CONCURRENCY_EXCEEDED, &message);
            }
            _ => return self.platform_failure(spec, &request, &EngineError::ShutDown, false),
        };
        let lease = Lease {
            inner: Arc::clone(self),
            key,
            ticket,
            instance: None,
            open: true,
        };
        self.run(spec, request, lease, warm).await
    }

    async fn run(
        self: &Arc<Self>,
        spec: &FunctionSpec,
        request: InvocationRequest,
        mut lease: Lease,
        warm: Option<Instance>,
    ) -> InvocationOutcome {
        let context = runtime::context(&self.config, spec, &request.request_id);
        let frame = protocol::encode(&EventFrame {
            request_id: &request.request_id,
            event: &request.event,
            context: &context,
            time_limit_ms: spec.timeout.as_millis(),
        });
        let frame = match frame {
            Ok(frame) => frame,
            Err(err) => return self.platform_failure(spec, &request, &err, warm.is_none()),
        };
        let invocation = Invocation {
            request_id: &request.request_id,
            event: &request.event,
            frame: &frame,
            timeout: spec.timeout,
            log_limit: self.config.log_limit_bytes,
        };

        let mut cold_start = warm.is_none();
        let mut instance = warm;
        loop {
            let current = match instance.take() {
                Some(instance) => instance,
                None => match self.start(spec, &request.request_id).await {
                    Ok(instance) => instance,
                    Err(err) => return self.start_failed(spec, &request, err),
                },
            };
            let Some(attached) = lease.attach(current) else {
                lease.stop_instance().await;
                return self.platform_failure(spec, &request, &EngineError::ShutDown, cold_start);
            };
            let run = {
                let _running = Running::register(self, &request.request_id, attached.runtime_pid());
                attached.run(&invocation).await
            };
            if matches!(run.end, RunEnd::Stale) && !cold_start {
                // The idle instance died since its last invocation: start a fresh one.
                tracing::debug!("idle instance was gone, starting another");
                lease.stop_instance().await;
                cold_start = true;
                continue;
            }
            let outcome = self.conclude(spec, &request, lease, run, cold_start).await;
            if cold_start {
                // Only now: starting a spare (a fork of this server, an interpreter start)
                // would slow down the very invocation that used the last one.
                self.refill_spares();
            }
            return outcome;
        }
    }

    /// Starts spares in the background until there are as many as configured.
    fn refill_spares(self: &Arc<Self>) {
        let inner = Arc::clone(self);
        tokio::spawn(async move { inner.spares.fill(inner.spare_context()).await });
    }

    fn spare_context(&self) -> spare::Context<'_> {
        spare::Context {
            config: &self.config,
            shims: &self.shims,
            isolator: &self.isolator,
            spawner: &self.spawner,
        }
    }

    async fn start(
        self: &Arc<Self>,
        spec: &FunctionSpec,
        request_id: &str,
    ) -> Result<Instance, EngineError> {
        if self.spares.serves(spec) {
            let limits = Limits {
                init_timeout: spec.init_timeout,
                memory_bytes: u64::from(spec.memory_mb) * 1024 * 1024,
                log_bytes: self.config.log_limit_bytes,
            };
            let started = Instant::now();
            let claimed = self.spares.claim(&self.spare_context(), spec, limits).await;
            if let Some(claimed) = claimed {
                let init_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                tracing::debug!(init_us, request_id, "spare instance claimed");
                return claimed;
            }
        }
        let token = new_token().map_err(EngineError::SpawnInstance)?;
        let mut launch = runtime::launch(&self.config, &self.shims, spec, &token)?;
        let private_network = self.isolator.private_network(spec)?;
        let api = runtime_api::open_for(&self.config, spec, &mut launch, private_network.as_ref())
            .await?;
        let limits = Limits {
            init_timeout: spec.init_timeout,
            memory_bytes: u64::from(spec.memory_mb) * 1024 * 1024,
            log_bytes: self.config.log_limit_bytes,
        };
        let started = Instant::now();
        let instance = match self.start_forked(spec, &launch, &token, limits).await {
            Some(forked) => forked?,
            None => {
                let sandbox = self
                    .isolator
                    .prepare(spec, &launch, private_network, false)?;
                Instance::start(&self.spawner, &launch, token, limits, api, sandbox).await?
            }
        };
        let init_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        tracing::debug!(
            pid = instance.process_group(),
            init_us,
            request_id,
            "instance started"
        );
        Ok(instance)
    }

    /// Starts an instance of a Python function forked from the zygote, if there is one that
    /// works; `None` if there is none, or it failed (then the caller starts one the usual
    /// way, and so will every later start).
    ///
    /// The zygote is given the base environment only, never the function's (which may hold
    /// secrets, and would stay in the memory of the zygote that every later fork copies): the
    /// fork waits as a spare does, and gets the function's environment from here, as a
    /// claimed spare does.
    async fn start_forked(
        self: &Arc<Self>,
        spec: &FunctionSpec,
        launch: &runtime::Launch,
        token: &str,
        limits: Limits,
    ) -> Option<Result<Instance, EngineError>> {
        if spec.runtime != Runtime::Python3 {
            return None;
        }
        let zygote = self.spares.zygote(&self.spare_context()).await?;
        // Everything that can fail for the function's own reasons, before anything is forked.
        let prepared = runtime::spare_launch(
            &self.config,
            &self.shims,
            Runtime::Python3,
            spec.memory_mb,
            token,
        )
        .and_then(|base| {
            let assignment = spare::assignment(&self.config, &self.shims, spec)?;
            let sandbox = self.isolator.prepare(spec, launch, None, true)?;
            Ok((base, assignment, sandbox))
        });
        let (base, assignment, sandbox) = match prepared {
            Ok(prepared) => prepared,
            Err(err) => return Some(Err(err)),
        };
        if !sandbox.plan().adopts() {
            crate::instance::release(sandbox).await;
            return None;
        }
        let forked = Instance::start_forked(
            &self.spawner,
            zygote,
            &base,
            token.to_owned(),
            limits,
            sandbox,
            Greeting::Spare,
        )
        .await;
        let forked = match forked {
            Ok(forked) => forked,
            Err(err) => {
                self.spares.zygote_failed(zygote, &err).await;
                return None;
            }
        };
        Some(forked.assign(&assignment, limits).await)
    }

    async fn conclude(
        &self,
        spec: &FunctionSpec,
        request: &InvocationRequest,
        mut lease: Lease,
        run: Run,
        cold_start: bool,
    ) -> InvocationOutcome {
        let aftermath = lease.aftermath(spec.timeout);
        let reusable = run.reusable() && !aftermath.stop;
        let (output, truncated) = run.log.finish();
        let mut body = Body {
            output,
            truncated,
            notes: aftermath.note.into_iter().collect(),
        };
        let request_id = request.request_id.as_str();
        let result = match run.end {
            RunEnd::Replied(reply) if reply.status_code == Some(scf::MEMORY_LIMIT_REACHED) => {
                let trace = reply.err_msg.as_deref().and_then(stack_trace);
                memory_exceeded(spec, request_id, &mut body, trace.as_deref())
            }
            RunEnd::Replied(reply) => reply_result(request_id, reply),
            RunEnd::TimedOut => {
                let message = scf::timeout_message(spec.timeout);
                body.notes.push(message.clone());
                scf::failure(scf::TIME_LIMIT_REACHED, request_id, &message)
            }
            RunEnd::MemoryExceeded => memory_exceeded(spec, request_id, &mut body, None),
            RunEnd::Exited if memory::reports_out_of_memory(&body.output) => {
                memory_exceeded(spec, request_id, &mut body, None)
            }
            RunEnd::Exited | RunEnd::Stale => {
                body.notes.push(scf::PROCESS_EXITED_MESSAGE.to_owned());
                scf::failure(scf::PROCESS_EXITED, request_id, scf::PROCESS_EXITED_MESSAGE)
            }
            RunEnd::Broken(EngineError::FrameTooLarge(bytes)) => {
                tracing::debug!(bytes, "response frame too large");
                response_too_large(request_id)
            }
            RunEnd::Broken(err) => {
                log_platform_failure(&err);
                scf::failure(scf::INTERNAL_ERROR, request_id, "internal error")
            }
        };
        lease.finish(reusable.then(|| tag_of(spec))).await;

        let report = Report {
            duration: run.duration,
            memory_mb: spec.memory_mb,
            mem_usage_bytes: run.mem_usage_bytes,
        };
        let status_code = result.status_code();
        let duration_us = u64::try_from(run.duration.as_micros()).unwrap_or(u64::MAX);
        // Routine warm successes only at debug: the invocation record has them, and a line
        // per call cost the hot path over a tenth of the server's CPU time.
        if cold_start || status_code != 200 {
            tracing::info!(status_code, duration_us, cold_start, "invocation finished");
        } else {
            tracing::debug!(status_code, duration_us, cold_start, "invocation finished");
        }
        InvocationOutcome {
            request_id: request.request_id.clone(),
            result,
            log: log::frame(request_id, body, report, self.config.log_limit_bytes),
            duration: run.duration,
            mem_usage_bytes: run.mem_usage_bytes,
            cold_start,
        }
    }

    /// The outcome of an invocation whose instance could not be started.
    fn start_failed(
        &self,
        spec: &FunctionSpec,
        request: &InvocationRequest,
        err: EngineError,
    ) -> InvocationOutcome {
        let (status_code, message) = match &err {
            EngineError::InstanceExitedAtStart { .. } => (
                scf::CONTAINER_INIT_ERROR,
                "instance failed to start".to_owned(),
            ),
            EngineError::InstanceInitTimedOut { timeout, .. } => {
                (scf::INIT_TIMEOUT, scf::init_timeout_message(*timeout))
            }
            EngineError::InstanceMemoryExceededAtStart { .. } => (
                scf::MEMORY_LIMIT_REACHED,
                scf::memory_message(spec.memory_mb),
            ),
            EngineError::RuntimeUnavailable { .. } => (scf::CONTAINER_INIT_ERROR, err.to_string()),
            EngineError::InstanceInitFailed { message, .. } => {
                (scf::CONTAINER_INIT_ERROR, scf::init_error_message(message))
            }
            EngineError::BootstrapMissing { .. } => (
                scf::CONTAINER_INIT_ERROR,
                scf::BOOTSTRAP_MISSING_MESSAGE.to_owned(),
            ),
            _ => return self.platform_failure(spec, request, &err, true),
        };
        // The function's failure, not the platform's: no error line.
        tracing::info!(
            error = &err as &dyn std::error::Error,
            "instance failed to start"
        );
        let output = match err {
            EngineError::InstanceExitedAtStart { output }
            | EngineError::InstanceInitTimedOut { output, .. }
            | EngineError::InstanceMemoryExceededAtStart { output }
            | EngineError::InstanceInitFailed { output, .. } => output,
            _ => String::new(),
        };
        let body = Body {
            output,
            truncated: false,
            notes: vec![message.clone()],
        };
        self.failed_outcome(spec, request, status_code, &message, body, true)
    }

    /// The outcome of a failure of the platform itself, logged here.
    fn platform_failure(
        &self,
        spec: &FunctionSpec,
        request: &InvocationRequest,
        err: &EngineError,
        cold_start: bool,
    ) -> InvocationOutcome {
        log_platform_failure(err);
        let message = "internal error";
        let body = Body {
            notes: vec![message.to_owned()],
            ..Body::default()
        };
        self.failed_outcome(
            spec,
            request,
            scf::INTERNAL_ERROR,
            message,
            body,
            cold_start,
        )
    }

    fn failed_outcome(
        &self,
        spec: &FunctionSpec,
        request: &InvocationRequest,
        status_code: u16,
        message: &str,
        body: Body,
        cold_start: bool,
    ) -> InvocationOutcome {
        let report = Report {
            duration: Duration::ZERO,
            memory_mb: spec.memory_mb,
            mem_usage_bytes: 0,
        };
        let request_id = request.request_id.as_str();
        InvocationOutcome {
            request_id: request.request_id.clone(),
            result: scf::failure(status_code, request_id, message),
            log: log::frame(request_id, body, report, self.config.log_limit_bytes),
            duration: Duration::ZERO,
            mem_usage_bytes: 0,
            cold_start,
        }
    }
}

fn log_platform_failure(err: &EngineError) {
    tracing::error!(error = err as &dyn std::error::Error, "invocation failed");
}

/// The outcome of an invocation refused before it reached an instance: no log.
fn rejected(request: &InvocationRequest, status_code: u16, message: &str) -> InvocationOutcome {
    InvocationOutcome {
        request_id: request.request_id.clone(),
        result: scf::failure(status_code, &request.request_id, message),
        log: String::new(),
        duration: Duration::ZERO,
        mem_usage_bytes: 0,
        cold_start: false,
    }
}

fn reply_result(request_id: &str, reply: Reply) -> InvocationResult {
    if reply.ok {
        let ret_msg = reply.ret_msg.unwrap_or_else(|| "null".to_owned());
        if ret_msg.len() > scf::MAX_RESPONSE_BYTES {
            return response_too_large(request_id);
        }
        return InvocationResult::Success { ret_msg };
    }
    let status_code = reply.status_code.unwrap_or(430);
    match reply.err_msg {
        Some(err_msg) => InvocationResult::Failed {
            status_code,
            err_msg,
        },
        None => scf::failure(status_code, request_id, "user code exception caught"),
    }
}

/// Status 434 for an instance that ran out of memory, noted in its log; the stack trace is the
/// shim's, when the runtime reported the failed allocation itself.
fn memory_exceeded(
    spec: &FunctionSpec,
    request_id: &str,
    body: &mut Body,
    stack_trace: Option<&str>,
) -> InvocationResult {
    let message = scf::memory_message(spec.memory_mb);
    body.notes.push(message.clone());
    scf::failure_with_trace(scf::MEMORY_LIMIT_REACHED, request_id, &message, stack_trace)
}

/// The `stackTrace` of a shim's error object, if it has one.
fn stack_trace(err_msg: &str) -> Option<String> {
    let body: serde_json::Value = serde_json::from_str(err_msg).ok()?;
    body.get("stackTrace")?.as_str().map(str::to_owned)
}

fn response_too_large(request_id: &str) -> InvocationResult {
    scf::failure(
        scf::RESPONSE_TOO_LARGE,
        request_id,
        "The size of response exceeds the upper limit (6MB)",
    )
}

fn tag_of(spec: &FunctionSpec) -> Tag {
    Tag {
        version: spec.version.clone(),
        revision: spec.revision,
    }
}

/// A random token for an instance's log marker: 128 bits from the kernel, as hex.
pub(crate) fn new_token() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

async fn stop_all(instances: Vec<Instance>) {
    for instance in instances {
        instance.stop().await;
    }
}

/// How often the reaper looks for expired instances: a quarter of the keep-alive, within
/// 50 ms and 15 s, so an instance lives at most a quarter longer than its keep-alive.
fn reaper_period(keep_alive: Duration) -> Duration {
    (keep_alive / 4).clamp(Duration::from_millis(50), Duration::from_secs(15))
}

async fn reap_idle(inner: Weak<Inner>, period: Duration) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let expired = {
            let mut pools = inner.lock();
            if pools.is_closed() {
                return;
            }
            pools.expire(Instant::now(), inner.config.keep_alive)
        };
        if !expired.is_empty() {
            tracing::debug!(count = expired.len(), "stopping idle instances");
        }
        stop_all(expired).await;
    }
}

/// How often the idle watcher looks at the instances it watches (each is measured at its own
/// watchdog pace, 2 to 20 ms).
const IDLE_WATCH_PERIOD: Duration = Duration::from_millis(10);

async fn watch_idle(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        // Until no idle instance has processes left running.
        loop {
            tokio::time::sleep(IDLE_WATCH_PERIOD).await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let (over, watched) = {
                let mut pools = inner.lock();
                if pools.is_closed() {
                    return;
                }
                let now = Instant::now();
                pools.sweep_idle(|instance| instance.idle_memory_exceeded(now))
            };
            stop_all(over).await;
            if !watched {
                break;
            }
        }
    }
}

/// Freezes instances once they have been idle for `after` (see [`Instance::freeze`]). Woken
/// when an instance goes idle; sleeps until the next one is due, and waits for a wake-up again
/// when none is.
async fn freeze_idle(inner: Weak<Inner>, wake: Arc<Notify>, after: Duration) {
    loop {
        wake.notified().await;
        let mut wait = after;
        loop {
            tokio::time::sleep(wait).await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let next = {
                let mut pools = inner.lock();
                if pools.is_closed() {
                    return;
                }
                pools.freeze_idle(Instant::now(), after, Instance::freeze)
            };
            match next {
                Some(next) => wait = next,
                None => break,
            }
        }
    }
}

/// An invocation in [`Inner::running`] while it lives.
struct Running<'a> {
    inner: &'a Inner,
    request_id: &'a str,
}

impl<'a> Running<'a> {
    fn register(inner: &'a Inner, request_id: &'a str, runtime_pid: u32) -> Running<'a> {
        inner
            .running_invocations()
            .insert(request_id.to_owned(), runtime_pid);
        Running { inner, request_id }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.inner.running_invocations().remove(self.request_id);
    }
}

/// An invocation's claim on an instance slot of its function; see the module header.
#[derive(Debug)]
struct Lease {
    inner: Arc<Inner>,
    key: FunctionKey,
    ticket: Ticket,
    instance: Option<Instance>,
    open: bool,
}

impl Lease {
    /// Takes `instance` and advertises its process group. `None` if the engine is shut down
    /// (the instance stays attached, for [`Lease::stop_instance`]).
    fn attach(&mut self, instance: Instance) -> Option<&mut Instance> {
        let registered = self
            .inner
            .lock()
            .register_busy(self.ticket, instance.process_group());
        let attached = self.instance.insert(instance);
        registered.then_some(attached)
    }

    /// What the attached instance's last invocation left behind (nothing without one).
    fn aftermath(&mut self, timeout: Duration) -> Aftermath {
        self.instance
            .as_mut()
            .map(|instance| instance.aftermath(timeout))
            .unwrap_or_default()
    }

    /// Stops the attached instance, keeping the slot.
    async fn stop_instance(&mut self) {
        self.inner.lock().unregister_busy(self.ticket);
        if let Some(instance) = self.instance.take() {
            instance.stop().await;
        }
    }

    /// Ends the lease: with `Some(tag)` the instance goes back to the pool as running `tag`
    /// (unless the pool refuses it), otherwise it is stopped.
    async fn finish(mut self, reusable: Option<Tag>) {
        let instance = self.instance.take();
        let returned = match (instance, reusable) {
            (Some(instance), Some(tag)) => Some((instance, tag)),
            (Some(instance), None) => {
                self.inner.lock().unregister_busy(self.ticket);
                instance.stop().await;
                None
            }
            (None, _) => None,
        };
        self.open = false;
        let pooled = returned.is_some();
        let watched = returned
            .as_ref()
            .is_some_and(|(instance, _)| instance.watched_while_idle());
        let refused = self
            .inner
            .lock()
            .release(&self.key, self.ticket, returned, Instant::now());
        if let Some(instance) = refused {
            instance.stop().await;
        } else if pooled {
            self.inner.freezer.notify_one();
            if watched {
                self.inner.idle_watch.notify_one();
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.open {
            // The invocation was abandoned: free the slot first (so the group is no longer
            // advertised), then let the instance's drop kill it.
            self.inner
                .lock()
                .release(&self.key, self.ticket, None, Instant::now());
        }
        drop(self.instance.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Engine>();
    }

    #[test]
    fn reaper_period_is_bounded_quarter_of_keep_alive() {
        assert_eq!(
            reaper_period(Duration::from_secs(600)),
            Duration::from_secs(15)
        );
        assert_eq!(
            reaper_period(Duration::from_secs(4)),
            Duration::from_secs(1)
        );
        assert_eq!(reaper_period(Duration::ZERO), Duration::from_millis(50));
    }

    #[test]
    fn token_is_32_hex_digits() {
        let token = new_token().expect("urandom is readable");
        assert_eq!(token.len(), 32);
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn reply_without_error_object_gets_one() {
        let reply = Reply {
            ok: false,
            ret_msg: None,
            status_code: Some(437),
            err_msg: None,
        };
        let result = reply_result("r", reply);
        assert_eq!(result.status_code(), 437);
    }

    #[test]
    fn oversized_return_value_is_407() {
        let reply = Reply {
            ok: true,
            ret_msg: Some("x".repeat(scf::MAX_RESPONSE_BYTES + 1)),
            status_code: None,
            err_msg: None,
        };
        assert_eq!(reply_result("r", reply).status_code(), 407);
    }

    #[test]
    fn engine_new_outside_runtime_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = EngineConfig::new("/usr/bin/python3", dir.path());
        assert!(matches!(Engine::new(config), Err(EngineError::NoRuntime)));
    }
}
