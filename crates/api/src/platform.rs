//! The platform service behind both dialects: function management (through control, retiring
//! warm instances after a change), synchronous and asynchronous invocation (through the
//! engine), and the invocation records that `GetFunctionLogs` reads.
//!
//! ```text
//!   sync:   resolve function ─► engine.invoke ─► record ─► answer
//!   async:  resolve function ─► Queue::accept (durable) ─► answer {requestId}
//!                                    └─► queue attempt: AsyncRunner ─► engine.invoke ─► policy
//! ```
//!
//! Async invocations go through the durable queue (`nimbus-queue`); [`AsyncRunner`] is the
//! queue's executor: it runs one attempt through the engine and classifies the outcome for
//! SCF's retry policy.
//!
//! # Limitations
//! - Async invocations are billed at 1 ms granularity whichever dialect accepted them: the
//!   queue does not keep the caller's dialect.
//! - Invocation records are committed before a synchronous call answers (by the store's
//!   group-commit writer), so that the caller can read them at once; answering first would
//!   save a thread hop per call.

use std::sync::Arc;
use std::time::Duration;

use nimbus_control::{Control, ControlError, FunctionSettings, Limits};
use nimbus_engine::{
    Engine, FunctionSpec, InvocationOutcome, InvocationRequest, InvocationResult, Runtime,
};
use nimbus_queue::{AttemptOutcome, ErrorClass, Executor, Queue, QueueError};
use nimbus_store::{
    AsyncEvent, DeadLetter, FunctionQuery, FunctionRecord, InvocationQuery, InvocationRecord,
    InvocationStatus, InvokeType, NamespaceRecord, QueuedEvent,
};

use crate::error::{ApiError, internal};

/// How a dialect bills duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Billing {
    /// Rounded up to the next 100 ms (legacy API 2.0).
    Per100Ms,
    /// Rounded up to the next millisecond (API 3.0).
    PerMs,
}

impl Billing {
    /// Billed milliseconds for a duration.
    pub fn bill_ms(self, duration: Duration) -> u64 {
        let micros = duration.as_micros();
        let ms = micros.div_ceil(1000).max(1);
        let billed = match self {
            Billing::Per100Ms => ms.div_ceil(100) * 100,
            Billing::PerMs => ms,
        };
        u64::try_from(billed).unwrap_or(u64::MAX)
    }
}

/// A finished synchronous invocation, in the terms both dialects answer with.
#[derive(Debug, Clone)]
pub struct SyncResult {
    /// Request id it ran under.
    pub request_id: String,
    /// JSON text of the return value ("" on failure).
    pub ret_msg: String,
    /// SCF's error object as text ("" on success).
    pub err_msg: String,
    /// 0 on success, else the function status code.
    pub invoke_result: i64,
    /// The whole log of the invocation.
    pub log: String,
    /// Duration in milliseconds, microsecond precision.
    pub duration_ms: f64,
    /// Peak memory, bytes.
    pub mem_usage: u64,
    /// Billed milliseconds under the dialect's rule.
    pub bill_ms: u64,
}

impl SyncResult {
    fn new(outcome: InvocationOutcome, bill_ms: u64) -> SyncResult {
        let (ret_msg, err_msg, invoke_result) = match outcome.result {
            InvocationResult::Success { ret_msg } => (ret_msg, String::new(), 0),
            InvocationResult::Failed {
                status_code,
                err_msg,
            } => (String::new(), err_msg, i64::from(status_code)),
        };
        SyncResult {
            request_id: outcome.request_id,
            ret_msg,
            err_msg,
            invoke_result,
            log: outcome.log,
            duration_ms: crate::duration_ms(outcome.duration),
            mem_usage: outcome.mem_usage_bytes,
            bill_ms,
        }
    }

    /// The log as `LogType=Tail` returns it: its last 4 KB, or nothing without `Tail`.
    pub fn log_view(&self, tail: bool) -> &str {
        if tail {
            crate::tail(&self.log, TAIL_BYTES)
        } else {
            ""
        }
    }
}

