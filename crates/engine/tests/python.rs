//! The engine against a real Python 3: handlers written into temporary directories, invoked
//! through the public API, in the sandbox (the default; these tests run as root). Every test
//! shuts its engine down, which reaps every instance.
//!
//! Inside the sandbox a handler sees its own PID namespace, so instances are told apart and
//! checked for leftovers by [`InstanceId`] (pid and namespace), and a handler signals that it
//! runs through a file in its private `/tmp`, which the test finds through `/proc`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{InstanceId, tmp_file, unique_name};
use nimbus_engine::{
    Engine, EngineConfig, FunctionSpec, InvocationOutcome, InvocationRequest, InvocationResult,
    Runtime, resolve_python,
};
use serde_json::Value;
use tempfile::TempDir;

/// A function's code directory and the engine's runtime directory, removed on drop.
struct Fixture {
    code: TempDir,
    runtime: TempDir,
}

impl Fixture {
    fn new(index_py: &str) -> Fixture {
        Fixture::new_in(&std::env::temp_dir(), index_py)
    }

    fn new_in(parent: &Path, index_py: &str) -> Fixture {
        let code = tempfile::tempdir_in(parent).expect("code dir");
        // Sandboxed functions run as a uid of their own, which reads the code as "other".
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::Permissions::from_mode(0o755);
            std::fs::set_permissions(code.path(), mode).expect("chmod");
        }
        std::fs::write(code.path().join("index.py"), index_py).expect("write handler");
        Fixture {
            code,
            runtime: tempfile::tempdir_in(parent).expect("runtime dir"),
        }
    }

    async fn config(&self) -> EngineConfig {
        let python = resolve_python("python3").await.expect("python3 resolves");
        EngineConfig::new(python, self.runtime.path())
    }

    async fn engine(&self) -> Engine {
        Engine::new(self.config().await).expect("engine starts")
    }

    fn spec(&self, name: &str) -> FunctionSpec {
        FunctionSpec {
            namespace: "default".into(),
            name: name.into(),
            version: "$LATEST".into(),
            revision: 1,
            runtime: Runtime::Python3,
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

fn request(id: &str, event: Value) -> InvocationRequest {
    InvocationRequest {
        request_id: id.into(),
        event: event.to_string(),
    }
}

fn ret(outcome: &InvocationOutcome) -> Value {
    match &outcome.result {
        InvocationResult::Success { ret_msg } => {
            serde_json::from_str(ret_msg).expect("ret_msg is JSON")
        }
        InvocationResult::Failed { err_msg, .. } => {
            panic!("invocation failed: {err_msg}\nlog:\n{}", outcome.log)
        }
    }
}

fn error(outcome: &InvocationOutcome) -> (u16, Value) {
    match &outcome.result {
        InvocationResult::Failed {
            status_code,
            err_msg,
        } => (
            *status_code,
            serde_json::from_str(err_msg).expect("err_msg is JSON"),
        ),
        InvocationResult::Success { ret_msg } => panic!("unexpected success: {ret_msg}"),
    }
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..250 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

const ECHO: &str = r#"
import json, os, sys
def main_handler(event, context):
    return {"event": event, "context": context, "pid": os.getpid(), "cwd": os.getcwd(),
            "stdin": sys.stdin.read(), "uid": os.getuid(),
            "env": {k: os.environ.get(k) for k in [
                "SCF_FUNCTIONNAME", "SCF_FUNCTIONVERSION", "SCF_NAMESPACE", "SCF_RUNTIME",
                "TENCENTCLOUD_REGION", "TENCENTCLOUD_RUNENV", "TENCENTCLOUD_TZ", "GREETING",
                "USER_CODE_ROOT", "PYTHONPATH", "_NIMBUS_LOG_TOKEN", "HOME", "CARGO"]}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returns_handler_value_as_json() {
    let fixture = Fixture::new(
        "def main_handler(event, context):\n    return {'sum': event['a'] + event['b'], 'list': [1, 'x', None]}\n",
    );
    let engine = fixture.engine().await;
    let outcome = engine
        .invoke(
            &fixture.spec("adder"),
            request("r1", serde_json::json!({"a": 2, "b": 3})),
        )
        .await;
    assert_eq!(
        ret(&outcome),
        serde_json::json!({"sum": 5, "list": [1, "x", null]})
    );
    assert_eq!(outcome.request_id, "r1");
    assert!(outcome.cold_start);
    assert!(outcome.duration > Duration::ZERO);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_packages_are_importable_without_running_site() {
    // The interpreter starts with -S (no .pth files run); the shim adds site-packages itself,
    // after the standard library, and the builtins site would add for exit() and quit().
    let fixture = Fixture::new(
        "import os, sys\n\
         def main_handler(event, context):\n\
         \x20   stdlib = os.path.dirname(os.__file__)\n\
         \x20   site = [p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))]\n\
         \x20   return {'no_site': sys.flags.no_site, 'site': len(site) > 0,\n\
         \x20           'after_stdlib': all(sys.path.index(p) > sys.path.index(stdlib) for p in site),\n\
         \x20           'quit': callable(quit) and callable(exit), 'code_first': sys.path[0]}\n",
    );
    let engine = fixture.engine().await;
    let outcome = engine
        .invoke(&fixture.spec("site"), request("r1", serde_json::json!({})))
        .await;
    assert_eq!(
        ret(&outcome),
        serde_json::json!({"no_site": 1, "site": true, "after_stdlib": true, "quit": true,
                           "code_first": "/var/user"}),
        "{outcome:?}"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_larger_than_one_read_arrive_whole() {
    // The shim reads 64 KiB at a time: a 3 MB event takes many reads, and the small event
    // after it must not see any of its bytes.
    let fixture = Fixture::new(
        "def main_handler(event, context):\n    return [len(event['text']), event['text'][-3:]]\n",
    );
    let engine = fixture.engine().await;
    let spec = fixture.spec("sizes");
    for (id, text) in [
        ("small", "abc".to_owned()),
        ("large", format!("{}xyz", "a".repeat(3 << 20))),
        ("again", "def".to_owned()),
    ] {
        let outcome = engine
            .invoke(&spec, request(id, serde_json::json!({ "text": text })))
            .await;
        let tail = &text[text.len() - 3..];
        assert_eq!(ret(&outcome), serde_json::json!([text.len(), tail]), "{id}");
    }
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_return_value_is_json_encoded() {
    let fixture = Fixture::new("def main_handler(event, context):\n    return 'hi'\n");
    let engine = fixture.engine().await;
    let outcome = engine
        .invoke(&fixture.spec("s"), request("r1", Value::Null))
        .await;
    assert_eq!(
        outcome.result,
        InvocationResult::Success {
            ret_msg: "\"hi\"".into()
        }
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_context_and_environment_reach_handler() {
    let fixture = Fixture::new(ECHO);
    let engine = fixture.engine().await;
    let mut spec = fixture.spec("echo");
    spec.environment
        .push(("SCF_FUNCTIONNAME".into(), "spoofed".into()));
    let event = serde_json::json!({"key": "value", "n": [1, 2]});
    let outcome = engine
        .invoke(&spec, request("req-ctx", event.clone()))
        .await;
    let value = ret(&outcome);

    assert_eq!(value["event"], event);
    let context = &value["context"];
    assert_eq!(context["request_id"], "req-ctx");
    assert_eq!(context["memory_limit_in_mb"], 128);
    assert_eq!(context["time_limit_in_ms"], 10_000);
    assert_eq!(context["function_name"], "echo");
    assert_eq!(context["function_version"], "$LATEST");
    assert_eq!(context["namespace"], "default");
    assert_eq!(context["tencentcloud_region"], "ap-guangzhou");
    assert!(context["tencentcloud_appid"].is_string());
    assert!(context["tencentcloud_uin"].is_string());
    assert_eq!(context["environ"], "SCF_NAMESPACE=default;GREETING=hello");
    let environment: Value =
        serde_json::from_str(context["environment"].as_str().expect("string")).expect("json");
    assert_eq!(environment["GREETING"], "hello");

    let env = &value["env"];
    // The sandbox mounts the code at /var/user, as SCF does.
    let code_dir = "/var/user";
    assert_eq!(env["SCF_FUNCTIONNAME"], "echo");
    assert_eq!(env["SCF_FUNCTIONVERSION"], "$LATEST");
    assert_eq!(env["SCF_NAMESPACE"], "default");
    assert!(
        env["SCF_RUNTIME"]
            .as_str()
            .expect("set")
            .starts_with("Python3.")
    );
    assert_eq!(env["TENCENTCLOUD_REGION"], "ap-guangzhou");
    assert_eq!(env["TENCENTCLOUD_RUNENV"], "SCF");
    assert_eq!(env["TENCENTCLOUD_TZ"], "UTC");
    assert_eq!(env["GREETING"], "hello");
    assert_eq!(env["USER_CODE_ROOT"], code_dir);
    assert_eq!(env["PYTHONPATH"], code_dir);
    assert_eq!(env["HOME"], "/tmp");
    assert_eq!(env["_NIMBUS_LOG_TOKEN"], Value::Null);
    assert_eq!(env["CARGO"], Value::Null, "the engine's environment leaked");
    assert_eq!(value["cwd"], code_dir);
    assert_eq!(value["stdin"], "");
    assert_ne!(value["uid"], 0, "the handler runs as root");
    engine.shutdown().await;
}

const COUNTER: &str = r#"
import os
count = 0
def main_handler(event, context):
    global count
    count += 1
    return {"count": count, "pid": os.getpid(), "ns": os.readlink("/proc/self/ns/pid")}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_instance_keeps_module_state() {
    let fixture = Fixture::new(COUNTER);
    let engine = fixture.engine().await;
    let spec = fixture.spec("counter");
    let first = engine.invoke(&spec, request("r1", Value::Null)).await;
    let second = engine.invoke(&spec, request("r2", Value::Null)).await;
    assert_eq!(ret(&first)["count"], 1);
    assert_eq!(ret(&second)["count"], 2);
    assert!(first.cold_start);
    assert!(!second.cold_start);
    assert_eq!(InstanceId::of(&ret(&first)), InstanceId::of(&ret(&second)));
    assert_eq!(engine.live_instances(), 1);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_bump_starts_fresh_instance() {
    let fixture = Fixture::new(COUNTER);
    let engine = fixture.engine().await;
    let mut spec = fixture.spec("counter");
    let first = engine.invoke(&spec, request("r1", Value::Null)).await;
    spec.revision = 2;
    let second = engine.invoke(&spec, request("r2", Value::Null)).await;
    assert_eq!(ret(&second)["count"], 1);
    assert!(second.cold_start);
    let old = InstanceId::of(&ret(&first));
    eventually("the old revision's instance is gone", || old.gone()).await;
    assert_eq!(engine.live_instances(), 1);
    engine.shutdown().await;
}

/// The trace's first frame is the handler's file and no frame is the shim's, as on SCF.
fn assert_trace_starts_in_user_code(trace: &str) {
    assert!(!trace.contains("bootstrap.py"), "the shim shows: {trace}");
    let first = trace
        .lines()
        .find(|line| line.trim_start().starts_with("File \""))
        .unwrap_or_else(|| panic!("no frame: {trace}"));
    assert!(
        first
            .trim_start()
            .starts_with("File \"/var/user/index.py\""),
        "{trace}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exception_is_430_with_stack_trace() {
    let fixture = Fixture::new("def main_handler(event, context):\n    raise ValueError('boom')\n");
    let engine = fixture.engine().await;
    let outcome = engine
        .invoke(&fixture.spec("raiser"), request("r-exc", Value::Null))
        .await;
    let (status, body) = error(&outcome);
    assert_eq!(status, 430);
    assert_eq!(body["statusCode"], 430);
    assert_eq!(body["errorCode"], -1);
    assert_eq!(body["requestId"], "r-exc");
    assert_eq!(body["errorMessage"], "user code exception caught");
    let trace = body["stackTrace"].as_str().expect("stack trace");
    assert!(trace.ends_with("ValueError: boom"), "{trace}");
    // SCF's text exactly: compact, keys in its order (serde_json's maps sort them, and SCF's
    // order is alphabetical).
    let InvocationResult::Failed { err_msg, .. } = &outcome.result else {
        unreachable!("error() checked it failed")
    };
    let expected = serde_json::to_string(&serde_json::json!({
        "errorCode": -1,
        "errorMessage": "user code exception caught",
        "requestId": "r-exc",
        "stackTrace": trace,
        "statusCode": 430,
    }))
    .expect("encode");
    assert_eq!(err_msg, &expected);
    assert_trace_starts_in_user_code(trace);
    assert!(outcome.log.contains("ValueError: boom"), "{}", outcome.log);

    // The instance survives a user exception.
    let again = engine
        .invoke(&fixture.spec("raiser"), request("r2", Value::Null))
        .await;
    assert!(!again.cold_start);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unserialisable_return_value_is_430() {
    let fixture = Fixture::new("def main_handler(event, context):\n    return {1, 2}\n");
    let engine = fixture.engine().await;
    let outcome = engine
        .invoke(&fixture.spec("set"), request("r1", Value::Null))
        .await;
    let (status, body) = error(&outcome);
    assert_eq!(status, 430);
    let message = body["errorMessage"].as_str().expect("message");
    assert!(message.contains("not JSON serializable"), "{message}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circular_return_value_fails_as_json_dumps_would_and_the_next_call_succeeds() {
    // The shim encodes results with an encoder it keeps between calls, which remembers what
    // it was visiting when it failed: the next result, made of the same objects, must still
    // be encoded (and not taken for a cycle).
    let fixture = Fixture::new(
        "shared = {'inner': []}\n\
         def main_handler(event, context):\n    \
         shared['inner'].clear()\n    \
         shared['inner'].append(shared if event.get('loop') else event.get('n'))\n    \
         return shared\n",
    );
    let engine = fixture.engine().await;
    let spec = fixture.spec("circular");
    let outcome = engine
        .invoke(&spec, request("r1", serde_json::json!({"loop": true})))
        .await;
    let (status, body) = error(&outcome);
    assert_eq!(status, 430);
    let message = body["errorMessage"].as_str().expect("message");
    assert_eq!(
        message,
        "return value is not JSON serializable: Circular reference detected"
    );
    let again = engine
        .invoke(&spec, request("r2", serde_json::json!({"n": 2})))
        .await;
    assert!(!again.cold_start, "the same instance answers");
    assert_eq!(ret(&again), serde_json::json!({"inner": [2]}));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_handler_file_is_437() {
    let fixture = Fixture::new("def main_handler(event, context):\n    return 1\n");
    let engine = fixture.engine().await;
    let mut spec = fixture.spec("nofile");
    spec.handler = "missing.main_handler".into();
    let outcome = engine.invoke(&spec, request("r1", Value::Null)).await;
    let (status, body) = error(&outcome);
    assert_eq!(status, 437);
    let message = body["errorMessage"].as_str().expect("message");
    assert!(message.contains("'missing'"), "{message}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_handler_function_is_437() {
    let fixture = Fixture::new("def other(event, context):\n    return 1\n");
    let engine = fixture.engine().await;
    let outcome = engine
        .invoke(&fixture.spec("nofunc"), request("r1", Value::Null))
        .await;
    let (status, body) = error(&outcome);
    assert_eq!(status, 437);
    let message = body["errorMessage"].as_str().expect("message");
    assert!(
        message.contains("module 'index' has no attribute 'main_handler'"),
        "{message}"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exception_at_import_is_443_and_import_is_retried() {
    let fixture = Fixture::new(
        "import os\nif not os.path.exists('fixed'):\n    raise RuntimeError('at import')\n\
         def main_handler(event, context):\n    return 'imported'\n",
    );
    let engine = fixture.engine().await;
    let spec = fixture.spec("badimport");
    let outcome = engine.invoke(&spec, request("r1", Value::Null)).await;
    let (status, body) = error(&outcome);
    assert_eq!(status, 443);
    let trace = body["stackTrace"].as_str().expect("stack trace");
    assert!(trace.contains("RuntimeError: at import"), "{trace}");
    assert_trace_starts_in_user_code(trace);

    std::fs::write(fixture.code.path().join("fixed"), "").expect("write");
    let retried = engine.invoke(&spec, request("r2", Value::Null)).await;
    assert_eq!(ret(&retried), "imported");
    assert!(!retried.cold_start);
    engine.shutdown().await;
}

const PRINTER: &str = r#"
import sys
def main_handler(event, context):
    print("out:" + event["msg"])
    print("err:" + event["msg"], file=sys.stderr)
    sys.stdout.write("tail:" + event["msg"])
    return event["msg"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_land_in_their_own_invocation_log() {
    let fixture = Fixture::new(PRINTER);
    let engine = fixture.engine().await;
    let spec = fixture.spec("printer");
    let first = engine
        .invoke(&spec, request("r1", serde_json::json!({"msg": "first"})))
        .await;
    let second = engine
        .invoke(&spec, request("r2", serde_json::json!({"msg": "second"})))
        .await;

    for (outcome, own, other) in [(&first, "first", "second"), (&second, "second", "first")] {
        assert!(
            outcome.log.contains(&format!("out:{own}\n")),
            "{}",
            outcome.log
        );
        assert!(
            outcome.log.contains(&format!("err:{own}\n")),
            "{}",
            outcome.log
        );
        assert!(
            outcome.log.contains(&format!("tail:{own}\n")),
            "{}",
            outcome.log
        );
        assert!(!outcome.log.contains(other), "{}", outcome.log);
        assert!(!outcome.log.contains("nimbus-end"), "{}", outcome.log);
    }
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_is_framed_like_scf() {
    let fixture = Fixture::new(PRINTER);
    let engine = fixture.engine().await;
    let outcome = engine
        .invoke(
            &fixture.spec("printer"),
            request("req-7", serde_json::json!({"msg": "x"})),
        )
        .await;
    let lines: Vec<&str> = outcome.log.lines().collect();
    assert_eq!(lines.first(), Some(&"START RequestId: req-7"));
    assert_eq!(lines[lines.len() - 2], "END RequestId: req-7");
    let report = lines[lines.len() - 1];
    assert!(
        report.starts_with("Report RequestId: req-7 Duration:"),
        "{report}"
    );
    assert!(report.contains("ms Memory:128MB MemUsage:"), "{report}");
    let duration = report
        .split("Duration:")
        .nth(1)
        .and_then(|rest| rest.split("ms").next())
        .expect("duration");
    assert_eq!(
        duration.split('.').nth(1).map(str::len),
        Some(3),
        "{report}"
    );
    let usage = report.rsplit("MemUsage:").next().expect("usage");
    let usage = usage.strip_suffix("MB").expect("MB suffix");
    assert_eq!(usage.split('.').nth(1).map(str::len), Some(6), "{report}");
    assert!(outcome.log.ends_with('\n'));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_is_capped_and_says_so() {
    let fixture = Fixture::new(
        "def main_handler(event, context):\n    print('\u{e9}' * 200000)\n    return 1\n",
    );
    let mut config = fixture.config().await;
    config.log_limit_bytes = 4096;
    let engine = Engine::new(config).expect("engine");
    let spec = fixture.spec("loud");
    let outcome = engine.invoke(&spec, request("r1", Value::Null)).await;
    assert_eq!(ret(&outcome), 1);
    assert!(outcome.log.len() <= 4096, "{}", outcome.log.len());
    assert!(outcome.log.contains("log truncated"));
    assert!(
        outcome
            .log
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("Report "))
    );
    // The marker was still found past the cap, so the instance stays warm.
    let again = engine.invoke(&spec, request("r2", Value::Null)).await;
    assert!(!again.cold_start);
    engine.shutdown().await;
}

const SLEEPER: &str = r#"
import os, subprocess, sys, time
def main_handler(event, context):
    ns = os.readlink("/proc/self/ns/pid")
    if event.get("spawn"):
        child = subprocess.Popen(["sleep", "30"])
        print("child", child.pid, ns, flush=True)
    print("pid", os.getpid(), ns, flush=True)
    if event.get("mark"):
        with open(event["mark"] + ".tmp", "w") as mark:
            mark.write("%d %s" % (os.getpid(), ns))
        os.rename(event["mark"] + ".tmp", event["mark"])
    time.sleep(event.get("sleep", 0))
    return {"pid": os.getpid(), "ns": ns}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_433_and_kills_process_group() {
    let fixture = Fixture::new(SLEEPER);
    let engine = fixture.engine().await;
    let mut spec = fixture.spec("sleeper");
    spec.timeout = Duration::from_secs(1);
    let event = serde_json::json!({"sleep": 30, "spawn": true});
    let outcome = engine.invoke(&spec, request("r1", event)).await;

    let (status, body) = error(&outcome);
    assert_eq!(status, 433);
    let message = body["errorMessage"].as_str().expect("message");
    assert!(message.contains("timed out after 1 seconds"), "{message}");
    assert!(outcome.log.contains("timed out"), "{}", outcome.log);
    let instance = InstanceId::printed(&outcome.log, "pid");
    let child = InstanceId::printed(&outcome.log, "child");
    eventually("the instance is gone", || instance.gone()).await;
    eventually("the handler's child is killed", || child.gone()).await;
    assert_eq!(engine.live_instances(), 0);

    let next = engine
        .invoke(&spec, request("r2", serde_json::json!({})))
        .await;
    assert!(next.cold_start);
    assert_ne!(InstanceId::of(&ret(&next)), instance);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_exit_mid_call_is_439_and_next_call_works() {
    let fixture = Fixture::new(
        "import os\ndef main_handler(event, context):\n    if event.get('exit'):\n        \
         print('leaving', flush=True)\n        os._exit(3)\n    return 'fine'\n",
    );
    let engine = fixture.engine().await;
    let spec = fixture.spec("quitter");
    let outcome = engine
        .invoke(&spec, request("r1", serde_json::json!({"exit": true})))
        .await;
    let (status, body) = error(&outcome);
    assert_eq!(status, 439);
    assert_eq!(body["errorMessage"], "User process exit when running");
    assert!(outcome.log.contains("leaving"), "{}", outcome.log);
    assert_eq!(engine.live_instances(), 0);

    let next = engine
        .invoke(&spec, request("r2", serde_json::json!({})))
        .await;
    assert_eq!(ret(&next), "fine");
    assert!(next.cold_start);
    engine.shutdown().await;
}

/// Starts a sleeping invocation and waits until its handler is running.
async fn start_sleeping(
    engine: &Engine,
    spec: &FunctionSpec,
    seconds: u64,
) -> tokio::task::JoinHandle<InvocationOutcome> {
    let mark = unique_name(&spec.name);
    let event = serde_json::json!({"sleep": seconds, "mark": format!("/tmp/{mark}")});
    let task = {
        let engine = engine.clone();
        let spec = spec.clone();
        tokio::spawn(async move { engine.invoke(&spec, request("slow", event)).await })
    };
    eventually("the handler started", || tmp_file(&mark).is_some()).await;
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_rejects_at_once() {
    let fixture = Fixture::new(SLEEPER);
    let mut config = fixture.config().await;
    config.default_concurrency = 1;
    let engine = Engine::new(config).expect("engine");
    let spec = fixture.spec("busy");
    let slow = start_sleeping(&engine, &spec, 2).await;

    let rejected = engine
        .invoke(&spec, request("r2", serde_json::json!({})))
        .await;
    assert!(
        !slow.is_finished(),
        "the rejection waited for the running invocation"
    );
    let (status, body) = error(&rejected);
    assert_eq!(status, 432);
    let message = body["errorMessage"].as_str().expect("message");
    assert!(
        message.starts_with("Function [ busy ] concurrency exceeded"),
        "{message}"
    );

    let finished = slow.await.expect("task");
    assert!(matches!(finished.result, InvocationResult::Success { .. }));
    let after = engine
        .invoke(&spec, request("r3", serde_json::json!({})))
        .await;
    assert!(!after.cold_start);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_s_reserved_concurrency_overrides_the_node_default() {
    let fixture = Fixture::new(SLEEPER);
    let mut config = fixture.config().await;
    config.default_concurrency = 8;
    let engine = Engine::new(config).expect("engine");
    // 256 MB reserved for 128 MB instances: two of them.
    let mut spec = fixture.spec("reserved");
    spec.reserved_concurrency_mb = Some(256);
    let first = start_sleeping(&engine, &spec, 2).await;
    let second = start_sleeping(&engine, &spec, 2).await;
    let rejected = engine
        .invoke(&spec, request("r3", serde_json::json!({})))
        .await;
    let (status, body) = error(&rejected);
    assert_eq!(status, 432);
    assert_eq!(
        body["errorMessage"],
        "Function [ reserved ] concurrency exceeded reserved quota 256 MB"
    );
    for task in [first, second] {
        let done = task.await.expect("task");
        assert!(matches!(done.result, InvocationResult::Success { .. }));
    }

    // Nothing reserved: nothing runs.
    let mut closed = fixture.spec("closed");
    closed.reserved_concurrency_mb = Some(0);
    let (status, _) = error(
        &engine
            .invoke(&closed, request("r4", serde_json::json!({})))
            .await,
    );
    assert_eq!(status, 432);
    assert_eq!(
        engine.live_instances(),
        2,
        "a refused invocation started an instance"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_stops_idle_instances() {
    let fixture = Fixture::new(COUNTER);
    let engine = fixture.engine().await;
    let spec = fixture.spec("counter");
    let outcome = engine.invoke(&spec, request("r1", Value::Null)).await;
    let instance = InstanceId::of(&ret(&outcome));
    assert_eq!(engine.live_instances(), 1);

    engine.retire("default", "counter").await;
    assert_eq!(engine.live_instances(), 0);
    eventually("the retired instance is gone", || instance.gone()).await;
    let next = engine.invoke(&spec, request("r2", Value::Null)).await;
    assert!(next.cold_start);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_lets_running_invocation_finish_then_stops_it() {
    let fixture = Fixture::new(SLEEPER);
    let engine = fixture.engine().await;
    let spec = fixture.spec("retiring");
    let slow = start_sleeping(&engine, &spec, 1).await;

    engine.retire("default", "retiring").await;
    let finished = slow.await.expect("task");
    let instance = InstanceId::of(&ret(&finished));
    assert_eq!(engine.live_instances(), 0);
    eventually("the retired instance is gone", || instance.gone()).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kills_and_reaps_every_instance() {
    let fixture = Fixture::new(SLEEPER);
    let engine = fixture.engine().await;
    let idle = engine
        .invoke(&fixture.spec("idle"), request("r1", serde_json::json!({})))
        .await;
    let idle_instance = InstanceId::of(&ret(&idle));
    let running = start_sleeping(&engine, &fixture.spec("running"), 60).await;

    engine.shutdown().await;
    let interrupted = running.await.expect("task");
    let running_instance = InstanceId::printed(&interrupted.log, "pid");
    assert_eq!(interrupted.result.status_code(), 439);
    assert_eq!(engine.live_instances(), 0);
    eventually("the idle instance is gone", || idle_instance.gone()).await;
    eventually("the running instance is gone", || running_instance.gone()).await;

    let refused = engine
        .invoke(&fixture.spec("idle"), request("r3", serde_json::json!({})))
        .await;
    assert_eq!(refused.result.status_code(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_invocation_frees_its_slot_and_process() {
    let fixture = Fixture::new(SLEEPER);
    let mut config = fixture.config().await;
    config.default_concurrency = 1;
    let engine = Engine::new(config).expect("engine");
    let spec = fixture.spec("abandoned");
    let slow = start_sleeping(&engine, &spec, 60).await;
    slow.abort();
    assert!(slow.await.is_err_and(|err| err.is_cancelled()));
    assert_eq!(engine.live_instances(), 0);

    let next = engine
        .invoke(&spec, request("r2", serde_json::json!({})))
        .await;
    assert!(next.cold_start);
    assert!(matches!(next.result, InvocationResult::Success { .. }));
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instance_expires_after_keep_alive() {
    let fixture = Fixture::new(COUNTER);
    let mut config = fixture.config().await;
    config.keep_alive = Duration::from_millis(200);
    let engine = Engine::new(config).expect("engine");
    let outcome = engine
        .invoke(&fixture.spec("counter"), request("r1", Value::Null))
        .await;
    let instance = InstanceId::of(&ret(&outcome));
    eventually("the idle instance expired", || engine.live_instances() == 0).await;
    eventually("the expired instance is gone", || instance.gone()).await;
    engine.shutdown().await;
}

const ALLOCATOR: &str = r#"
def main_handler(event, context):
    block = b"x" * (event["mb"] * 1024 * 1024)
    return len(block)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_usage_is_measured_per_invocation() {
    const MB: u64 = 1024 * 1024;
    let fixture = Fixture::new(ALLOCATOR);
    let engine = fixture.engine().await;
    let spec = fixture.spec("allocator");
    let small = engine
        .invoke(&spec, request("r1", serde_json::json!({"mb": 0})))
        .await;
    let large = engine
        .invoke(&spec, request("r2", serde_json::json!({"mb": 50})))
        .await;
    let small_again = engine
        .invoke(&spec, request("r3", serde_json::json!({"mb": 0})))
        .await;
    for outcome in [&small, &large, &small_again] {
        assert!(matches!(outcome.result, InvocationResult::Success { .. }));
    }

    assert!(small.mem_usage_bytes > 0);
    assert!(
        large.mem_usage_bytes >= small.mem_usage_bytes + 45 * MB,
        "{} vs {}",
        large.mem_usage_bytes,
        small.mem_usage_bytes
    );
    assert!(
        small_again.mem_usage_bytes + 45 * MB <= large.mem_usage_bytes,
        "the peak was not reset between invocations"
    );
    engine.shutdown().await;
}

const HELPER_DIR_VAR: &str = "NIMBUS_ENGINE_TEST_HELPER_DIR";
const HELPER_MARK_VAR: &str = "NIMBUS_ENGINE_TEST_HELPER_MARK";

/// Run by `instances_die_with_the_engine_process` in a separate process, which it then kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of instances_die_with_the_engine_process"]
async fn helper_engine_process() {
    let Some(dir) = std::env::var_os(HELPER_DIR_VAR) else {
        return;
    };
    let dir = Path::new(&dir);
    let mark = std::env::var(HELPER_MARK_VAR).unwrap_or_default();
    let fixture = Fixture::new_in(dir, SLEEPER);
    let engine = fixture.engine().await;
    let event = serde_json::json!({"sleep": 60, "mark": format!("/tmp/{mark}")});
    engine
        .invoke(&fixture.spec("orphan"), request("r1", event))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_die_with_the_engine_process() {
    let dir = tempfile::tempdir().expect("dir");
    let mark = unique_name("orphan");
    let mut helper = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "helper_engine_process"])
        .env(HELPER_DIR_VAR, dir.path())
        .env(HELPER_MARK_VAR, &mark)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("helper starts");
    eventually("the helper's handler runs", || tmp_file(&mark).is_some()).await;
    let printed = format!("mark {}", tmp_file(&mark).expect("the mark file"));
    let instance = InstanceId::printed(&printed, "mark");

    helper.kill().expect("kill helper");
    helper.wait().expect("reap helper");
    eventually("the orphaned instance is killed", || instance.gone()).await;
}

#[tokio::test]
async fn resolve_python_finds_real_interpreter() {
    let python = resolve_python("python3").await.expect("python3 resolves");
    assert!(python.is_absolute());
    assert!(python.exists());
    assert!(
        !python.to_string_lossy().contains("shims"),
        "{}",
        python.display()
    );
}

const GROWER: &str = r#"
import os, time
kept = []
def main_handler(event, context):
    if event.get("huge"):
        b"x" * (4 << 30)
    for _ in range(event.get("mb", 0) // 4):
        kept.append(b"x" * (4 << 20))
        time.sleep(0.005)
    return {"pid": os.getpid(), "ns": os.readlink("/proc/self/ns/pid")}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_past_memory_size_is_434_and_instance_is_replaced() {
    let fixture = Fixture::new(GROWER);
    let engine = fixture.engine().await;
    let mut spec = fixture.spec("grower");
    spec.memory_mb = 64;
    let first = engine
        .invoke(&spec, request("r0", serde_json::json!({})))
        .await;
    let instance = InstanceId::of(&ret(&first));

    let outcome = engine
        .invoke(&spec, request("r1", serde_json::json!({"mb": 400})))
        .await;
    let (status, body) = error(&outcome);
    assert_eq!(status, 434, "{}", outcome.log);
    assert_eq!(body["statusCode"], 434);
    let message = body["errorMessage"].as_str().expect("message");
    assert!(message.starts_with("MemoryLimitReached"), "{message}");
    assert!(message.contains("64 MB"), "{message}");
    assert!(
        outcome.log.contains("MemoryLimitReached"),
        "{}",
        outcome.log
    );
    assert!(outcome.mem_usage_bytes > 64 * 1024 * 1024);
    eventually("the instance is killed", || instance.gone()).await;
    assert_eq!(engine.live_instances(), 0);

    let next = engine
        .invoke(&spec, request("r2", serde_json::json!({})))
        .await;
    assert!(next.cold_start);
    assert_ne!(InstanceId::of(&ret(&next)), instance);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_error_is_434_and_instance_is_recycled() {
    let fixture = Fixture::new(GROWER);
    let engine = fixture.engine().await;
    let spec = fixture.spec("huge");
    let first = engine
        .invoke(&spec, request("r0", serde_json::json!({})))
        .await;
    let instance = InstanceId::of(&ret(&first));

    let outcome = engine
        .invoke(&spec, request("r1", serde_json::json!({"huge": true})))
        .await;
    let (status, body) = error(&outcome);
    assert_eq!(status, 434, "{}", outcome.log);
    let trace = body["stackTrace"].as_str().expect("stack trace");
    assert!(trace.contains("MemoryError"), "{trace}");
    eventually("the recycled instance is gone", || instance.gone()).await;

    let next = engine
        .invoke(&spec, request("r2", serde_json::json!({})))
        .await;
    assert!(next.cold_start);
    engine.shutdown().await;
}

const SLOW_INIT: &str = r#"
import os, time
print("loading", os.getpid(), os.readlink("/proc/self/ns/pid"), flush=True)
time.sleep(30)
def main_handler(event, context):
    return "never"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_past_init_timeout_is_450_once_per_call() {
    let fixture = Fixture::new(SLOW_INIT);
    let engine = fixture.engine().await;
    let mut spec = fixture.spec("slowinit");
    spec.init_timeout = Duration::from_secs(1);
    for id in ["r1", "r2"] {
        let outcome = engine.invoke(&spec, request(id, Value::Null)).await;
        let (status, body) = error(&outcome);
        assert_eq!(status, 450);
        assert_eq!(
            body["errorMessage"],
            "Function initialization timed out after 1 seconds"
        );
        assert!(outcome.log.contains("loading"), "{}", outcome.log);
        assert!(outcome.log.contains("timed out"), "{}", outcome.log);
        assert!(outcome.cold_start);
        assert_eq!(engine.live_instances(), 0);
        let instance = InstanceId::printed(&outcome.log, "loading");
        eventually("the instance is gone", || instance.gone()).await;
        // One start per call, no retry loop.
        assert_eq!(outcome.log.matches("loading").count(), 1, "{}", outcome.log);
    }
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_time_is_not_billed_to_the_invocation() {
    let fixture = Fixture::new(
        "import time\ntime.sleep(0.5)\ndef main_handler(event, context):\n    return 1\n",
    );
    let engine = fixture.engine().await;
    let outcome = engine
        .invoke(&fixture.spec("slowimport"), request("r1", Value::Null))
        .await;
    assert_eq!(ret(&outcome), 1);
    assert!(outcome.cold_start);
    assert!(
        outcome.duration < Duration::from_millis(400),
        "{:?}",
        outcome.duration
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_budget_evicts_least_recently_used_then_refuses() {
    let fixture = Fixture::new(SLEEPER);
    let mut config = fixture.config().await;
    config.memory_budget_mb = 256;
    let engine = Engine::new(config).expect("engine");
    let (a, b, c) = (fixture.spec("a"), fixture.spec("b"), fixture.spec("c"));

    let first_a = engine
        .invoke(&a, request("a1", serde_json::json!({})))
        .await;
    let instance_a = InstanceId::of(&ret(&first_a));
    let first_b = engine
        .invoke(&b, request("b1", serde_json::json!({})))
        .await;
    let instance_b = InstanceId::of(&ret(&first_b));
    assert_eq!(engine.live_memory_mb(), 256);

    // A third function fits only by stopping the least recently used idle instance (a's).
    let first_c = engine
        .invoke(&c, request("c1", serde_json::json!({})))
        .await;
    assert!(matches!(first_c.result, InvocationResult::Success { .. }));
    eventually("the least recently used instance is stopped", || {
        instance_a.gone()
    })
    .await;
    assert!(!instance_b.gone());
    assert_eq!(engine.live_instances(), 2);
    assert_eq!(engine.live_memory_mb(), 256);

    // With both instances busy there is nothing to evict: refused at once.
    let busy_b = start_sleeping(&engine, &b, 2).await;
    let busy_c = start_sleeping(&engine, &c, 2).await;
    let refused = engine
        .invoke(&a, request("a2", serde_json::json!({})))
        .await;
    let (status, body) = error(&refused);
    assert_eq!(status, 432);
    let message = body["errorMessage"].as_str().expect("message");
    assert!(message.contains("memory budget of 256 MB"), "{message}");
    assert!(!busy_b.is_finished() && !busy_c.is_finished());

    for busy in [busy_b, busy_c] {
        assert!(matches!(
            busy.await.expect("task").result,
            InvocationResult::Success { .. }
        ));
    }
    engine.shutdown().await;
    assert_eq!(engine.live_memory_mb(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_past_memory_size_while_loading_is_434() {
    let fixture = Fixture::new(
        "import time\nkept = []\nfor _ in range(50):\n    kept.append(b'x' * (4 << 20))\n    \
         time.sleep(0.005)\ndef main_handler(event, context):\n    return len(kept)\n",
    );
    let engine = fixture.engine().await;
    let mut spec = fixture.spec("heavyimport");
    spec.memory_mb = 64;
    let outcome = engine.invoke(&spec, request("r1", Value::Null)).await;
    let (status, body) = error(&outcome);
    assert_eq!(status, 434, "{}", outcome.log);
    let message = body["errorMessage"].as_str().expect("message");
    assert!(message.starts_with("MemoryLimitReached"), "{message}");
    assert_eq!(engine.live_instances(), 0);
    engine.shutdown().await;
}

const PARENT_OF_GROWER: &str = r#"
import os, subprocess, sys
GROW = "import time\nkept = []\nfor _ in range(60):\n    kept.append(b'x' * (4 << 20))\n    time.sleep(0.02)\n"
def main_handler(event, context):
    child = subprocess.Popen([sys.executable, "-c", GROW])
    print("child", child.pid, os.readlink("/proc/self/ns/pid"), flush=True)
    return {"child_exit": child.wait()}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_of_child_processes_counts_against_the_limit() {
    let fixture = Fixture::new(PARENT_OF_GROWER);
    let engine = fixture.engine().await;
    let mut spec = fixture.spec("parent");
    spec.memory_mb = 64;
    let outcome = engine.invoke(&spec, request("r1", Value::Null)).await;
    let (status, _) = error(&outcome);
    assert_eq!(status, 434, "{}", outcome.log);
    let child = InstanceId::printed(&outcome.log, "child");
    eventually("the growing child is killed", || child.gone()).await;
    engine.shutdown().await;
}
