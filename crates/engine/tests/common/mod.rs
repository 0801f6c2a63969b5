//! Helpers shared by the integration tests that run real interpreters.

#![allow(
    dead_code,
    reason = "each test binary uses its own subset of these helpers"
)]

use std::path::Path;
use std::time::Duration;

use nimbus_engine::{
    Engine, EngineConfig, FunctionSpec, InvocationOutcome, InvocationRequest, InvocationResult,
    Runtime, resolve_node, resolve_python,
};
use serde_json::Value;
use tempfile::TempDir;

/// A function's code directory and the engine's runtime directory, removed on drop.
pub struct Fixture {
    pub code: TempDir,
    pub runtime: TempDir,
}

impl Fixture {
    /// A code directory holding `files` (name, contents).
    pub fn new(files: &[(&str, &str)]) -> Fixture {
        let code = tempfile::tempdir().expect("code dir");
        for (name, contents) in files {
            let path = code.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create code subdirectory");
            }
            std::fs::write(path, contents).expect("write code file");
        }
        Fixture {
            code,
            runtime: tempfile::tempdir().expect("runtime dir"),
        }
    }

    /// A configuration with both interpreters resolved.
    pub async fn config(&self) -> EngineConfig {
        let python = resolve_python("python3").await.expect("python3 resolves");
        let mut config = EngineConfig::new(python, self.runtime.path());
        config.node = Some(resolve_node("node").await.expect("node resolves"));
        config
    }

    pub async fn engine(&self) -> Engine {
        Engine::new(self.config().await).expect("engine starts")
    }

    /// A function of `runtime` whose handler is `index.main_handler`.
    pub fn spec(&self, name: &str, runtime: Runtime) -> FunctionSpec {
        FunctionSpec {
            namespace: "default".into(),
            name: name.into(),
            version: "$LATEST".into(),
            revision: 1,
            runtime,
            handler: "index.main_handler".into(),
            code_dir: self.code.path().to_owned(),
            memory_mb: 128,
            timeout: Duration::from_secs(10),
            init_timeout: Duration::from_secs(30),
            environment: vec![("GREETING".into(), "hello".into())],
            region: "ap-guangzhou".into(),
        }
    }
}

pub fn request(id: &str, event: Value) -> InvocationRequest {
    InvocationRequest {
        request_id: id.into(),
        event: event.to_string(),
    }
}

/// The return value of a successful invocation.
pub fn ret(outcome: &InvocationOutcome) -> Value {
    match &outcome.result {
        InvocationResult::Success { ret_msg } => {
            serde_json::from_str(ret_msg).expect("ret_msg is JSON")
        }
        InvocationResult::Failed { err_msg, .. } => {
            panic!("invocation failed: {err_msg}\nlog:\n{}", outcome.log)
        }
    }
}

/// The status code and error object of a failed invocation.
pub fn error(outcome: &InvocationOutcome) -> (u16, Value) {
    match &outcome.result {
        InvocationResult::Failed {
            status_code,
            err_msg,
        } => (
            *status_code,
            serde_json::from_str(err_msg).expect("err_msg is JSON"),
        ),
        InvocationResult::Success { ret_msg } => {
            panic!("unexpected success: {ret_msg}\nlog:\n{}", outcome.log)
        }
    }
}

/// Gone or a zombie: no longer running.
pub fn not_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

pub fn reaped(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

pub async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

pub fn pid_of(value: &Value) -> u32 {
    let pid = value["pid"].as_u64().expect("pid in result");
    u32::try_from(pid).expect("pid fits")
}

/// The number after `<label> ` on a line of `log` (lines may carry a console prefix).
pub fn printed_pid(log: &str, label: &str) -> u32 {
    log.lines()
        .find_map(|line| {
            let (_, rest) = line.split_once(&format!("{label} "))?;
            rest.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no `{label}` line in log:\n{log}"))
}

/// Processes whose parent is this test process, as its threads' `children` files list them.
pub fn child_processes() -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}