/// Largest `Tail` log returned with a synchronous invocation.
pub const TAIL_BYTES: usize = 4096;

/// What this node allows, as `GetAccount` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountLimits {
    /// Live instances per function.
    pub concurrency: u32,
    /// Memory of all live instances together, MB.
    pub memory_budget_mb: u64,
}

/// The services a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct Platform {
    control: Control,
    engine: Arc<Engine>,
    region: String,
    limits: AccountLimits,
    queue: Queue<AsyncRunner>,
}

impl Platform {
    /// Creates the service.
    pub fn new(
        control: Control,
        engine: Arc<Engine>,
        region: String,
        limits: AccountLimits,
        queue: Queue<AsyncRunner>,
    ) -> Platform {
        Platform {
            control,
            engine,
            region,
            limits,
            queue,
        }
    }

    /// The node's limits.
    pub fn limits(&self) -> AccountLimits {
        self.limits
    }

    /// Creates a function.
    ///
    /// # Errors
    /// As [`Control::create_function`], mapped to [`ApiError`].
    pub async fn create_function(
        &self,
        namespace: &str,
        name: &str,
        settings: FunctionSettings,
        limits: &Limits,
    ) -> Result<FunctionRecord, ApiError> {
        let record = self
            .control
            .create_function(namespace, name, settings, limits)
            .await?;
        tracing::info!(namespace, function = name, "function created");
        Ok(record)
    }

    /// Updates a function and retires its warm instances.
    ///
    /// # Errors
    /// As [`Control::update_function`], mapped to [`ApiError`].
    pub async fn update_function(
        &self,
        namespace: &str,
        name: &str,
        settings: FunctionSettings,
        limits: &Limits,
    ) -> Result<FunctionRecord, ApiError> {
        let record = self
            .control
            .update_function(namespace, name, settings, limits)
            .await?;
        self.engine.retire(namespace, name).await;
        tracing::info!(
            namespace,
            function = name,
            revision = record.revision,
            "function updated"
        );
        Ok(record)
    }

    /// Deletes a function and stops its instances.
    ///
    /// # Errors
    /// `FunctionNotFound` or `Internal`.
    pub async fn delete_function(&self, namespace: &str, name: &str) -> Result<(), ApiError> {
        self.control.delete_function(namespace, name).await?;
        self.engine.retire(namespace, name).await;
        tracing::info!(namespace, function = name, "function deleted");
        Ok(())
    }

