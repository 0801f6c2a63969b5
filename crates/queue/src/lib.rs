//! The durable async queue: accepted events survive a crash, run at least once, are retried by
//! SCF's policy and end up finished, failed (as dead letters) or aborted.
//!
//! ```text
//!   accept ──► committer task ──(batch, one flush)──► store: async_events
//!                                                           │ lease (due, not over limits)
//!   dispatcher task ◄───────── wake: accept, completion ────┘
//!        └─► attempt task: Executor::execute ─► policy::decide ─► recorder task
//!                                                (batch of attempts, one transaction) ─┘
//! ```
//!
//! Invariants:
//! - `accept` returns only after the event is committed with a full flush; many concurrent
//!   accepts share one commit.
//! - An event leaves the store's queue only in the transaction that writes its final record.
//! - At most `workers` attempts run at once on the node, and at most
//!   `per_function_running` of one function, so async events cannot take every instance of a
//!   function from synchronous callers.
//! - Back-pressure: at most `max_pending_per_function` pending events per function and
//!   `max_pending` in all; past that `accept` refuses at once.
//!
//! # Limitations
//! - Leases are re-queued wholesale at start-up, which is right for one node only; several
//!   nodes sharing a database need lease ownership (the PostgreSQL backend of `DESIGN.md`).
//! - A terminated event that was leased in the same instant may still run once; its result is
//!   then discarded.

pub mod policy;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_store::{
    AsyncEvent, AttemptFate, AttemptRecord, DeadLetter, InvocationRecord, InvocationStatus,
    QueuedEvent, Store, StoreError,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument as _;

pub use policy::ErrorClass;

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Too many pending events for this function or in all.
    #[error("{0}")]
    Full(String),
    /// The request id exists already.
    #[error("request id {0} exists already")]
    Duplicate(String),
    /// The queue is shutting down.
    #[error("the async queue is shutting down")]
    Closed,
    /// The store failed.
    #[error("async queue storage failed")]
    Store(#[from] StoreError),
}

/// Queue settings; see [`QueueConfig::default`] for the defaults.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Attempts running at once on this node.
    pub workers: u32,
    /// Attempts of one function running at once.
    pub per_function_running: u32,
    /// Pending events of one function.
    pub max_pending_per_function: u64,
    /// Pending events in all.
    pub max_pending: u64,
    /// Events committed together at most.
    pub commit_batch: usize,
    /// How long a lease lasts; longer than the longest function timeout.
    pub lease: Duration,
    /// How long `shutdown` waits for running attempts.
    pub shutdown_grace: Duration,
    /// How long a gracefully terminated attempt may run on after it was interrupted
    /// ([`Queue::terminate`]).
    pub termination_grace: Duration,
}

impl Default for QueueConfig {
    fn default() -> QueueConfig {
        QueueConfig {
            workers: 16,
            per_function_running: 4,
            max_pending_per_function: 10_000,
            max_pending: 100_000,
            commit_batch: 512,
            lease: Duration::from_secs(16 * 60),
            shutdown_grace: Duration::from_secs(10),
            termination_grace: Duration::from_secs(5),
        }
    }
}

/// One attempt's result, as the executor reports it.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    /// The invocation record of this attempt (status and codes as the attempt ended).
    pub record: InvocationRecord,
    /// How the policy should see it.
    pub class: ErrorClass,
    /// The error's message ("" on success), kept with a dead letter.
    pub error_message: String,
}

/// Runs one attempt of an event.
pub trait Executor: Send + Sync + 'static {
    /// Runs the event once. Dropping the future must stop the attempt.
    fn execute(&self, event: &QueuedEvent) -> impl Future<Output = AttemptOutcome> + Send;

    /// Asks the running attempt of `event` to end of its own accord (SCF's `GraceShutdown`:
    /// a `SIGTERM` to the function); its `execute` future goes on until it does. By default
    /// nothing is asked.
    fn interrupt(&self, event: &QueuedEvent) {
        let _ = event;
    }
}

/// How a running attempt is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Drop it: its instance is killed.
    Now,
    /// Interrupt it, and drop it only if it is still running after the termination grace.
    Gracefully,
}

