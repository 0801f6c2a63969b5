//! The platform service behind both dialects: function management (through control, retiring
//! warm instances after a change), synchronous and asynchronous invocation (through the
//! engine), and the invocation records that `GetFunctionLogs` reads.
//!
//! ```text
//!   sync:   resolve function ─► engine.invoke ─► record ─► answer
//!   async:  resolve function ─► commit event ─► answer {requestId}
//!                                    └─► background task: engine.invoke ─► record + forget event
//! ```
//!
//! A running async event can be terminated: its task is told through a one-shot channel, drops
//! the engine's invocation (which kills the instance) and records the event as `ABORTED`.
//!
//! # Limitations
//! - Async events run once each; SCF's retry policy, dead letters and back-pressure are not
//!   built yet. An event refused for concurrency (432) waits and tries again, for at most
//!   [`CONCURRENCY_RETRY_LIMIT`].
//! - Termination always kills at once; `GraceShutdown` (SIGTERM first) is not honoured.
//! - Invocation records are written before a synchronous call answers (one small commit); a
//!   batching writer would take that off the hot path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_control::{Control, ControlError, FunctionSettings, Limits};
use nimbus_engine::{
    Engine, FunctionSpec, InvocationOutcome, InvocationRequest, InvocationResult, Runtime,
};
use nimbus_store::{
    AsyncEvent, FunctionQuery, FunctionRecord, InvocationQuery, InvocationRecord, InvocationStatus,
    InvokeType, NamespaceRecord,
};
use tokio::sync::oneshot;
use tracing::Instrument as _;

use crate::error::{ApiError, internal};

/// How long an async event refused for concurrency keeps retrying.
pub const CONCURRENCY_RETRY_LIMIT: Duration = Duration::from_secs(600);

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

/// What this node allows, as `GetAccount` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountLimits {
    /// Live instances per function.
    pub concurrency: u32,
    /// Memory of all live instances together, MB.
    pub memory_budget_mb: u64,
}

/// A stop request for a running async event, answered once the event is recorded as aborted.
type StopRequest = oneshot::Sender<oneshot::Sender<()>>;

/// The services a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct Platform {
    control: Control,
    engine: Arc<Engine>,
    region: String,
    limits: AccountLimits,
    /// Async events with a task, by request id.
    running: Arc<Mutex<HashMap<String, StopRequest>>>,
}