    /// Reads a function.
    ///
    /// # Errors
    /// `FunctionNotFound` or `Internal`.
    pub async fn get_function(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<FunctionRecord, ApiError> {
        Ok(self.control.get_function(namespace, name).await?)
    }

    /// The handler file's source text.
    ///
    /// # Errors
    /// `Internal` when the stored package cannot be read.
    pub fn handler_source(&self, record: &FunctionRecord) -> Result<String, ApiError> {
        self.control
            .handler_source(record)
            .map_err(|e| internal(&e))
    }

    /// Lists functions.
    ///
    /// # Errors
    /// `NamespaceNotFound` (an empty list is checked: the namespace may not exist), or
    /// `Internal`.
    pub async fn list_functions(
        &self,
        query: FunctionQuery,
    ) -> Result<(u64, Vec<FunctionRecord>), ApiError> {
        let namespace = query.namespace.clone();
        let (total, records) = self.control.list_functions(query).await?;
        if total == 0 {
            let exists = self
                .control
                .store()
                .get_namespace(&namespace)
                .await
                .map_err(|e| internal(&e))?;
            if exists.is_none() {
                return Err(ApiError::NamespaceNotFound(namespace));
            }
        }
        Ok((total, records))
    }

    /// Lists a function's invocation records.
    ///
    /// # Errors
    /// `FunctionNotFound` or `Internal`.
    pub async fn list_invocations(
        &self,
        query: InvocationQuery,
    ) -> Result<(u64, Vec<InvocationRecord>), ApiError> {
        self.control
            .get_function(&query.namespace, &query.function_name)
            .await?;
        self.control
            .store()
            .list_invocations(query)
            .await
            .map_err(|e| internal(&e))
    }

    /// Creates a namespace.
    ///
    /// # Errors
    /// `InvalidParameter`, `NamespaceExists` or `Internal`.
    pub async fn create_namespace(
        &self,
        namespace: &str,
        description: &str,
    ) -> Result<(), ApiError> {
        self.control
            .create_namespace(namespace, description)
            .await?;
        tracing::info!(namespace, "namespace created");
        Ok(())
    }

    /// Changes a namespace's description.
    ///
    /// # Errors
    /// `InvalidParameter`, `NamespaceNotFound` or `Internal`.
    pub async fn update_namespace(
        &self,
        namespace: &str,
        description: &str,
    ) -> Result<(), ApiError> {
        Ok(self
            .control
            .update_namespace(namespace, description)
            .await?)
    }

    /// Deletes an empty namespace.
    ///
    /// # Errors
    /// `NamespaceNotDeletable`, `NamespaceNotFound` or `Internal`.
    pub async fn delete_namespace(&self, namespace: &str) -> Result<(), ApiError> {
        self.control.delete_namespace(namespace).await?;
        tracing::info!(namespace, "namespace deleted");
        Ok(())
    }

    /// Every namespace with its number of functions.
    ///
    /// # Errors
    /// `Internal`.
    pub async fn list_namespaces(&self) -> Result<Vec<(NamespaceRecord, u64)>, ApiError> {
        Ok(self.control.list_namespaces().await?)
    }

    /// The record of an async invocation.
    ///
    /// # Errors
    /// `AsyncEventNotFound` (also for a synchronous request id) or `Internal`.
    pub async fn async_event(&self, request_id: &str) -> Result<InvocationRecord, ApiError> {
        let record = self
            .control
            .store()
            .get_invocation(request_id)
            .await
            .map_err(|e| internal(&e))?;
        record
            .filter(|r| r.invoke_type == InvokeType::Event)
            .ok_or_else(|| ApiError::AsyncEventNotFound(request_id.to_owned()))
    }

    /// Stops a pending async event; it is recorded as `ABORTED` before this returns.
    ///
    /// # Errors
    /// `AsyncEventNotFound` (unknown, or of another function), `AsyncEventFinished`, or
    /// `Internal`.
    pub async fn terminate_async_event(
        &self,
        namespace: &str,
        name: &str,
        request_id: &str,
        gracefully: bool,
    ) -> Result<(), ApiError> {
        let record = self.async_event(request_id).await?;
        if record.namespace != namespace || record.function_name != name {
            return Err(ApiError::AsyncEventNotFound(request_id.to_owned()));
        }
        if record.status != InvocationStatus::Running {
            return Err(ApiError::AsyncEventFinished(request_id.to_owned()));
        }
        let aborted = final_event_record(
            &record,
            InvocationStatus::Aborted,
            499,
            "the async event was terminated by request",
        );
        match self.queue.terminate(aborted, gracefully).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiError::AsyncEventFinished(request_id.to_owned())),
            Err(error) => Err(internal(&error)),
        }
    }

    /// A function's dead letters, newest first.
    ///
    /// # Errors
    /// `FunctionNotFound` or `Internal`.
    pub async fn list_dead_letters(
        &self,
        namespace: &str,
        name: &str,
        offset: u32,
        limit: u32,
    ) -> Result<(u64, Vec<DeadLetter>), ApiError> {
        self.control.get_function(namespace, name).await?;
        let store = self.control.store();
        store
            .list_dead_letters(namespace, name, offset, limit)
            .await
            .map_err(|e| internal(&e))
    }

    /// Queues a dead letter's event again under a new request id, which it returns.
    ///
    /// # Errors
    /// `AsyncEventNotFound` (no such dead letter of this function), `FunctionNotFound` or
    /// `Internal`.
    pub async fn replay_dead_letter(
        &self,
        namespace: &str,
        name: &str,
        request_id: &str,
    ) -> Result<String, ApiError> {
        let function = self.control.get_function(namespace, name).await?;
        let new_id = new_request_id();
        let now = self.queue.now_ms();
        let (event_namespace, event_name) = (namespace.to_owned(), name.to_owned());
        let replay_id = new_id.clone();
        let replayed = self
            .queue
            .replay_dead_letter(request_id, (namespace, name), move |letter: &DeadLetter| {
                let event = AsyncEvent {
                    request_id: replay_id,
                    namespace: event_namespace,
                    function_name: event_name,
                    event: letter.event.clone(),
                    accepted_time: now,
                    deadline: now + i64::from(function.async_msg_ttl) * 1000,
                    retry_num: function.async_retry_num,
                };
                let record = running_record(&event);
                (event, record)
            })
            .await
            .map_err(|e| internal(&e))?;
        match replayed {
            Some(_) => {
                tracing::info!(request_id, new_request_id = %new_id, "dead letter replayed");
                Ok(new_id)
            }
            _ => Err(ApiError::AsyncEventNotFound(request_id.to_owned())),
        }
    }

    /// Every attempt of an async event.
    ///
    /// # Errors
    /// `AsyncEventNotFound` or `Internal`.
    pub async fn async_attempts(
        &self,
        request_id: &str,
    ) -> Result<Vec<nimbus_store::AttemptRecord>, ApiError> {
        self.async_event(request_id).await?;
        self.control
            .store()
            .list_attempts(request_id)
            .await
            .map_err(|e| internal(&e))
    }

    /// Sets a function's async retry number and event time-to-live (seconds).
    ///
    /// # Errors
    /// `InvalidParameter`, `FunctionNotFound` or `Internal`.
    pub async fn update_async_config(
        &self,
        namespace: &str,
        name: &str,
        retry_num: Option<u32>,
        msg_ttl: Option<u32>,
    ) -> Result<FunctionRecord, ApiError> {
        Ok(self
            .control
            .update_async_config(namespace, name, retry_num, msg_ttl)
            .await?)
    }

    /// Sets (or, with `None`, removes) a function's `ReservedConcurrencyMem`, which caps its
    /// live instances at `reserved_mb / MemorySize` (SCF's `PutReservedConcurrencyConfig`);
    /// reservations together may not pass the node's memory budget.
    ///
    /// # Errors
    /// `InvalidParameter` (`FailedOperation.ReservedExceedTotal`), `FunctionNotFound` or
    /// `Internal`.
    pub async fn set_reserved_concurrency(
        &self,
        namespace: &str,
        name: &str,
        reserved_mb: Option<u32>,
    ) -> Result<FunctionRecord, ApiError> {
        Ok(self
            .control
            .set_reserved_concurrency(namespace, name, reserved_mb, self.limits.memory_budget_mb)
            .await?)
    }

    /// Runs an invocation and waits for it; its record is queued for the store before this
    /// returns, and every later read of records sees it.
    ///
    /// # Errors
    /// `FunctionNotFound` or `Internal`. A function that fails is an `Ok` outcome.
    pub async fn invoke_sync(
        &self,
        namespace: &str,
        name: &str,
        event: String,
        billing: Billing,
    ) -> Result<SyncResult, ApiError> {
        let record = self.control.get_function(namespace, name).await?;
        let request_id = new_request_id();
        let start_time = nimbus_store::now_ms();
        let outcome = self
            .engine
            .invoke(&self.spec(&record), InvocationRequest { request_id, event })
            .await;
        let bill_ms = billing.bill_ms(outcome.duration);
        let entry = invocation_record(
            &record,
            &outcome,
            InvokeType::RequestResponse,
            start_time,
            bill_ms,
        );
        // Queued, not awaited: the caller has no reason to wait for the log's commit, and
        // every later read of invocation records waits for it.
        self.control
            .store()
            .record_invocation(entry)
            .await
            .map_err(|e| internal(&e))?;
        Ok(SyncResult::new(outcome, bill_ms))
    }

    /// Accepts an async invocation: the event is committed before this returns its request
    /// id, then the queue runs it.
    ///
    /// # Errors
    /// `FunctionNotFound`, `QueueFull` or `Internal` (nothing was accepted then).
    pub async fn invoke_async(
        &self,
        namespace: &str,
        name: &str,
        event: String,
    ) -> Result<String, ApiError> {
        let function = self.control.get_function(namespace, name).await?;
        let now = self.queue.now_ms();
        let accepted = AsyncEvent {
            request_id: new_request_id(),
            namespace: namespace.to_owned(),
            function_name: name.to_owned(),
            event,
            accepted_time: now,
            deadline: now + i64::from(function.async_msg_ttl) * 1000,
            retry_num: function.async_retry_num,
        };
        let request_id = accepted.request_id.clone();
        let record = running_record(&accepted);
        match self.queue.accept(accepted, record).await {
            Ok(()) => Ok(request_id),
            Err(QueueError::Full(message)) => Err(ApiError::QueueFull(message)),
            Err(error) => Err(internal(&error)),
        }
    }

    /// Stops the queue (running attempts get a grace period), then every instance.
    pub async fn shutdown(&self) {
        self.queue.shutdown().await;
        self.engine.shutdown().await;
        if let Err(error) = self.control.store().flush_records().await {
            tracing::error!(error = %error, "invocation records may not all be stored");
        }
    }

    fn spec(&self, record: &FunctionRecord) -> FunctionSpec {
        function_spec(&self.control, record, &self.region)
    }
}