/// Wall-clock milliseconds that follow tokio's clock (so tests can pause and advance time).
#[derive(Debug, Clone, Copy)]
struct Clock {
    wall_origin_ms: i64,
    origin: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            wall_origin_ms: nimbus_store::now_ms(),
            origin: Instant::now(),
        }
    }

    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.wall_origin_ms.saturating_add(elapsed)
    }

    fn instant_at(&self, ms: i64) -> Instant {
        let offset = u64::try_from(ms.saturating_sub(self.wall_origin_ms)).unwrap_or(0);
        self.origin + Duration::from_millis(offset)
    }
}

type Commit = (
    AsyncEvent,
    InvocationRecord,
    oneshot::Sender<Result<bool, QueueError>>,
);
type FunctionKey = (String, String);
/// An attempt on its way to the recorder, and where its answer goes: whether it was stored
/// (false: its event was no longer pending), or `None` when the store failed (the recorder
/// logs why).
type Recording = (
    AttemptRecord,
    InvocationRecord,
    AttemptFate,
    oneshot::Sender<Option<bool>>,
);

#[derive(Default)]
struct Counters {
    pending: HashMap<FunctionKey, u64>,
    pending_total: u64,
    running: HashMap<FunctionKey, u32>,
    running_total: u32,
    /// Running attempts that can be told to stop.
    stops: HashMap<String, oneshot::Sender<Stop>>,
    closed: bool,
}

struct Inner<E> {
    store: Store,
    executor: E,
    config: QueueConfig,
    clock: Clock,
    counters: Mutex<Counters>,
    wake: Notify,
    idle: Notify,
    /// To the recorder task, which ends when this (the last sender) is dropped with `Inner`.
    recordings: mpsc::Sender<Recording>,
}

/// Handle to the queue. Cheap to clone.
pub struct Queue<E: Executor> {
    inner: Arc<Inner<E>>,
    commits: mpsc::Sender<Commit>,
}

impl<E: Executor> Clone for Queue<E> {
    fn clone(&self) -> Self {
        Queue {
            inner: Arc::clone(&self.inner),
            commits: self.commits.clone(),
        }
    }
}

impl<E: Executor> Queue<E> {
    /// Starts the queue: re-queues leases left by a previous process, loads the pending
    /// counts, and starts the committer and dispatcher tasks.
    ///
    /// # Errors
    /// `Store` when the queue's state cannot be read.
    pub async fn start(store: Store, executor: E, config: QueueConfig) -> Result<Self, QueueError> {
        let requeued = store.requeue_leased_events().await?;
        let mut counters = Counters::default();
        for (namespace, name, count) in store.pending_event_counts().await? {
            counters.pending.insert((namespace, name), count);
            counters.pending_total += count;
        }
        if counters.pending_total > 0 {
            tracing::info!(
                pending = counters.pending_total,
                requeued,
                "async events to resume"
            );
        }
        // At most `workers` attempts run, so no attempt ever waits for room here.
        let room = usize::try_from(config.workers).unwrap_or(usize::MAX).max(1);
        let (recordings, to_record) = mpsc::channel(room);
        tokio::spawn(record_loop(store.clone(), to_record));
        let inner = Arc::new(Inner {
            store,
            executor,
            config,
            clock: Clock::new(),
            counters: Mutex::new(counters),
            wake: Notify::new(),
            idle: Notify::new(),
            recordings,
        });
        let (commits, queue) = mpsc::channel(inner.config.commit_batch * 4);
        tokio::spawn(commit_loop(Arc::clone(&inner), queue));
        tokio::spawn(dispatch_loop(Arc::clone(&inner)));
        Ok(Queue { inner, commits })
    }

    /// Milliseconds since the epoch on the queue's clock.
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Durably accepts an event; `record` is its `RUNNING` invocation record. Returns once
    /// the event is on disk.
    ///
    /// # Errors
    /// `Full`, `Duplicate`, `Closed` or `Store`.
    pub async fn accept(
        &self,
        event: AsyncEvent,
        record: InvocationRecord,
    ) -> Result<(), QueueError> {
        let key = (event.namespace.clone(), event.function_name.clone());
        self.reserve(&key)?;
        let (done, committed) = oneshot::channel();
        let request_id = event.request_id.clone();
        let result = match self.commits.send((event, record, done)).await {
            Ok(()) => committed.await.unwrap_or(Err(QueueError::Closed)),
            Err(_) => Err(QueueError::Closed),
        };
        match result {
            Ok(true) => {
                self.inner.wake.notify_one();
                Ok(())
            }
            Ok(false) => {
                self.inner.release_pending(&key);
                Err(QueueError::Duplicate(request_id))
            }
            Err(error) => {
                self.inner.release_pending(&key);
                Err(error)
            }
        }
    }

