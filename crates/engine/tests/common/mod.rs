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
        // Sandboxed functions run as a uid of their own, which reads the code as "other".
        set_mode(code.path(), 0o755);
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
            runtime_name: String::new(),
            handler: "index.main_handler".into(),
            code_dir: self.code.path().to_owned(),
            memory_mb: 128,
            timeout: Duration::from_secs(10),
            init_timeout: Duration::from_secs(30),
            environment: vec![("GREETING".into(), "hello".into())],
            region: "ap-guangzhou".into(),
            network: false,
            reserved_concurrency_mb: None,
        }
    }
}

/// Sets the permission bits of `path`.
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
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

/// The instance a handler ran in: its pid as it sees it and its PID namespace
/// (`/proc/self/ns/pid`). Sandboxed, every instance has a namespace of its own and its runtime
/// is pid 2 in it; unsandboxed, the namespace is the host's and the pid is the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceId {
    pub pid: u32,
    pub namespace: String,
}

impl InstanceId {
    /// From a handler's `{"pid": ..., "ns": ...}`, where `ns` is `readlink /proc/self/ns/pid`.
    pub fn of(value: &Value) -> InstanceId {
        InstanceId {
            pid: pid_of(value),
            namespace: value["ns"].as_str().expect("ns in result").to_owned(),
        }
    }

    /// From a line `<label> <pid> <namespace>` of `log` (lines may carry a console prefix).
    pub fn printed(log: &str, label: &str) -> InstanceId {
        log.lines()
            .find_map(|line| {
                let (_, rest) = line.split_once(&format!("{label} "))?;
                let mut words = rest.split_whitespace();
                let pid = words.next()?.parse().ok()?;
                let namespace = words.next()?.to_owned();
                Some(InstanceId { pid, namespace })
            })
            .unwrap_or_else(|| panic!("no `{label} <pid> <ns>` line in log:\n{log}"))
    }

    /// Whether nothing of the instance runs any more: unsandboxed its process, sandboxed every
    /// process of its PID namespace (children included) is gone or a zombie.
    pub fn gone(&self) -> bool {
        if self.namespace == pid_namespace_of("self").unwrap_or_default() {
            return not_running(self.pid);
        }
        processes_in_namespace(&self.namespace)
            .into_iter()
            .all(not_running)
    }
}

fn pid_namespace_of(pid: &str) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
    Some(link.to_string_lossy().into_owned())
}

/// Host pids of the processes in the PID namespace `namespace` (`pid:[inode]`).
pub fn processes_in_namespace(namespace: &str) -> Vec<u32> {
    host_pids()
        .into_iter()
        .filter(|pid| pid_namespace_of(&pid.to_string()).as_deref() == Some(namespace))
        .collect()
}

fn host_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// The contents of `/tmp/<name>` as some process on the host sees it: a sandboxed handler's
/// `/tmp` is private, and reachable from the host only through `/proc/<pid>/root`.
pub fn tmp_file(name: &str) -> Option<String> {
    host_pids()
        .into_iter()
        .find_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/root/tmp/{name}")).ok())
}

/// A name for a file in a handler's `/tmp` that no other test uses.
pub fn unique_name(label: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("nimbus-test-{}-{n}-{label}", std::process::id())
}