/// A fresh request id: a time-ordered UUID (version 7: the Unix time in milliseconds, then 74
/// random bits), hyphenated as SCF's. SCF's own ids are time-based UUIDs too (version 1).
///
/// Time order matters to the store: invocation records, async events and their attempts are
/// keyed by request id, so ids that grow with time add to the end of those indexes, where a
/// batch of new rows shares a few pages, rather than to a random page per row (the benchmark's
/// async run wrote 15 KB per accepted event instead of 26).
///
/// The random bits come from the thread's CSPRNG (seeded from the OS), not from a `getrandom`
/// system call per id: every invocation takes two ids.
pub fn new_request_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
    uuid::Builder::from_unix_timestamp_millis(millis, &rand::random())
        .into_uuid()
        .to_string()
}

fn invocation_record(
    function: &FunctionRecord,
    outcome: &InvocationOutcome,
    invoke_type: InvokeType,
    start_time: i64,
    bill_duration_ms: u64,
) -> InvocationRecord {
    let (status, ret_code, ret_msg, err_msg) = match &outcome.result {
        InvocationResult::Success { ret_msg } => (
            InvocationStatus::Finished,
            0,
            ret_msg.clone(),
            String::new(),
        ),
        InvocationResult::Failed {
            status_code,
            err_msg,
        } => (
            InvocationStatus::Failed,
            i32::from(*status_code),
            String::new(),
            err_msg.clone(),
        ),
    };
    InvocationRecord {
        request_id: outcome.request_id.clone(),
        namespace: function.namespace.clone(),
        function_name: function.function_name.clone(),
        invoke_type,
        status,
        start_time,
        end_time: nimbus_store::now_ms(),
        ret_code,
        ret_msg,
        err_msg,
        duration_us: u64::try_from(outcome.duration.as_micros()).unwrap_or(u64::MAX),
        bill_duration_ms,
        mem_usage: outcome.mem_usage_bytes,
        log: outcome.log.clone(),
        retry_num: 0,
    }
}