    /// Counts a new pending event, refusing it when a limit is reached.
    fn reserve(&self, key: &FunctionKey) -> Result<(), QueueError> {
        let config = &self.inner.config;
        let mut counters = self.inner.lock();
        if counters.closed {
            return Err(QueueError::Closed);
        }
        let pending = counters.pending.get(key).copied().unwrap_or(0);
        if pending >= config.max_pending_per_function {
            return Err(QueueError::Full(format!(
                "function {} has {pending} async events waiting (limit {}); retry later",
                key.1, config.max_pending_per_function
            )));
        }
        if counters.pending_total >= config.max_pending {
            return Err(QueueError::Full(format!(
                "the node has {} async events waiting (limit {}); retry later",
                counters.pending_total, config.max_pending
            )));
        }
        *counters.pending.entry(key.clone()).or_default() += 1;
        counters.pending_total += 1;
        Ok(())
    }

    /// Stops a pending event: a running attempt is told to stop, a waiting one is removed.
    /// `aborted` is its final record. Returns false when it was not pending any more.
    ///
    /// `gracefully` (SCF's `GraceShutdown`): a running attempt is interrupted
    /// ([`Executor::interrupt`]) rather than killed, and killed only if it still runs after
    /// [`QueueConfig::termination_grace`]; the log it wrote until it ended joins `aborted`.
    ///
    /// # Errors
    /// `Store`.
    pub async fn terminate(
        &self,
        aborted: InvocationRecord,
        gracefully: bool,
    ) -> Result<bool, QueueError> {
        let request_id = aborted.request_id.clone();
        let key = (aborted.namespace.clone(), aborted.function_name.clone());
        // The aborted record first: a gracefully stopped attempt adds its log to it, and
        // whatever an attempt records as an attempt from now on is refused (the event is gone).
        let removed = self.inner.store.abort_async_event(aborted).await?;
        if !removed {
            return Ok(false);
        }
        let stop = self.inner.lock().stops.remove(&request_id);
        if let Some(stop) = stop {
            let _ = stop.send(if gracefully {
                Stop::Gracefully
            } else {
                Stop::Now
            });
        }
        self.inner.release_pending(&key);
        tracing::info!(request_id, "async event terminated");
        Ok(true)
    }

    /// Queues a dead letter of `function` (namespace, name) again: `replay` builds the new event and its `RUNNING`
    /// record from the dead letter. Returns the dead letter, or `None` when there is none
    /// with that request id. The pending limits are not checked: the event was accepted once.
    ///
    /// # Errors
    /// `Store`.
    pub async fn replay_dead_letter(
        &self,
        request_id: &str,
        function: (&str, &str),
        replay: impl FnOnce(&DeadLetter) -> (AsyncEvent, InvocationRecord) + Send + 'static,
    ) -> Result<Option<DeadLetter>, QueueError> {
        let letter = self
            .inner
            .store
            .replay_dead_letter(request_id, function, replay)
            .await?;
        if let Some(letter) = &letter {
            let mut counters = self.inner.lock();
            let key = (letter.namespace.clone(), letter.function_name.clone());
            *counters.pending.entry(key).or_default() += 1;
            counters.pending_total += 1;
            drop(counters);
            self.inner.wake.notify_one();
        }
        Ok(letter)
    }

    /// Stops taking and starting events, and waits up to the grace period for running
    /// attempts. Attempts still running then are dropped (their instances killed); their
    /// events stay leased in the store and run again at the next start.
    pub async fn shutdown(&self) {
        self.inner.lock().closed = true;
        self.inner.wake.notify_one();
        let deadline = Instant::now() + self.inner.config.shutdown_grace;
        loop {
            let idle = self.inner.idle.notified();
            if self.inner.lock().running_total == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                let left = self.inner.lock().running_total;
                tracing::warn!(running = left, "async attempts still running at shutdown");
                return;
            }
        }
    }
}

