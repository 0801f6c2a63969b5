//! One instance: a shim process hosting one function, running one invocation at a time.
//!
//! ```text
//!  start ──> wait for {"ready"} ──> idle <──────────────┐
//!                                    │ run              │ replied and marker seen
//!                                    v                  │
//!        write event frame, then read both channels and sample memory until the reply
//!          │ reply             │ control EOF       │ deadline          │ over memory_mb
//!          v                   v                   v                   v
//!    read log to marker   kill group, drain   kill group, drain   kill group, drain
//!                         log: Exited         log: TimedOut       log: MemoryExceeded
//! ```
//!
//! While waiting for a frame the instance keeps reading its log pipe, so a handler that prints
//! more than a pipe holds never blocks, and samples its process tree's memory (see `memory.rs`),
//! starting included. An instance is reusable only after a clean reply whose log marker was
//! seen and that does not report running out of memory; anything else leaves it for the engine
//! to stop.
//!
//! A custom runtime's instance has no shim: its `bootstrap` talks to a [`RuntimeApi`] instead
//! of sending frames, and writes no log markers. `custom.rs` holds its variant of starting and
//! running, and the rule that cuts its log.
//!
//! Killing never reaps: [`Instance::stop`] (or drop) does, after the engine has stopped
//! advertising the process group for [`crate::Engine::shutdown`] to kill, so a group id is never
//! signalled after its leader's pid could have been reused.
//!
//! Each instance lives in its sandbox ([`InstanceSandbox`], see `isolation.rs`). Sandboxed, the
//! spawned process is the sandbox's waiter and leads the process group, while the runtime is
//! its grandchild in a PID namespace of its own: the instance knows both pids, kills the group
//! and reads the runtime's peak memory. After each invocation [`Instance::aftermath`] looks for
//! a fork bomb (more processes than an instance may run) and for a runtime near its CPU-time
//! backstop; either stops the instance. The sandbox is released (its cgroup emptied and
//! removed, its uid given back) only after the waiter is reaped.

use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::pipe;
use tokio::process::Child;
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::isolation::{Census, InstanceSandbox};
use crate::log::{LogCollector, end_marker};
use crate::memory::{PeakMeter, Sample, Watchdog};
use crate::protocol::{FrameReader, Greeting, Hello, Reply};
use crate::runtime::Launch;
use crate::runtime_api::RuntimeApi;
use crate::sandbox::{self, Spawned, Spawner};
use crate::zygote::Zygote;
use crate::{EngineError, scf};

/// How long the log marker may trail the reply before the instance is considered broken.
const MARKER_GRACE: Duration = Duration::from_secs(2);
/// How long to keep reading the log of a killed instance for output still in the pipe.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
const READ_CHUNK_BYTES: usize = 64 * 1024;

mod custom;

/// A running instance process.
#[derive(Debug)]
pub(crate) struct Instance {
    child: Child,
    /// The spawned process (the sandbox's waiter), leader of the process group.
    group: u32,
    /// The runtime's host pid: whose peak memory is read, and what logs name.
    pid: u32,
    control: UnixStream,
    frames: FrameReader,
    log: pipe::Receiver,
    log_open: bool,
    scratch: Box<[u8]>,
    token: String,
    /// Output printed while starting, handed to the first invocation's log.
    boot_output: String,
    watchdog: Watchdog,
    /// The runtime process's peak memory; `None` if its files could not be opened.
    peak: Option<PeakMeter>,
    reaped: bool,
    /// A custom runtime's HTTP API; `None` for runtimes with a shim on `control`.
    api: Option<RuntimeApi>,
    /// `None` once released, after the instance was reaped.
    sandbox: Option<InstanceSandbox>,
    /// The last invocation's count of processes (with its fork-bomb report), taken by
    /// [`Instance::aftermath`]: taken once, before a kill if there is one.
    census: Option<Census>,
    /// While idle with processes an invocation left running: when their memory is measured
    /// next ([`Instance::idle_memory_exceeded`]). `None` when the runtime runs alone.
    idle_sample_at: Option<Instant>,
    /// Frozen while idle ([`Instance::freeze`]); thawed before it runs again.
    frozen: bool,
}