/// The engine's view of a stored function.
fn function_spec(control: &Control, record: &FunctionRecord, region: &str) -> FunctionSpec {
    FunctionSpec {
        namespace: record.namespace.clone(),
        name: record.function_name.clone(),
        version: "$LATEST".to_owned(),
        revision: record.revision,
        // Control only stores runtimes it serves; an unknown name here is a stored row from a
        // newer version, run as Python 3 rather than refused.
        runtime: Runtime::from_scf_name(&record.runtime).unwrap_or(Runtime::Python3),
        runtime_name: record.runtime.clone(),
        handler: record.handler.clone(),
        code_dir: control.code_dir(record),
        memory_mb: record.memory_size,
        timeout: Duration::from_secs(u64::from(record.timeout)),
        init_timeout: Duration::from_secs(u64::from(record.init_timeout)),
        environment: record.environment.clone(),
        region: region.to_owned(),
        // No network unless the function asks for it (PublicNetConfig): the instance then has
        // only its own loopback.
        network: record.public_net,
        reserved_concurrency_mb: record.reserved_concurrency_mb,
    }
}

/// The `RUNNING` record of a just-accepted event.
fn running_record(event: &AsyncEvent) -> InvocationRecord {
    InvocationRecord {
        request_id: event.request_id.clone(),
        namespace: event.namespace.clone(),
        function_name: event.function_name.clone(),
        invoke_type: InvokeType::Event,
        status: InvocationStatus::Running,
        start_time: event.accepted_time,
        end_time: 0,
        ret_code: 0,
        ret_msg: String::new(),
        err_msg: String::new(),
        duration_us: 0,
        bill_duration_ms: 0,
        mem_usage: 0,
        log: String::new(),
        retry_num: 0,
    }
}

