//! The example's `bootstrap`, built by cargo, run by the real engine as a `CustomRuntime`
//! function.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use nimbus_engine::{
    Engine, EngineConfig, FunctionSpec, InvocationOutcome, InvocationRequest, InvocationResult,
    Runtime, resolve_python,
};
use serde_json::{Value, json};

fn request(id: &str, event: Value) -> InvocationRequest {
    InvocationRequest {
        request_id: id.to_owned(),
        event: event.to_string(),
    }
}

fn result(outcome: &InvocationOutcome) -> (u16, Value) {
    let text = match &outcome.result {
        InvocationResult::Success { ret_msg } => ret_msg,
        InvocationResult::Failed { err_msg, .. } => err_msg,
    };
    let value = serde_json::from_str(text)
        .unwrap_or_else(|err| panic!("not JSON ({err}): {text}\nlog:\n{}", outcome.log));
    (outcome.result.status_code(), value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_serves_events_through_the_engine() {
    // The package: just the binary, named `bootstrap`, readable by the function's own uid.
    let code = tempfile::tempdir().expect("code dir");
    let runtime = tempfile::tempdir().expect("runtime dir");
    std::fs::set_permissions(code.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod code dir");
    std::fs::copy(
        env!("CARGO_BIN_EXE_bootstrap"),
        code.path().join("bootstrap"),
    )
    .expect("copy bootstrap");

    let python = resolve_python("python3").await.expect("python3 resolves");
    let engine = Engine::new(EngineConfig::new(python, runtime.path())).expect("engine starts");
    let spec = FunctionSpec {
        namespace: "default".into(),
        name: "custom-rust".into(),
        version: "$LATEST".into(),
        revision: 1,
        runtime: Runtime::Custom,
        runtime_name: String::new(),
        handler: "main".into(),
        code_dir: code.path().to_owned(),
        memory_mb: 128,
        timeout: Duration::from_secs(5),
        init_timeout: Duration::from_secs(10),
        environment: Vec::new(),
        region: "ap-guangzhou".into(),
        network: false,
        reserved_concurrency_mb: None,
    };

    let first = engine
        .invoke(&spec, request("r-1", json!({"name": "nimbus"})))
        .await;
    let (status, value) = result(&first);
    assert_eq!(status, 200, "{}", first.log);
    assert_eq!(value["greeting"], "hello nimbus");
    assert_eq!(value["request_id"], "r-1");
    assert_eq!(value["memory_limit_in_mb"], "128");
    assert_eq!(value["time_limit_in_ms"], "5000");
    assert_eq!(value["handler"], "main");
    assert!(first.log.contains("custom-rust: starting"), "{}", first.log);
    assert!(
        first.log.contains("custom-rust: handling r-1"),
        "{}",
        first.log
    );

    let failed = engine
        .invoke(&spec, request("r-2", json!({"fail": "not today"})))
        .await;
    let (status, error) = result(&failed);
    assert_eq!(status, 430);
    assert_eq!(error["errorMessage"], "not today");
    assert!(!failed.cold_start);
    engine.shutdown().await;
}
