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
//! # Limitations
//! - Async events run once each; SCF's retry policy, dead letters and back-pressure are not
//!   built yet. An event refused for concurrency (432) waits and tries again, for at most
//!   [`CONCURRENCY_RETRY_LIMIT`].
//! - Invocation records are written before a synchronous call answers (one small commit); a
//!   batching writer would take that off the hot path.

use std::sync::Arc;
use std::time::Duration;

use nimbus_control::{Control, ControlError, FunctionSettings, Limits};
use nimbus_engine::{
    Engine, FunctionSpec, InvocationOutcome, InvocationRequest, InvocationResult, Runtime,
};
use nimbus_store::{
    AsyncEvent, FunctionQuery, FunctionRecord, InvocationQuery, InvocationRecord, InvocationStatus,
    InvokeType,
};
use tracing::Instrument as _;

use crate::error::{ApiError, internal};

/// How long an async event refused for concurrency keeps retrying.
pub const CONCURRENCY_RETRY_LIMIT: Duration = Duration::from_secs(600);

/// How a dialect bills duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Billing {
    /// Rounded up to the next 100 ms (legacy API 2.0).
    Per100Ms,
}

impl Billing {
    /// Billed milliseconds for a duration.
    pub fn bill_ms(self, duration: Duration) -> u64 {
        let micros = duration.as_micros();
        let ms = micros.div_ceil(1000).max(1);
        let billed = match self {
            Billing::Per100Ms => ms.div_ceil(100) * 100,
        };
        u64::try_from(billed).unwrap_or(u64::MAX)
    }
}

/// The services a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct Platform {
    control: Control,
    engine: Arc<Engine>,
    region: String,
}

impl Platform {
    /// Creates the service.
    pub fn new(control: Control, engine: Arc<Engine>, region: String) -> Platform {
        Platform {
            control,
            engine,
            region,
        }
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
        let platform = self.clone();
        let span = tracing::info_span!(
            "async_invocation",
            request_id = %event.request_id,
            function = %event.function_name
        );
        tokio::spawn(async move { platform.run_async(event, billing).await }.instrument(span));
    }

    async fn run_async(&self, event: AsyncEvent, billing: Billing) {
        let start_time = nimbus_store::now_ms();
        let record = match self
            .control
            .get_function(&event.namespace, &event.function_name)
            .await
        {
            Ok(record) => record,
            Err(ControlError::FunctionNotFound(_)) => {
                let entry = missing_function_record(&event, start_time);
                self.finish_async(entry).await;
                return;
            }
            Err(error) => {
                // The event stays pending and runs again at the next start.
                tracing::error!(error = %error, "async event could not be started");
                return;
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
        let entry = invocation_record(&record, &outcome, InvokeType::Event, start_time, bill_ms);
        self.finish_async(entry).await;
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
    let err_msg = serde_json::json!({
        "errorCode": -1,
        "errorMessage": format!("function {} was deleted before the event ran", event.function_name),
        "requestId": event.request_id,
        "statusCode": 435,
    });
    InvocationRecord {
        request_id: event.request_id.clone(),
        namespace: event.namespace.clone(),
        function_name: event.function_name.clone(),
        invoke_type: InvokeType::Event,
        status: InvocationStatus::Failed,
        start_time,
        ret_code: 435,
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
}