/// A final record for an event that ended without running to completion.
fn final_event_record(
    record: &InvocationRecord,
    status: InvocationStatus,
    status_code: i32,
    message: &str,
) -> InvocationRecord {
    let err_msg = serde_json::json!({
        "errorCode": -1,
        "errorMessage": message,
        "requestId": record.request_id,
        "statusCode": status_code,
    });
    InvocationRecord {
        status,
        end_time: nimbus_store::now_ms(),
        ret_code: status_code,
        ret_msg: String::new(),
        err_msg: err_msg.to_string(),
        ..record.clone()
    }
}

/// The async queue's executor: one attempt through the engine.
#[derive(Clone)]
pub struct AsyncRunner {
    control: Control,
    engine: Arc<Engine>,
    region: String,
}

impl AsyncRunner {
    /// Creates the executor.
    pub fn new(control: Control, engine: Arc<Engine>, region: String) -> AsyncRunner {
        AsyncRunner {
            control,
            engine,
            region,
        }
    }

    async fn attempt(&self, queued: &QueuedEvent) -> AttemptOutcome {
        let event = &queued.event;
        let start_time = nimbus_store::now_ms();
        let function = match self
            .control
            .get_function(&event.namespace, &event.function_name)
            .await
        {
            Ok(function) => function,
            Err(ControlError::FunctionNotFound(_)) => {
                let message = format!("function {} does not exist", event.function_name);
                return failed_attempt(event, start_time, 435, &message, ErrorClass::CallerError);
            }
            Err(error) => {
                let error = internal(&error);
                return failed_attempt(
                    event,
                    start_time,
                    500,
                    &error.to_string(),
                    ErrorClass::Throttled,
                );
            }
        };
        let spec = function_spec(&self.control, &function, &self.region);
        let request = InvocationRequest {
            request_id: event.request_id.clone(),
            event: event.event.clone(),
        };
        let outcome = self.engine.invoke(&spec, request).await;
        let bill_ms = Billing::PerMs.bill_ms(outcome.duration);
        let record = invocation_record(&function, &outcome, InvokeType::Event, start_time, bill_ms);
        let (class, error_message) = match &outcome.result {
            InvocationResult::Success { .. } => (ErrorClass::Success, String::new()),
            InvocationResult::Failed {
                status_code,
                err_msg,
            } => (classify(*status_code), error_message(err_msg)),
        };
        AttemptOutcome {
            record,
            class,
            error_message,
        }
    }
}

impl Executor for AsyncRunner {
    fn execute(
        &self,
        event: &QueuedEvent,
    ) -> impl std::future::Future<Output = AttemptOutcome> + Send {
        let runner = self.clone();
        let event = event.clone();
        async move { runner.attempt(&event).await }
    }