impl Platform {
    /// Creates the service.
    pub fn new(
        control: Control,
        engine: Arc<Engine>,
        region: String,
        limits: AccountLimits,
    ) -> Platform {
        Platform {
            control,
            engine,
            region,
            limits,
            running: Arc::default(),
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
    /// `Internal`.
    pub async fn list_functions(
        &self,
        query: FunctionQuery,
    ) -> Result<(u64, Vec<FunctionRecord>), ApiError> {
        Ok(self.control.list_functions(query).await?)
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

    /// Stops a running async event; it is recorded as `ABORTED` before this returns.
    ///
    /// # Errors
    /// `AsyncEventNotFound` (unknown, or of another function), `AsyncEventFinished`, or
    /// `Internal`.
    pub async fn terminate_async_event(
        &self,
        namespace: &str,
        name: &str,
        request_id: &str,
    ) -> Result<(), ApiError> {
        let record = self.async_event(request_id).await?;
        if record.namespace != namespace || record.function_name != name {
            return Err(ApiError::AsyncEventNotFound(request_id.to_owned()));
        }
        let stop = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(request_id);
        let Some(stop) = stop else {
            return Err(ApiError::AsyncEventFinished(request_id.to_owned()));
        };
        let (done, recorded) = oneshot::channel();
        if stop.send(done).is_err() {
            return Err(ApiError::AsyncEventFinished(request_id.to_owned()));
        }
        // The task answers once the ABORTED record is written (or drops `done` if the event
        // finished in the same instant).
        match recorded.await {
            Ok(()) => {
                tracing::info!(request_id, "async event terminated");
                Ok(())
            }
            Err(_) => Err(ApiError::AsyncEventFinished(request_id.to_owned())),
        }
    }

    /// Runs an invocation and waits for it; the record is stored before this returns.
    ///
    /// # Errors
    /// `FunctionNotFound` or `Internal`. A function that fails is an `Ok` outcome.
    pub async fn invoke_sync(
        &self,
        namespace: &str,
        name: &str,
        event: String,
        billing: Billing,
    ) -> Result<(InvocationOutcome, u64), ApiError> {
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
        self.control
            .store()
            .record_invocation(entry)
            .await
            .map_err(|e| internal(&e))?;
        Ok((outcome, bill_ms))
    }

    /// Accepts an async invocation: the event is committed before this returns its request
    /// id, then runs in the background.
    ///
    /// # Errors
    /// `FunctionNotFound` or `Internal` (nothing was accepted then).
    pub async fn invoke_async(
        &self,
        namespace: &str,
        name: &str,
        event: String,
        billing: Billing,
    ) -> Result<String, ApiError> {
        self.control.get_function(namespace, name).await?;
        let accepted = AsyncEvent {
            request_id: new_request_id(),
            namespace: namespace.to_owned(),
            function_name: name.to_owned(),
            event,
            accepted_time: nimbus_store::now_ms(),
        };
        self.control
            .store()
            .accept_async_event(accepted.clone())
            .await
            .map_err(|e| internal(&e))?;
        let request_id = accepted.request_id.clone();
        self.spawn_async(accepted, billing);
        Ok(request_id)
    }

    /// Runs every async event that was accepted and not finished before the last stop.
    ///
    /// # Errors
    /// `Internal` when the pending events cannot be read.
    pub async fn resume_async_events(&self, billing: Billing) -> Result<usize, ApiError> {
        let pending = self
            .control
            .store()
            .pending_async_events()
            .await
            .map_err(|e| internal(&e))?;
        let count = pending.len();
        for event in pending {
            self.spawn_async(event, billing);
        }
        Ok(count)
    }

    fn spawn_async(&self, event: AsyncEvent, billing: Billing) {
        let (stop, stopped) = oneshot::channel();
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(event.request_id.clone(), stop);
        let platform = self.clone();
        let span = tracing::info_span!(
            "async_invocation",
            request_id = %event.request_id,
            function = %event.function_name
        );
        tokio::spawn(
            async move { platform.run_async(event, billing, stopped).await }.instrument(span),
        );
    }

    async fn run_async(
        &self,
        event: AsyncEvent,
        billing: Billing,
        stopped: oneshot::Receiver<oneshot::Sender<()>>,
    ) {
        let start_time = nimbus_store::now_ms();
        let finished = tokio::select! {
            entry = self.attempt_async(&event, billing, start_time) => entry.map(|e| (e, None)),
            Ok(done) = stopped => Some((aborted_record(&event, start_time), Some(done))),
        };
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&event.request_id);
        let Some((entry, done)) = finished else {
            return;
        };
        self.finish_async(entry).await;
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// Runs an async event to its final record (`None` when it must stay pending).
    async fn attempt_async(
        &self,
        event: &AsyncEvent,
        billing: Billing,
        start_time: i64,
    ) -> Option<InvocationRecord> {
        let record = match self
            .control
            .get_function(&event.namespace, &event.function_name)
            .await
        {
            Ok(record) => record,
            Err(ControlError::FunctionNotFound(_)) => {
                return Some(missing_function_record(event, start_time));
            }
            Err(error) => {
                // The event stays pending and runs again at the next start.
                tracing::error!(error = %error, "async event could not be started");
                return None;
            }
        };
        let spec = self.spec(&record);
        let mut backoff = Duration::from_millis(50);
        let deadline = tokio::time::Instant::now() + CONCURRENCY_RETRY_LIMIT;
        let outcome = loop {
            let request = InvocationRequest {
                request_id: event.request_id.clone(),
                event: event.event.clone(),
            };
            let outcome = self.engine.invoke(&spec, request).await;
            let refused = outcome.result.status_code() == 432;
            if !refused || tokio::time::Instant::now() + backoff > deadline {
                break outcome;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        };
        let bill_ms = billing.bill_ms(outcome.duration);
        Some(invocation_record(
            &record,
            &outcome,
            InvokeType::Event,
            start_time,
            bill_ms,
        ))
    }

    async fn finish_async(&self, entry: InvocationRecord) {
        if let Err(error) = self.control.store().finish_async_event(entry).await {
            tracing::error!(error = %error, "async result could not be stored; it reruns at the next start");
        }
    }

    /// Stops every instance.
    pub async fn shutdown(&self) {
        self.engine.shutdown().await;
    }

    fn spec(&self, record: &FunctionRecord) -> FunctionSpec {
        FunctionSpec {
            namespace: record.namespace.clone(),
            name: record.function_name.clone(),
            version: "$LATEST".to_owned(),
            revision: record.revision,
            runtime: Runtime::Python3,
            handler: record.handler.clone(),
            code_dir: self.control.code_dir(record),
            memory_mb: record.memory_size,
            timeout: Duration::from_secs(u64::from(record.timeout)),
            environment: record.environment.clone(),
            region: self.region.clone(),
        }
    }
}

/// A fresh request id (UUID v4, SCF's format).
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
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
    }
}

fn missing_function_record(event: &AsyncEvent, start_time: i64) -> InvocationRecord {
    let message = format!(
        "function {} was deleted before the event ran",
        event.function_name
    );
    failed_event_record(event, start_time, InvocationStatus::Failed, 435, &message)
}

fn aborted_record(event: &AsyncEvent, start_time: i64) -> InvocationRecord {
    let message = "the async event was terminated by request";
    failed_event_record(event, start_time, InvocationStatus::Aborted, 499, message)
}

fn failed_event_record(
    event: &AsyncEvent,
    start_time: i64,
    status: InvocationStatus,
    status_code: i32,
    message: &str,
) -> InvocationRecord {
    let err_msg = serde_json::json!({
        "errorCode": -1,
        "errorMessage": message,
        "requestId": event.request_id,
        "statusCode": status_code,
    });
    InvocationRecord {
        request_id: event.request_id.clone(),
        namespace: event.namespace.clone(),
        function_name: event.function_name.clone(),
        invoke_type: InvokeType::Event,
        status,
        start_time,
        end_time: nimbus_store::now_ms(),
        ret_code: status_code,
        ret_msg: String::new(),
        err_msg: err_msg.to_string(),
        duration_us: 0,
        bill_duration_ms: 0,
        mem_usage: 0,
        log: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn api3_billing_rounds_up_to_the_millisecond() {
        let bill = |micros| Billing::PerMs.bill_ms(Duration::from_micros(micros));
        assert_eq!(bill(0), 1);
        assert_eq!(bill(1_000), 1);
        assert_eq!(bill(1_001), 2);
        assert_eq!(bill(2_345_678), 2346);
    }
}