/// What an invocation left behind, besides its outcome.
#[derive(Debug, Default)]
pub(crate) struct Aftermath {
    /// A line for the invocation's log.
    pub(crate) note: Option<String>,
    /// The instance must be stopped even if the invocation ended cleanly.
    pub(crate) stop: bool,
}

/// What an instance may use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// How long starting (and loading the handler) may take.
    pub(crate) init_timeout: Duration,
    /// Resident memory of the whole process tree.
    pub(crate) memory_bytes: u64,
    /// Output kept from starting.
    pub(crate) log_bytes: usize,
}

/// What one invocation needs from the engine.
#[derive(Debug)]
pub(crate) struct Invocation<'a> {
    pub(crate) request_id: &'a str,
    /// The event's JSON text (what a custom runtime's `next` returns).
    pub(crate) event: &'a str,
    /// The encoded event frame.
    pub(crate) frame: &'a [u8],
    pub(crate) timeout: Duration,
    pub(crate) log_limit: usize,
}

/// How a run ended.
#[derive(Debug)]
pub(crate) enum RunEnd {
    /// The shim answered.
    Replied(Reply),
    /// The control channel closed during the run.
    Exited,
    /// The deadline passed; the instance was killed.
    TimedOut,
    /// The process tree used more memory than allowed; the instance was killed.
    MemoryExceeded,
    /// The channel failed or the shim broke the protocol; the instance was killed.
    Broken(EngineError),
    /// The event could not even be delivered: the instance had died while idle, or could not
    /// be thawed.
    Stale,
}

/// Result of [`Instance::run`].
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) end: RunEnd,
    pub(crate) log: LogCollector,
    pub(crate) duration: Duration,
    pub(crate) mem_usage_bytes: u64,
}

impl Run {
    /// Whether the instance may serve another invocation.
    pub(crate) fn reusable(&self) -> bool {
        let clean = matches!(
            &self.end,
            RunEnd::Replied(reply) if reply.status_code != Some(scf::MEMORY_LIMIT_REACHED)
        );
        clean && self.log.marker_seen()
    }
}

enum Wait {
    Deadline,
    MemoryExceeded,
    Failed(EngineError),
}

impl Instance {
    /// Starts an instance and waits until its shim (or, with `api`, its custom runtime) says
    /// it is ready.
    ///
    /// On failure the process is already stopped.
    pub(crate) async fn start(
        spawner: &Spawner,
        launch: &Launch,
        token: String,
        limits: Limits,
        api: Option<RuntimeApi>,
        sandbox: InstanceSandbox,
    ) -> Result<Instance, EngineError> {
        Instance::start_expecting(
            spawner,
            launch,
            token,
            limits,
            api,
            sandbox,
            Greeting::Ready,
        )
        .await
    }

    /// Starts a spare (see `spare.rs`): a shim that waits for a function. With a `zygote`,
    /// the sandbox must adopt its runtime (`Plan::adopting`), which the zygote forks.
    pub(crate) async fn start_spare(
        spawner: &Spawner,
        zygote: Option<&Zygote>,
        launch: &Launch,
        token: String,
        limits: Limits,
        sandbox: InstanceSandbox,
    ) -> Result<Instance, EngineError> {
        match zygote {
            Some(zygote) => {
                Instance::start_forked(
                    spawner,
                    zygote,
                    launch,
                    token,
                    limits,
                    sandbox,
                    Greeting::Spare,
                )
                .await
            }
            None => {
                Instance::start_expecting(
                    spawner,
                    launch,
                    token,
                    limits,
                    None,
                    sandbox,
                    Greeting::Spare,
                )
                .await
            }
        }
    }

