//! Spare Python instances (the engine's `spare.rs`): started before any function needs them,
//! claimed by a cold start, which then gets the function's code, environment, limits and uid
//! as if the instance had been started for it. Runs as root, in the sandbox.

mod common;

use std::time::Duration;

use common::{Fixture, child_processes, eventually, request, ret};
use nimbus_engine::{Engine, Runtime};
use nimbus_sandbox::DEFAULT_FIRST_ID;
use serde_json::json;

/// Reports what an instance of the function sees.
const PROBE: &str = r#"
import os, resource, sys, time

def main_handler(event, context):
    time.sleep(event.get("sleep", 0))
    try:
        with open("/var/user/written", "w"):
            pass
        writable = True
    except OSError:
        writable = False
    return {
        "uid": os.getuid(),
        "cwd": os.getcwd(),
        "path0": sys.path[0],
        "libs_on_path": "/var/user/libs" in sys.path,
        "greeting": os.environ.get("GREETING"),
        "function": os.environ.get("SCF_FUNCTIONNAME"),
        "runtime": os.environ.get("SCF_RUNTIME"),
        "nimbus_vars": sorted(k for k in os.environ if k.startswith("_NIMBUS")),
        "data": resource.getrlimit(resource.RLIMIT_DATA),
        "cpu": resource.getrlimit(resource.RLIMIT_CPU),
        "code": "def main_handler" in open("/var/user/index.py").read(),
        "writable": writable,
        "age": process_age(),
    }

def process_age():
    """Seconds since this interpreter started."""
    with open("/proc/uptime") as f:
        now = float(f.read().split()[0])
    with open("/proc/self/stat") as f:
        started = int(f.read().rsplit(")", 1)[1].split()[19])
    return now - started / os.sysconf("SC_CLK_TCK")
"#;

/// How long a test lets a ready spare wait before it is claimed.
const SPARE_AGE: Duration = Duration::from_millis(600);

/// Asserts that the instance that answered is the spare: its interpreter is older than the
/// invocation (one that failed to take the spare starts its own).
fn assert_claimed(seen: &serde_json::Value) {
    let age = seen["age"].as_f64().expect("age");
    assert!(
        age >= 0.5,
        "the interpreter started {age} s ago: not the spare"
    );
}

async fn engine_with_spares(fixture: &Fixture, spares: u32) -> Engine {
    let mut config = fixture.config().await;
    config.python_spares = spares;
    config.node_spares = 0;
    Engine::new(config).expect("engine starts")
}