impl<E: Executor> Inner<E> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release_pending(&self, key: &FunctionKey) {
        let mut counters = self.lock();
        if let Some(count) = counters.pending.get_mut(key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counters.pending.remove(key);
            }
        }
        counters.pending_total = counters.pending_total.saturating_sub(1);
    }
}

/// Gathers accepts into batches, each committed with one flush.
async fn commit_loop<E: Executor>(inner: Arc<Inner<E>>, mut queue: mpsc::Receiver<Commit>) {
    let mut batch = Vec::with_capacity(inner.config.commit_batch);
    while queue.recv_many(&mut batch, inner.config.commit_batch).await > 0 {
        let (rows, replies): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|(event, record, reply)| ((event, record), reply))
            .unzip();
        match inner.store.accept_async_events(rows).await {
            Ok(accepted) => {
                for (reply, inserted) in replies.into_iter().zip(accepted) {
                    let _ = reply.send(Ok(inserted));
                }
            }
            Err(error) => {
                tracing::error!(%error, "async events could not be committed");
                for reply in replies {
                    let _ = reply.send(Err(QueueError::Store(StoreError::Task)));
                }
            }
        }
    }
}

/// Stores the attempts that ended while the previous batch was being stored, in one
/// transaction: attempts that end together share one write of the pages they touch.
async fn record_loop(store: Store, mut queue: mpsc::Receiver<Recording>) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        let (rows, replies): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|(attempt, record, fate, reply)| ((attempt, record, fate), reply))
            .unzip();
        match store.record_attempts(rows).await {
            Ok(recorded) => {
                for (reply, stored) in replies.into_iter().zip(recorded) {
                    let _ = reply.send(Some(stored));
                }
            }
            Err(error) => {
                tracing::error!(
                    %error,
                    attempts = replies.len(),
                    "async attempts could not be recorded; their events run again once their \
                     leases end"
                );
                for reply in replies {
                    let _ = reply.send(None);
                }
            }
        }
    }
}

/// Attempts stored together at most.
const RECORD_BATCH: usize = 256;

/// Leases due events and starts their attempts, within the concurrency limits.
async fn dispatch_loop<E: Executor>(inner: Arc<Inner<E>>) {
    loop {
        let woken = inner.wake.notified();
        let (free, running) = {
            let counters = inner.lock();
            if counters.closed {
                return;
            }
            let free = inner.config.workers.saturating_sub(counters.running_total);
            (free, counters.running.clone())
        };
        let mut started = 0;
        if free > 0 {
            let now = inner.clock.now_ms();
            let lease_ms = i64::try_from(inner.config.lease.as_millis()).unwrap_or(i64::MAX);
            let per_function = inner.config.per_function_running;
            let room = move |namespace: &str, name: &str| {
                let key = (namespace.to_owned(), name.to_owned());
                per_function.saturating_sub(running.get(&key).copied().unwrap_or(0))
            };
            match inner
                .store
                .lease_due_events(now, now + lease_ms, free, room)
                .await
            {
                Ok(events) => {
                    started = events.len();
                    for event in events {
                        start_attempt(&inner, event);
                    }
                }
                Err(error) => tracing::error!(%error, "cannot lease async events"),
            }
        }
        if started > 0 {
            continue;
        }
        let next_due = match inner.store.next_due_time().await {
            Ok(due) => due,
            Err(error) => {
                tracing::error!(%error, "cannot read the async queue");
                None
            }
        };
        // Something due that could not be leased belongs to a function at its limit: a
        // completion wakes us; until then only the fallback tick does.
        let now = inner.clock.now_ms();
        let fallback = Instant::now() + Duration::from_secs(1);
        let wake_at = match next_due {
            Some(ms) if ms > now => inner.clock.instant_at(ms).min(fallback),
            _ => fallback,
        };
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep_until(wake_at) => {}
        }
    }
}