    /// Starts a Python instance forked by `zygote` into the sandbox, which must adopt its
    /// runtime (`Plan::adopting`), and waits until it greets as `greeting` says.
    pub(crate) async fn start_forked(
        spawner: &Spawner,
        zygote: &Zygote,
        launch: &Launch,
        token: String,
        limits: Limits,
        sandbox: InstanceSandbox,
        greeting: Greeting,
    ) -> Result<Instance, EngineError> {
        match zygote.spawn(spawner, launch, sandbox.plan()).await {
            Ok((spawned, pid)) => {
                Instance::started(spawned, Some(pid), token, limits, None, sandbox, greeting).await
            }
            Err(err) => {
                release(sandbox).await;
                Err(err)
            }
        }
    }

    /// Hands a spare to a function: its sandbox already holds the function's code and uid.
    /// Sends the assignment and waits until the shim has loaded the handler, as a start would.
    ///
    /// On failure the process is already stopped.
    pub(crate) async fn assign(
        mut self,
        assignment: &[u8],
        limits: Limits,
    ) -> Result<Instance, EngineError> {
        self.watchdog.set_limit(limits.memory_bytes);
        let sent = self.control.write_all(assignment).await;
        let ready = match sent {
            Ok(()) => {
                self.await_ready(limits.init_timeout, limits.log_bytes, Greeting::Ready)
                    .await
            }
            Err(err) => Err(EngineError::Control(err)),
        };
        match ready {
            Ok(()) => Ok(self),
            Err(err) => {
                self.stop().await;
                Err(err)
            }
        }
    }

    /// The sandbox, while the instance has one.
    pub(crate) fn sandbox_mut(&mut self) -> Option<&mut InstanceSandbox> {
        self.sandbox.as_mut()
    }

    /// The runtime's pid (the shim's), as the host sees it.
    pub(crate) fn runtime_pid(&self) -> u32 {
        self.pid
    }

    async fn start_expecting(
        spawner: &Spawner,
        launch: &Launch,
        token: String,
        limits: Limits,
        api: Option<RuntimeApi>,
        sandbox: InstanceSandbox,
        greeting: Greeting,
    ) -> Result<Instance, EngineError> {
        match spawner.spawn(launch, sandbox.plan()).await {
            Ok(spawned) => {
                Instance::started(spawned, None, token, limits, api, sandbox, greeting).await
            }
            Err(err) => {
                release(sandbox).await;
                Err(err)
            }
        }
    }

    /// Waits until a spawned instance says it is ready; `runtime_pid` where the runtime is not
    /// the one the sandbox started (a zygote's).
    async fn started(
        spawned: Spawned,
        runtime_pid: Option<u32>,
        token: String,
        limits: Limits,
        api: Option<RuntimeApi>,
        sandbox: InstanceSandbox,
        greeting: Greeting,
    ) -> Result<Instance, EngineError> {
        let Spawned {
            child,
            control,
            log,
        } = spawned;
        let Some(group) = child.id() else {
            release(sandbox).await;
            return Err(EngineError::InstanceExitedAtStart {
                output: String::new(),
            });
        };
        // `spawn` returns once the runtime has exec'ed, so it can be found now.
        let pid = runtime_pid.unwrap_or_else(|| sandbox.runtime_pid(group).unwrap_or(group));
        let watchdog = if sandbox.checks_memory() {
            Watchdog::for_sandbox(sandbox.plan().clone(), group, limits.memory_bytes)
        } else {
            Watchdog::new(pid, limits.memory_bytes)
        };
        let mut instance = Instance {
            child,
            group,
            pid,
            control,
            frames: FrameReader::default(),
            log,
            log_open: true,
            scratch: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
            token,
            boot_output: String::new(),
            watchdog,
            peak: PeakMeter::open(pid)
                .inspect_err(|err| tracing::debug!(pid, %err, "cannot watch peak memory"))
                .ok(),
            reaped: false,
            api,
            sandbox: Some(sandbox),
            census: None,
            idle_sample_at: None,
            frozen: false,
        };
        let ready = if instance.api.is_some() {
            instance
                .await_runtime_ready(limits.init_timeout, limits.log_bytes)
                .await
        } else {
            instance
                .await_ready(limits.init_timeout, limits.log_bytes, greeting)
                .await
        };
        match ready {
            Ok(()) => Ok(instance),
            Err(err) => {
                instance.stop().await;
                Err(err)
            }
        }
    }

