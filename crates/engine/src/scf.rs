//! SCF function status codes and the JSON error object the engine reports for platform-side
//! failures. The shims build the same object for failures inside the instance (430, 437, 443),
//! so every `err_msg` has one shape:
//!
//! ```text
//! {"errorCode":-1,"errorMessage":"...","requestId":"...","statusCode":433}
//! ```
//! (plus `stackTrace` where there is one).

use std::time::Duration;

use crate::InvocationResult;

/// The response is larger than SCF allows (6 MB).
pub(crate) const RESPONSE_TOO_LARGE: u16 = 407;
/// The user's code failed (raised, or a custom runtime posted an error).
pub(crate) const USER_CODE_EXCEPTION: u16 = 430;
/// Concurrency exceeded.
pub(crate) const CONCURRENCY_EXCEEDED: u16 = 432;
/// Execution timed out.
pub(crate) const TIME_LIMIT_REACHED: u16 = 433;
/// The instance used more memory than its function may.
pub(crate) const MEMORY_LIMIT_REACHED: u16 = 434;
/// The user process exited during the invocation.
pub(crate) const PROCESS_EXITED: u16 = 439;
/// The instance failed while starting.
pub(crate) const CONTAINER_INIT_ERROR: u16 = 445;
/// The instance did not start within the init timeout.
pub(crate) const INIT_TIMEOUT: u16 = 450;
/// Anything else that went wrong on the platform side.
pub(crate) const INTERNAL_ERROR: u16 = 500;

/// Largest return value SCF hands back: 6 MB.
pub(crate) const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;

/// A failed result with SCF's error object.
pub(crate) fn failure(status_code: u16, request_id: &str, message: &str) -> InvocationResult {
    failure_with_trace(status_code, request_id, message, None)
}

/// A failed result with SCF's error object, with a `stackTrace` if there is one.
pub(crate) fn failure_with_trace(
    status_code: u16,
    request_id: &str,
    message: &str,
    stack_trace: Option<&str>,
) -> InvocationResult {
    let mut body = serde_json::json!({
        "errorCode": -1,
        "errorMessage": message,
        "requestId": request_id,
        "statusCode": status_code,
    });
    if let Some(trace) = stack_trace {
        body["stackTrace"] = serde_json::Value::from(trace);
    }
    InvocationResult::Failed {
        status_code,
        err_msg: body.to_string(),
    }
}

/// SCF's wording for a concurrency rejection.
pub(crate) fn concurrency_message(function: &str, limit: u32) -> String {
    format!("Function [ {function} ] concurrency exceeded: limit is {limit} instances")
}

/// SCF's refusal of an invocation past the function's reserved concurrency.
pub(crate) fn reserved_message(function: &str, reserved_mb: u32) -> String {
    format!("Function [ {function} ] concurrency exceeded reserved quota {reserved_mb} MB")
}

/// SCF's wording for a refusal because the node's memory budget is spent, in the shape of its
/// concurrency-quota messages.
pub(crate) fn budget_message(function: &str, budget_mb: u64) -> String {
    format!(
        "Function [ {function} ] concurrency exceeded: the node's memory budget of {budget_mb} MB \
         is exhausted"
    )
}

/// The message of status 434, named after SCF's status message.
pub(crate) fn memory_message(memory_mb: u32) -> String {
    format!("MemoryLimitReached: the function used more than its {memory_mb} MB of memory")
}

/// The message of status 450, worded like the timeout message.
pub(crate) fn init_timeout_message(init_timeout: Duration) -> String {
    format!(
        "Function initialization timed out after {} seconds",
        seconds(init_timeout)
    )
}

fn seconds(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        duration.as_secs().to_string()
    } else {
        format!("{:.3}", duration.as_secs_f64())
    }
}

/// SCF's wording for a timeout.
pub(crate) fn timeout_message(timeout: Duration) -> String {
    format!("Invoking task timed out after {} seconds", seconds(timeout))
}

/// The message of status 445 when a custom runtime's package has no executable `bootstrap`.
pub(crate) const BOOTSTRAP_MISSING_MESSAGE: &str = "bootstrap file not found or not \
     executable: a CustomRuntime code package must hold an executable file named bootstrap at \
     its root";

/// The message of status 445 when a custom runtime posted `/runtime/init/error`.
pub(crate) fn init_error_message(posted: &str) -> String {
    format!("ContainerInitError: the runtime reported an initialization error: {posted}")
}

/// SCF's wording for a process that died during an invocation.
pub(crate) const PROCESS_EXITED_MESSAGE: &str = "User process exit when running";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_scf_error_object() {
        let InvocationResult::Failed {
            status_code,
            err_msg,
        } = failure(433, "req-1", "late")
        else {
            panic!("expected a failure");
        };
        assert_eq!(status_code, 433);
        let body: serde_json::Value = serde_json::from_str(&err_msg).expect("valid json");
        assert_eq!(body["errorCode"], -1);
        assert_eq!(body["errorMessage"], "late");
        assert_eq!(body["requestId"], "req-1");
        assert_eq!(body["statusCode"], 433);
    }

    #[test]
    fn timeout_message_names_whole_seconds() {
        assert_eq!(
            timeout_message(Duration::from_secs(3)),
            "Invoking task timed out after 3 seconds"
        );
        assert_eq!(
            timeout_message(Duration::from_millis(1500)),
            "Invoking task timed out after 1.500 seconds"
        );
    }

    #[test]
    fn failure_with_trace_keeps_it() {
        let InvocationResult::Failed { err_msg, .. } =
            failure_with_trace(434, "r", "m", Some("trace"))
        else {
            panic!("expected a failure");
        };
        let body: serde_json::Value = serde_json::from_str(&err_msg).expect("valid json");
        assert_eq!(body["stackTrace"], "trace");
        assert_eq!(body["statusCode"], 434);
    }

    #[test]
    fn budget_and_memory_messages_name_their_limits() {
        assert!(budget_message("f", 4096).starts_with("Function [ f ] concurrency exceeded"));
        assert!(budget_message("f", 4096).contains("memory budget of 4096 MB"));
        assert!(memory_message(128).starts_with("MemoryLimitReached"));
        assert_eq!(
            init_timeout_message(Duration::from_secs(2)),
            "Function initialization timed out after 2 seconds"
        );
    }

    #[test]
    fn concurrency_message_starts_like_scf() {
        assert!(concurrency_message("f", 1).starts_with("Function [ f ] concurrency exceeded"));
    }
}