/// Reports what a Node.js instance of the function sees.
const NODE_PROBE: &str = r#"
const fs = require('fs');
exports.main_handler = async (event, context) => ({
  uid: process.getuid(),
  cwd: process.cwd(),
  greeting: process.env.GREETING,
  function: process.env.SCF_FUNCTIONNAME,
  runtime: process.env.SCF_RUNTIME,
  nimbusVars: Object.keys(process.env).filter((k) => k.startsWith('_NIMBUS')),
  code: fs.readFileSync('/var/user/index.js', 'utf8').includes('main_handler'),
  helper: require('helper').answer,
  requestId: context.request_id,
  cpu: fs.readFileSync('/proc/self/limits', 'utf8').split('\n')
    .find((line) => line.startsWith('Max cpu time')).split(/\s+/).slice(3, 5),
  age: process.uptime(),
});
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cold_start_takes_a_spare_of_its_memory_size() {
    let fixture = Fixture::new(&[
        ("index.js", NODE_PROBE),
        ("node_modules/helper/index.js", "exports.answer = 42;\n"),
    ]);
    let mut config = fixture.config().await;
    config.python_spares = 0;
    config.node_spares = 1;
    let engine = Engine::new(config).expect("engine starts");
    eventually("a spare is ready", || engine.spare_instances() == 1).await;
    // Old enough that an interpreter started for the invocation could not pass for it.
    tokio::time::sleep(SPARE_AGE).await;

    let mut spec = fixture.spec("node-probe", Runtime::Nodejs);
    spec.runtime_name = "Nodejs18.15".into();
    spec.handler = "index.main_handler".into();
    let outcome = engine.invoke(&spec, request("n1", json!({}))).await;
    assert_eq!(engine.spare_instances(), 0, "the spare was not taken");
    let seen = ret(&outcome);
    assert!(
        seen["uid"].as_u64().expect("uid") >= u64::from(DEFAULT_FIRST_ID),
        "{seen}"
    );
    assert_eq!(seen["cwd"], "/var/user");
    assert_eq!(seen["greeting"], "hello");
    assert_eq!(seen["function"], "node-probe");
    assert_eq!(
        seen["runtime"], "Nodejs18.15",
        "the function's runtime as created"
    );
    assert_eq!(seen["nimbusVars"], json!([]), "{seen}");
    assert_eq!(seen["code"], true, "{seen}");
    assert_eq!(seen["helper"], 42, "{seen}");
    assert_eq!(seen["requestId"], "n1");
    // Lowered from outside (Node.js cannot): init timeout + timeout + 600 s.
    assert_eq!(seen["cpu"], json!(["640", "645"]), "{seen}");
    assert_claimed(&seen);

    // A Node.js function of another memory size starts its own interpreter.
    eventually("the spare is replaced", || engine.spare_instances() == 1).await;
    spec.name = "node-big".into();
    spec.memory_mb = 256;
    let big = engine.invoke(&spec, request("n2", json!({}))).await;
    assert_eq!(ret(&big)["greeting"], "hello");
    assert_eq!(
        engine.spare_instances(),
        1,
        "a 128 MB spare served a 256 MB function"
    );
    engine.shutdown().await;
    eventually("no instance or spare is left", || {
        child_processes().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_takes_a_spare_that_becomes_the_function_s_instance() {
    let fixture = Fixture::new(&[("index.py", PROBE)]);
    let engine = engine_with_spares(&fixture, 1).await;
    eventually("a spare is ready", || engine.spare_instances() == 1).await;
    // Old enough that an interpreter started for the invocation could not pass for it.
    tokio::time::sleep(SPARE_AGE).await;

    let mut spec = fixture.spec("probe", Runtime::Python3);
    spec.runtime_name = "Python3.10".into();
    spec.environment
        .push(("PYTHONPATH".into(), "/var/user/libs".into()));
    let outcome = engine.invoke(&spec, request("r1", json!({}))).await;
    // Taken: its replacement takes tens of milliseconds to start, and starts only now.
    assert_eq!(engine.spare_instances(), 0);
    assert!(outcome.cold_start);
    let seen = ret(&outcome);
    assert!(
        seen["uid"].as_u64().expect("uid") >= u64::from(DEFAULT_FIRST_ID),
        "{seen}"
    );
    assert_eq!(seen["cwd"], "/var/user");
    assert_eq!(seen["path0"], "/var/user");
    assert_eq!(
        seen["libs_on_path"], true,
        "the function's PYTHONPATH: {seen}"
    );
    assert_eq!(seen["greeting"], "hello");
    assert_eq!(seen["function"], "probe");
    assert_eq!(
        seen["runtime"], "Python3.10",
        "the function's runtime as created"
    );
    assert_eq!(
        seen["nimbus_vars"],
        json!([]),
        "the shim's variables leaked: {seen}"
    );
    assert_eq!(seen["code"], true, "{seen}");
    assert_eq!(seen["writable"], false, "{seen}");
    // Lowered from the spare's (sized for the largest function) to this function's: 128 MB
    // of memory plus the runtime's headroom, and init timeout + timeout + 600 s of CPU.
    let data = seen["data"][1].as_u64().expect("data limit");
    assert!(data < 1 << 30, "RLIMIT_DATA not lowered: {seen}");
    assert_eq!(seen["cpu"], json!([640, 645]), "{seen}");
    assert_claimed(&seen);
    // The engine starts another spare once the invocation is over.
    eventually("the spare is replaced", || engine.spare_instances() == 1).await;

    // Another function gets another spare, and another uid.
    let other = engine
        .invoke(
            &fixture.spec("other", Runtime::Python3),
            request("r2", json!({})),
        )
        .await;
    assert_ne!(ret(&other)["uid"], seen["uid"]);

    engine.shutdown().await;
    eventually("no instance or spare is left", || {
        child_processes().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_instances_of_a_function_share_its_uid() {
    let fixture = Fixture::new(&[("index.py", PROBE)]);
    let engine = engine_with_spares(&fixture, 2).await;
    eventually("spares are ready", || engine.spare_instances() == 2).await;
    let spec = fixture.spec("pair", Runtime::Python3);
    let slow = || engine.invoke(&spec, request("slow", json!({"sleep": 0.5})));
    let (first, second) = tokio::join!(slow(), slow());
    let (first, second) = (ret(&first), ret(&second));
    assert_eq!(first["uid"], second["uid"], "{first} {second}");
    engine.shutdown().await;
    eventually("no instance or spare is left", || {
        child_processes().is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_spares_cold_starts_start_their_own_interpreter() {
    let fixture = Fixture::new(&[("index.py", PROBE)]);
    let mut config = fixture.config().await;
    config.python_spares = 0;
    config.node_spares = 0;
    config.python_zygote = false;
    let engine = Engine::new(config).expect("engine starts");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(engine.spare_instances(), 0);
    let mut spec = fixture.spec("plain", Runtime::Python3);
    spec.runtime_name = "Python3.10".into();
    let seen = ret(&engine.invoke(&spec, request("r1", json!({}))).await);
    assert_eq!(seen["greeting"], "hello");
    assert_eq!(
        seen["runtime"], "Python3.10",
        "the function's runtime as created"
    );
    assert_eq!(seen["nimbus_vars"], json!([]));
    engine.shutdown().await;
}