    async fn await_ready(
        &mut self,
        init_timeout: Duration,
        log_limit: usize,
        greeting: Greeting,
    ) -> Result<(), EngineError> {
        let deadline = Instant::now() + init_timeout;
        // An empty marker never matches: everything printed while starting is kept.
        let mut boot = LogCollector::new(Vec::new(), log_limit);
        let frame = self.next_frame(deadline, &mut boot).await;
        if matches!(frame, Ok(Some(_))) {
            // The shim prints what loading printed before it says it is ready, but the frame
            // may be read first: keep that output for the first invocation's log rather than
            // discard it as output between invocations.
            self.read_pending_output(&mut boot);
        } else {
            self.kill();
            self.drain_log(&mut boot).await;
        }
        self.boot_output = boot.finish().0;
        let mut output = || std::mem::take(&mut self.boot_output);
        match frame {
            Ok(Some(bytes)) => {
                let hello: Hello =
                    serde_json::from_slice(&bytes).map_err(EngineError::MalformedFrame)?;
                let expected = match greeting {
                    Greeting::Ready => hello.ready,
                    Greeting::Spare => hello.spare,
                };
                if expected {
                    Ok(())
                } else {
                    Err(EngineError::InstanceExitedAtStart { output: output() })
                }
            }
            Ok(None) => Err(EngineError::InstanceExitedAtStart { output: output() }),
            Err(Wait::Deadline) => Err(EngineError::InstanceInitTimedOut {
                timeout: init_timeout,
                output: output(),
            }),
            Err(Wait::MemoryExceeded) => {
                Err(EngineError::InstanceMemoryExceededAtStart { output: output() })
            }
            Err(Wait::Failed(err)) => Err(err),
        }
    }

    /// The process group id: the spawned process's pid (sandboxed, the waiter's; killing it
    /// kills the whole instance).
    pub(crate) fn process_group(&self) -> u32 {
        self.group
    }

    /// What the last invocation left behind: a fork bomb (reported once, in a line for its
    /// log) and whether the instance must be stopped, for that or because its runtime is near
    /// its CPU-time backstop (`timeout` is the function's).
    pub(crate) fn aftermath(&mut self, timeout: Duration) -> Aftermath {
        self.inspect_processes();
        let (note, tasks) = match self.census.take() {
            Some(census) => (census.report, census.tasks),
            None => (None, None),
        };
        let worn_out = !self.reaped
            && self
                .sandbox
                .as_ref()
                .is_some_and(|sandbox| sandbox.cpu_nearly_spent(self.pid, timeout));
        if worn_out {
            tracing::debug!(pid = self.pid, "runtime near its CPU-time limit, recycling");
        }
        // Processes left running keep using memory while the instance waits: watch them.
        let left_running = !self.reaped
            && self
                .sandbox
                .as_ref()
                .is_some_and(|sandbox| sandbox.runs_more_than_the_runtime(self.group, tasks));
        self.idle_sample_at = left_running.then(|| self.watchdog.first_sample_at().into());
        Aftermath {
            stop: note.is_some() || worn_out,
            note,
        }
    }