fn start_attempt<E: Executor>(inner: &Arc<Inner<E>>, queued: QueuedEvent) {
    let key = (
        queued.event.namespace.clone(),
        queued.event.function_name.clone(),
    );
    let (stop, stopped) = oneshot::channel();
    {
        let mut counters = inner.lock();
        *counters.running.entry(key.clone()).or_default() += 1;
        counters.running_total += 1;
        counters.stops.insert(queued.event.request_id.clone(), stop);
    }
    let span = tracing::info_span!(
        "async_attempt",
        request_id = %queued.event.request_id,
        function = %queued.event.function_name,
        attempt = queued.attempts + 1,
    );
    let inner = Arc::clone(inner);
    tokio::spawn(
        async move {
            run_attempt(&inner, &queued, stopped).await;
            let mut counters = inner.lock();
            counters.stops.remove(&queued.event.request_id);
            if let Some(n) = counters.running.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counters.running.remove(&key);
                }
            }
            counters.running_total = counters.running_total.saturating_sub(1);
            drop(counters);
            inner.wake.notify_one();
            inner.idle.notify_waiters();
        }
        .instrument(span),
    );
}

async fn run_attempt<E: Executor>(
    inner: &Inner<E>,
    queued: &QueuedEvent,
    stopped: oneshot::Receiver<Stop>,
) {
    let start_time = inner.clock.now_ms();
    let execution = inner.executor.execute(queued);
    tokio::pin!(execution);
    let outcome = tokio::select! {
        outcome = &mut execution => outcome,
        // Terminated: the store already holds the aborted record.
        Ok(stop) = stopped => {
            if stop == Stop::Gracefully {
                finish_gracefully(inner, queued, execution).await;
            }
            return;
        }
    };
    let end_time = inner.clock.now_ms();
    let mut record = outcome.record;
    let (code, message) = (record.ret_code, outcome.error_message);
    let fate = policy::decide(
        outcome.class,
        queued.attempts,
        queued.run_errors,
        queued.event.retry_num,
        queued.event.deadline,
        end_time,
        (code, &message),
    );
    record.retry_num = queued.attempts;
    record.status = match (&fate, outcome.class) {
        (AttemptFate::Retry { .. }, _) => InvocationStatus::Running,
        (_, ErrorClass::Success) => InvocationStatus::Finished,
        _ => InvocationStatus::Failed,
    };
    let attempt = AttemptRecord {
        attempt: queued.attempts + 1,
        start_time,
        end_time,
        ret_code: record.ret_code,
        ret_msg: record.ret_msg.clone(),
        err_msg: record.err_msg.clone(),
        duration_us: record.duration_us,
        mem_usage: record.mem_usage,
        log: record.log.clone(),
    };
    let is_final = !matches!(fate, AttemptFate::Retry { .. });
    match &fate {
        AttemptFate::Retry { next_run_at, .. } => {
            tracing::info!(
                code,
                retry_in_ms = next_run_at - end_time,
                "async attempt failed; retrying"
            )
        }
        AttemptFate::DeadLetter { .. } => tracing::warn!(code, "async event failed for good"),
        AttemptFate::Finish => {}
    }
    let (done, recorded) = oneshot::channel();
    // Not stored (the recorder said why): the lease expires and the event runs again, which
    // is at-least-once. The recorder lives as long as `inner`, so sending cannot fail.
    let stored = match inner.recordings.send((attempt, record, fate, done)).await {
        Ok(()) => recorded.await.ok().flatten(),
        Err(_) => None,
    };
    if stored == Some(true) && is_final {
        inner.release_pending(&(
            queued.event.namespace.clone(),
            queued.event.function_name.clone(),
        ));
    }
}

/// Interrupts a terminated attempt and lets it run for the termination grace at most; if it
/// ends within it, what it logged joins the event's aborted record.
async fn finish_gracefully<E: Executor>(
    inner: &Inner<E>,
    queued: &QueuedEvent,
    execution: std::pin::Pin<&mut impl Future<Output = AttemptOutcome>>,
) {
    inner.executor.interrupt(queued);
    let request_id = &queued.event.request_id;
    match tokio::time::timeout(inner.config.termination_grace, execution).await {
        Ok(outcome) => {
            let log = outcome.record.log;
            if let Err(error) = inner.store.add_aborted_log(request_id, log).await {
                tracing::error!(%error, "cannot keep the log of a terminated attempt");
            }
        }
        Err(_) => tracing::info!(
            grace = ?inner.config.termination_grace,
            "terminated attempt still running after its grace; stopping it"
        ),
    }
}

#[cfg(test)]
mod tests;