    fn interrupt(&self, event: &QueuedEvent) {
        self.engine.interrupt(&event.event.request_id);
    }
}

/// How SCF's retry policy sees a function status code.
fn classify(status_code: u16) -> ErrorClass {
    match status_code {
        200 => ErrorClass::Success,
        // The node could not run it now: concurrency or memory budget, internal failures.
        432 | 449 | 500 => ErrorClass::Throttled,
        // The request itself is wrong: no function, an invalid or oversized event.
        400 | 406 | 435 | 436 => ErrorClass::CallerError,
        // User code, runtime, timeout, memory limit, crash, init failures.
        _ => ErrorClass::RunError,
    }
}

/// What went wrong, from an SCF error object: its `errorMessage`, or, when that is SCF's
/// generic "user code exception caught", the last line of the stack trace (the exception
/// itself). The whole text when it is not an error object.
fn error_message(err_msg: &str) -> String {
    let Ok(error) = serde_json::from_str::<serde_json::Value>(err_msg) else {
        return err_msg.to_owned();
    };
    let message = error
        .get("errorMessage")
        .and_then(|m| m.as_str())
        .unwrap_or(err_msg);
    let exception = error
        .get("stackTrace")
        .and_then(|t| t.as_str())
        .and_then(|trace| trace.lines().rev().find(|line| !line.trim().is_empty()));
    match exception {
        Some(line) if message == "user code exception caught" => line.trim().to_owned(),
        _ => message.to_owned(),
    }
}

fn failed_attempt(
    event: &AsyncEvent,
    start_time: i64,
    status_code: i32,
    message: &str,
    class: ErrorClass,
) -> AttemptOutcome {
    let mut record = final_event_record(
        &running_record(event),
        InvocationStatus::Failed,
        status_code,
        message,
    );
    record.start_time = start_time;
    AttemptOutcome {
        record,
        class,
        error_message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_time_ordered_uuids() {
        let first = new_request_id();
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            let uuid = uuid::Uuid::parse_str(id).expect("a UUID");
            assert_eq!(uuid.get_version(), Some(uuid::Version::SortRand), "{id}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(id.len(), 36, "hyphenated, as SCF's: {id}");
        }
        std::thread::sleep(Duration::from_millis(2));
        let later = new_request_id();
        assert!(later > first, "{later} sorts after {first}");
        assert!(
            ids.iter().all(|id| *id < later),
            "ids sort by the time they were made"
        );
    }

    #[test]
    fn legacy_billing_rounds_up_to_100_ms() {
        let bill = |micros| Billing::Per100Ms.bill_ms(Duration::from_micros(micros));
        assert_eq!(bill(0), 100);
        assert_eq!(bill(1), 100);
        assert_eq!(bill(100_000), 100);
        assert_eq!(bill(100_001), 200);
        assert_eq!(bill(2_345_678), 2400);
    }

    #[test]
    fn classifies_status_codes_for_the_retry_policy() {
        assert_eq!(classify(200), ErrorClass::Success);
        for code in [430, 433, 434, 437, 439, 443, 450] {
            assert_eq!(classify(code), ErrorClass::RunError, "{code}");
        }
        for code in [432, 500] {
            assert_eq!(classify(code), ErrorClass::Throttled, "{code}");
        }
        assert_eq!(classify(435), ErrorClass::CallerError);
        assert_eq!(
            error_message(r#"{"errorMessage":"boom","statusCode":430}"#),
            "boom"
        );
        assert_eq!(error_message("plain"), "plain");
    }

    #[test]
    fn api3_billing_rounds_up_to_the_millisecond() {
        let bill = |micros| Billing::PerMs.bill_ms(Duration::from_micros(micros));
        assert_eq!(bill(0), 1);
        assert_eq!(bill(1_000), 1);
        assert_eq!(bill(1_001), 2);
        assert_eq!(bill(2_345_678), 2346);
    }
}