    /// Whether the instance must be stopped while idle because the processes an invocation
    /// left running took it past its memory limit. Measures only instances that have such
    /// processes ([`Instance::aftermath`] finds them), each at the watchdog's pace; `None` for
    /// an instance not watched.
    pub(crate) fn idle_memory_exceeded(&mut self, now: Instant) -> Option<bool> {
        let at = self.idle_sample_at?;
        if now < at {
            return Some(false);
        }
        match self.watchdog.sample() {
            Sample::Within(pause) => {
                // Once those processes are gone, the runtime alone cannot pass its limit.
                let still = self
                    .sandbox
                    .as_ref()
                    .is_some_and(|sandbox| sandbox.runs_more_than_the_runtime(self.group, None));
                self.idle_sample_at = still.then_some(now + pause);
                Some(false)
            }
            Sample::Exceeded { resident_bytes } => {
                tracing::warn!(
                    pid = self.pid,
                    resident_mb = resident_bytes >> 20,
                    "processes left running by an invocation passed the function's memory \
                     limit while the instance was idle; stopping it"
                );
                Some(true)
            }
        }
    }

    /// Freezes an idle instance, every process of it: what an invocation left running makes
    /// no progress (and uses no CPU) until the next invocation, as on SCF. `false` when it
    /// cannot be frozen (no cgroup v2 on this host); `true` if it is frozen, now or before.
    pub(crate) fn freeze(&mut self) -> bool {
        if self.frozen || self.reaped {
            return self.frozen;
        }
        let Some(sandbox) = &self.sandbox else {
            return false;
        };
        match sandbox.set_frozen(true) {
            Ok(()) => self.frozen = true,
            // Nothing to freeze with: expected on hosts without cgroup v2.
            Err(err) if err.kind() == std::io::ErrorKind::Unsupported => {}
            Err(err) => tracing::debug!(pid = self.pid, %err, "cannot freeze an idle instance"),
        }
        self.frozen
    }

    /// Thaws a frozen instance, before it runs an invocation. `false` if it was frozen and
    /// the thaw failed: it may still be frozen, and would only run into the timeout.
    pub(crate) fn thaw(&mut self) -> bool {
        if !self.frozen {
            return true;
        }
        let thawed = match &self.sandbox {
            Some(sandbox) => sandbox.set_frozen(false),
            None => Err(std::io::ErrorKind::NotFound.into()),
        };
        match thawed {
            Ok(()) => {
                self.frozen = false;
                true
            }
            Err(err) => {
                tracing::warn!(pid = self.pid, %err, "cannot thaw a frozen instance; replacing it");
                false
            }
        }
    }

    /// Whether [`Instance::idle_memory_exceeded`] measures this instance while it is idle.
    pub(crate) fn watched_while_idle(&self) -> bool {
        self.idle_sample_at.is_some()
    }

    /// Counts the instance's processes once per invocation, while they still run.
    fn inspect_processes(&mut self) {
        if self.census.is_some() || self.reaped {
            return;
        }
        self.census = self
            .sandbox
            .as_ref()
            .map(|sandbox| sandbox.census(self.group));
    }

    /// Runs one invocation. Never leaves the instance half-way through a protocol exchange: if
    /// it cannot finish cleanly it kills the process group (the caller then stops it).
    pub(crate) async fn run(&mut self, invocation: &Invocation<'_>) -> Run {
        if !self.thaw() {
            // As good as dead: the engine replaces an idle instance that cannot take the
            // event (as it does one that died while idle).
            let log = LogCollector::new(Vec::new(), invocation.log_limit);
            return self
                .killed(RunEnd::Stale, log, std::time::Instant::now(), 0)
                .await;
        }
        if self.api.is_some() {
            return self.run_custom(invocation).await;
        }
        let marker = end_marker(&self.token, invocation.request_id);
        let mut log = LogCollector::new(marker, invocation.log_limit);
        log.push(std::mem::take(&mut self.boot_output).as_bytes());
        self.discard_stale_output();
        self.start_measuring();

        let started = std::time::Instant::now();
        let deadline = Instant::from_std(started) + invocation.timeout;
        match timeout_at(deadline, self.control.write_all(invocation.frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) if instance_gone(&err) => {
                return self.killed(RunEnd::Stale, log, started, 0).await;
            }
            Ok(Err(err)) => {
                let end = RunEnd::Broken(EngineError::Control(err));
                return self.killed(end, log, started, 0).await;
            }
            Err(_) => return self.stopped_at_peak(RunEnd::TimedOut, log, started).await,
        }

        match self.next_frame(deadline, &mut log).await {
            Ok(Some(bytes)) => self.replied(&bytes, log, started).await,
            Ok(None) => self.killed(RunEnd::Exited, log, started, 0).await,
            Err(Wait::Deadline) => self.stopped_at_peak(RunEnd::TimedOut, log, started).await,
            Err(Wait::MemoryExceeded) => {
                self.stopped_at_peak(RunEnd::MemoryExceeded, log, started)
                    .await
            }
            Err(Wait::Failed(err)) => self.killed(RunEnd::Broken(err), log, started, 0).await,
        }
    }

    async fn replied(
        &mut self,
        bytes: &[u8],
        mut log: LogCollector,
        started: std::time::Instant,
    ) -> Run {
        let duration = started.elapsed();
        let mem_usage_bytes = self.peak_memory();
        let reply = match serde_json::from_slice::<Reply>(bytes) {
            Ok(reply) => reply,
            Err(err) => {
                let end = RunEnd::Broken(EngineError::MalformedFrame(err));
                return self.killed(end, log, started, mem_usage_bytes).await;
            }
        };
        self.read_log_to_marker(&mut log).await;
        Run {
            end: RunEnd::Replied(reply),
            log,
            duration,
            mem_usage_bytes,
        }
    }

    /// Kills an instance that is still alive, reporting its peak memory.
    async fn stopped_at_peak(
        &mut self,
        end: RunEnd,
        log: LogCollector,
        started: std::time::Instant,
    ) -> Run {
        let mem_usage_bytes = self.peak_memory();
        self.killed(end, log, started, mem_usage_bytes).await
    }

    /// Kills the process group and collects what is still in the log pipe.
    async fn killed(
        &mut self,
        end: RunEnd,
        mut log: LogCollector,
        started: std::time::Instant,
        mem_usage_bytes: u64,
    ) -> Run {
        let duration = started.elapsed();
        // Before the kill, while a fork bomb's processes can still be counted.
        self.inspect_processes();
        self.kill();
        self.drain_log(&mut log).await;
        Run {
            end,
            log,
            duration,
            mem_usage_bytes,
        }
    }

    /// Waits for the next control frame while feeding the log pipe into `log` and watching
    /// memory.
    async fn next_frame(
        &mut self,
        deadline: Instant,
        log: &mut LogCollector,
    ) -> Result<Option<Vec<u8>>, Wait> {
        let mut sample_at = Instant::from_std(self.watchdog.first_sample_at());
        loop {
            tokio::select! {
                biased;
                frame = self.frames.next(&mut self.control) => {
                    return frame.map_err(Wait::Failed);
                }
                read = self.log.read(&mut self.scratch), if self.log_open => {
                    self.take_log_read(read, log);
                }
                () = sleep_until(sample_at) => match self.watchdog.sample() {
                    Sample::Within(pause) => sample_at = Instant::now() + pause,
                    Sample::Exceeded { resident_bytes } => {
                        tracing::debug!(pid = self.pid, resident_bytes, "memory limit exceeded");
                        return Err(Wait::MemoryExceeded);
                    }
                },
                () = sleep_until(deadline) => return Err(Wait::Deadline),
            }
        }
    }

    fn take_log_read(&mut self, read: std::io::Result<usize>, log: &mut LogCollector) {
        match read {
            Ok(0) => self.log_open = false,
            Ok(n) => log.push(&self.scratch[..n]),
            Err(err) => {
                tracing::debug!(pid = self.pid, %err, "cannot read instance log");
                self.log_open = false;
            }
        }
    }

    /// Reads the log until this invocation's end marker, for a short while at most.
    async fn read_log_to_marker(&mut self, log: &mut LogCollector) {
        self.read_log_while(log, MARKER_GRACE, |log| !log.marker_seen())
            .await;
    }

    /// Reads what is left in the log pipe of a killed instance.
    async fn drain_log(&mut self, log: &mut LogCollector) {
        self.read_log_while(log, DRAIN_GRACE, |_| true).await;
    }

    async fn read_log_while(
        &mut self,
        log: &mut LogCollector,
        grace: Duration,
        more: impl Fn(&LogCollector) -> bool,
    ) {
        let deadline = Instant::now() + grace;
        while self.log_open && more(log) {
            tokio::select! {
                read = self.log.read(&mut self.scratch) => self.take_log_read(read, log),
                () = sleep_until(deadline) => return,
            }
        }
    }

    /// Reads what the log pipe holds right now, without waiting. The read goes to the
    /// descriptor itself: tokio's cached readiness may lag behind bytes written just before a
    /// frame.
    fn read_pending_output(&mut self, log: &mut LogCollector) {
        while self.log_open {
            match nix::unistd::read(self.log.as_raw_fd(), &mut self.scratch) {
                Ok(0) => self.log_open = false,
                Ok(n) => log.push(&self.scratch[..n]),
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
        }
    }

    /// Drops output that arrived between invocations (see `log.rs`, Limitations).
    fn discard_stale_output(&mut self) {
        let mut discarded = 0;
        while self.log_open {
            match self.log.try_read(&mut self.scratch) {
                Ok(0) => self.log_open = false,
                Ok(n) => discarded += n,
                Err(_) => break,
            }
        }
        if discarded > 0 {
            tracing::debug!(
                pid = self.pid,
                discarded,
                "dropped output between invocations"
            );
        }
    }

    /// Starts an invocation's memory measurement: the main process's peak and the watchdog's.
    fn start_measuring(&mut self) {
        if let Some(Err(err)) = self.peak.as_ref().map(PeakMeter::reset) {
            tracing::debug!(pid = self.pid, %err, "cannot reset peak memory");
        }
        self.watchdog.start_invocation();
    }

    /// The larger of the main process's high-water mark and the watchdog's largest sample of
    /// the tree, since the invocation started.
    fn peak_memory(&mut self) -> u64 {
        let main = match self.peak.as_mut().map(PeakMeter::peak_bytes) {
            Some(Ok(bytes)) => bytes,
            Some(Err(err)) => {
                tracing::debug!(pid = self.pid, %err, "cannot read peak memory");
                0
            }
            None => 0,
        };
        main.max(self.watchdog.peak_bytes())
    }

    fn kill(&self) {
        if !self.reaped {
            sandbox::kill_group(self.group);
        }
    }

    /// Kills the process group, reaps the instance's process and releases its sandbox.
    pub(crate) async fn stop(mut self) {
        self.kill();
        if let Err(err) = self.child.wait().await {
            tracing::warn!(pid = self.pid, %err, "cannot reap instance");
        }
        self.reaped = true;
        if let Some(sandbox) = self.sandbox.take() {
            release(sandbox).await;
        }
        tracing::debug!(pid = self.pid, "instance stopped");
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // `kill_on_drop` ends the spawned process and tokio reaps it in the background; this
        // also ends whatever the handler started in the group (sandboxed: in the namespace).
        self.kill();
        if let Some(sandbox) = self.sandbox.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || drop(sandbox))),
                Err(_) => drop(sandbox),
            }
        }
    }
}

/// Releases an instance's sandbox once its processes are killed: dropping the plan kills what
/// is left in its cgroup and waits for the cgroup to empty, which may block.
pub(crate) async fn release(sandbox: InstanceSandbox) {
    if let Err(err) = tokio::task::spawn_blocking(move || drop(sandbox)).await {
        tracing::warn!(
            error = &err as &dyn std::error::Error,
            "cannot release a sandbox"
        );
    }
}

fn instance_gone(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::NotConnected
    )
}
