//! SCF's custom runtime end to end through the engine: real `bootstrap` programs (bash, over
//! `/dev/tcp`) speaking the runtime API, the repository's shell example, and the broken
//! programs the platform must survive.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Fixture, error, eventually, not_running, request, ret};
use nimbus_engine::{Engine, FunctionSpec, Isolation, Runtime};
use serde_json::json;

/// Bash functions the test bootstraps share: `http METHOD PATH [BODY]` sets `status`,
/// `request_id` and `body`.
const PRELUDE: &str = r#"#!/bin/bash
set -u
export LC_ALL=C
http() {
  local method="$1" path="$2" data="${3-}" line length=0
  exec 3<>"/dev/tcp/${SCF_RUNTIME_API}/${SCF_RUNTIME_API_PORT}" || exit 1
  printf '%s %s HTTP/1.1\r\nHost: api\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "$method" "$path" "${#data}" "$data" >&3
  IFS=' ' read -r _ status _ <&3
  request_id=''
  headers=''
  while IFS= read -r line <&3; do
    line="${line%$'\r'}"
    [ -z "$line" ] && break
    headers="${headers}${line,,};"
    case "${line,,}" in
      content-length:*) length="${line#*:}"; length="${length//[^0-9]/}" ;;
      request_id:*) request_id="${line#*:}"; request_id="${request_id# }" ;;
      lambda-runtime-aws-request-id:*) request_id="${line#*:}"; request_id="${request_id# }" ;;
    esac
  done
  body=''
  if [ "${length:-0}" -gt 0 ]; then IFS= read -r -N "$length" body <&3; fi
  exec 3<&-
}
"#;

/// A code directory whose executable `bootstrap` is the prelude followed by `script`.
fn fixture(script: &str) -> Fixture {
    let fixture = Fixture::new(&[]);
    install_bootstrap(fixture.code.path(), &format!("{PRELUDE}{script}"));
    fixture
}

fn install_bootstrap(code: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = code.join("bootstrap");
    std::fs::write(&path, contents).expect("write bootstrap");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A custom-runtime function with short timeouts, and without network: the engine must still
/// let it reach its runtime API.
fn spec(fixture: &Fixture, name: &str) -> FunctionSpec {
    let mut spec = fixture.spec(name, Runtime::Custom);
    spec.timeout = Duration::from_secs(3);
    spec.init_timeout = Duration::from_secs(3);
    spec.network = false;
    spec
}

/// Ready, then answer every event with `{"echo": <event>, "id": <request id>}`.
const ECHO: &str = r#"
echo "init line"
http POST /runtime/init/ready ' '
while true; do
  http GET /runtime/invocation/next
  echo "handling $request_id"
  http POST /runtime/invocation/response "{\"echo\":$body,\"id\":\"$request_id\"}"
done
"#;

async fn engine(fixture: &Fixture) -> Engine {
    fixture.engine().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_events_and_keeps_the_instance_warm() {
    let fixture = fixture(ECHO);
    let engine = engine(&fixture).await;
    let spec = spec(&fixture, "echo");

    let first = engine.invoke(&spec, request("r-1", json!({"n": 1}))).await;
    assert_eq!(ret(&first), json!({"echo": {"n": 1}, "id": "r-1"}));
    assert!(first.cold_start);
    assert!(first.log.contains("init line\n"), "{}", first.log);
    assert!(first.log.contains("handling r-1\n"), "{}", first.log);

    let second = engine.invoke(&spec, request("r-2", json!({"n": 2}))).await;
    assert_eq!(ret(&second), json!({"echo": {"n": 2}, "id": "r-2"}));
    assert!(!second.cold_start);
    assert!(second.log.contains("handling r-2\n"), "{}", second.log);
    assert!(!second.log.contains("init line"), "{}", second.log);
    assert!(!second.log.contains("handling r-1"), "{}", second.log);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_and_event_headers_reach_the_bootstrap() {
    let fixture = fixture(
        r#"
http POST /runtime/init/ready ' '
http GET /runtime/invocation/next
first="$request_id"
http GET /runtime/invocation/next
printf -v result '{"again":"%s","same":"%s","handler":"%s","runtime":"%s","cwd":"%s","headers":"%s","lambda":"%s"}' \
  "$request_id" "$first" "$_HANDLER" "$SCF_RUNTIME" "$PWD" "$headers" "${AWS_LAMBDA_RUNTIME_API:-}"
http POST /runtime/invocation/response "$result"
sleep 30
"#,
    );
    let engine = engine(&fixture).await;
    let mut spec = spec(&fixture, "env");
    spec.handler = "anything goes here".into();
    spec.memory_mb = 256;

    let outcome = engine.invoke(&spec, request("r-env", json!({}))).await;
    let value = ret(&outcome);
    assert_eq!(value["again"], "r-env", "next twice returns the same event");
    assert_eq!(value["same"], "r-env");
    assert_eq!(value["handler"], "anything goes here");
    assert_eq!(value["runtime"], "CustomRuntime");
    let headers = value["headers"].as_str().expect("headers");
    for header in [
        "request_id: r-env;",
        "memory_limit_in_mb: 256;",
        "time_limit_in_ms: 3000;",
        "lambda-runtime-aws-request-id: r-env;",
        "lambda-runtime-deadline-ms: ",
    ] {
        assert!(headers.contains(header), "{header} missing from {headers}");
    }
    let lambda = value["lambda"].as_str().expect("lambda address");
    assert!(lambda.starts_with("127.0.0.1:"), "{lambda}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_answer_wins() {
    let fixture = fixture(
        r#"
http POST /runtime/init/ready ' '
while true; do
  http GET /runtime/invocation/next
  http POST /runtime/invocation/response '"first"'
  # Well after the engine has taken the answer: what follows is printed after answering.
  sleep 0.3
  http POST /runtime/invocation/response '"second"'
  echo "second answer got $status"
  http POST /runtime/invocation/error 'too late'
  echo "late error got $status"
done
"#,
    );
    let engine = engine(&fixture).await;
    let spec = spec(&fixture, "twice");

    let first = engine.invoke(&spec, request("r-1", json!({}))).await;
    assert_eq!(ret(&first), json!("first"));
    let second = engine.invoke(&spec, request("r-2", json!({}))).await;
    assert_eq!(ret(&second), json!("first"));
    assert!(!second.cold_start);
    // What the program prints after answering is the next invocation's.
    assert!(
        second
            .log
            .contains("second answer got 403\nlate error got 403\n"),
        "{}",
        second.log
    );
    assert!(!first.log.contains("second answer"), "{}", first.log);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_error_is_430_with_the_text_as_message() {
    let fixture = fixture(
        r#"
http POST /runtime/init/ready ' '
while true; do
  http GET /runtime/invocation/next
  echo "failing $request_id" >&2
  http POST /runtime/invocation/error 'parse event error'
done
"#,
    );
    let engine = engine(&fixture).await;
    let spec = spec(&fixture, "fails");

    let outcome = engine.invoke(&spec, request("r-err", json!({}))).await;
    let (status, body) = error(&outcome);
    assert_eq!(status, 430);
    assert_eq!(body["errorMessage"], "parse event error");
    assert_eq!(body["requestId"], "r-err");
    assert!(outcome.log.contains("failing r-err\n"), "{}", outcome.log);
    // A posted error leaves the runtime healthy.
    let again = engine.invoke(&spec, request("r-err-2", json!({}))).await;
    assert_eq!(error(&again).0, 430);
    assert!(!again.cold_start);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_exiting_at_once_is_445_with_its_output() {
    let fixture = fixture("echo \"cannot start: $$\"\nexit 3\n");
    let engine = engine(&fixture).await;
    let spec = spec(&fixture, "exits");

    let outcome = engine.invoke(&spec, request("r-exit", json!({}))).await;
    assert_eq!(error(&outcome).0, 445);
    assert!(outcome.log.contains("cannot start: "), "{}", outcome.log);
    assert_eq!(engine.live_instances(), 0);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_error_is_445_with_the_posted_text() {
    let fixture =
        fixture("echo booting\nhttp POST /runtime/init/error 'missing configuration'\nsleep 30\n");
    let engine = engine(&fixture).await;
    let spec = spec(&fixture, "init-error");

    let outcome = engine.invoke(&spec, request("r-init", json!({}))).await;
    let (status, body) = error(&outcome);
    assert_eq!(status, 445);
    let message = body["errorMessage"].as_str().expect("message");
    assert!(message.contains("missing configuration"), "{message}");
    assert!(outcome.log.contains("booting\n"), "{}", outcome.log);
    assert_eq!(engine.live_instances(), 0);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_ready_is_450_and_the_instance_is_stopped() {
    let fixture = fixture("echo \"starting slowly\"\nexec sleep 60\n");
    let engine = engine(&fixture).await;
    let mut spec = spec(&fixture, "never-ready");
    spec.init_timeout = Duration::from_millis(500);

    let outcome = engine.invoke(&spec, request("r-slow", json!({}))).await;
    let (status, body) = error(&outcome);
    assert_eq!(status, 450);
    assert_eq!(body["statusCode"], 450);
    assert!(outcome.log.contains("starting slowly\n"), "{}", outcome.log);
    assert_eq!(engine.live_instances(), 0);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_answering_is_433_and_the_next_call_starts_afresh() {
    let fixture = fixture(
        r#"
http POST /runtime/init/ready ' '
http GET /runtime/invocation/next
echo "got $request_id"
case "$body" in
  *hang*) exec sleep 60 ;;
esac
http POST /runtime/invocation/response '"done"'
sleep 60
"#,
    );
    let engine = engine(&fixture).await;
    let mut spec = spec(&fixture, "hangs");
    spec.timeout = Duration::from_millis(800);

    let outcome = engine
        .invoke(&spec, request("r-hang", json!({"hang": true})))
        .await;
    let (status, body) = error(&outcome);
    assert_eq!(status, 433);
    assert_eq!(body["statusCode"], 433);
    assert!(outcome.log.contains("got r-hang\n"), "{}", outcome.log);
    assert_eq!(engine.live_instances(), 0);

    let next = engine.invoke(&spec, request("r-ok", json!({}))).await;
    assert_eq!(ret(&next), json!("done"));
    assert!(next.cold_start);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exiting_during_an_invocation_is_439() {
    let fixture = fixture(
        "http POST /runtime/init/ready ' '\nhttp GET /runtime/invocation/next\necho bye\nexit 1\n",
    );
    let engine = engine(&fixture).await;
    let spec = spec(&fixture, "dies");

    let outcome = engine.invoke(&spec, request("r-die", json!({}))).await;
    assert_eq!(error(&outcome).0, 439);
    assert!(outcome.log.contains("bye\n"), "{}", outcome.log);
    engine.shutdown().await;
}

/// Unsandboxed, so that the pid the program prints is the host's and the test can kill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_gone_while_idle_is_replaced() {
    let fixture = fixture(
        r#"
http POST /runtime/init/ready ' '
while true; do
  http GET /runtime/invocation/next
  http POST /runtime/invocation/response "$$"
done
"#,
    );
    let mut config = fixture.config().await;
    config.sandbox.isolation = Isolation::None;
    let engine = Engine::new(config).expect("engine starts");
    let spec = spec(&fixture, "idle-death");

    let first = engine.invoke(&spec, request("r-1", json!({}))).await;
    let pid = ret(&first).as_u64().expect("pid");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    eventually("the bootstrap is gone", || {
        not_running(u32::try_from(pid).expect("pid fits"))
    })
    .await;

    let second = engine.invoke(&spec, request("r-2", json!({}))).await;
    assert_ne!(ret(&second).as_u64(), Some(pid));
    assert!(second.cold_start);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_response_is_407() {
    let fixture = fixture(
        r#"
http POST /runtime/init/ready ' '
http GET /runtime/invocation/next
printf -v big '"%*s"' 6291456 ''
http POST /runtime/invocation/response "$big"
echo "big answer got $status"
sleep 60
"#,
    );
    let engine = engine(&fixture).await;
    let spec = spec(&fixture, "big");

    let outcome = engine.invoke(&spec, request("r-big", json!({}))).await;
    assert_eq!(error(&outcome).0, 407);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_runtime_api_paths_work() {
    let fixture = fixture(
        r#"
api=/2018-06-01/runtime/invocation
while true; do
  http GET "$api/next"
  case "$body" in
    *fail*) http POST "$api/$request_id/error" '{"errorMessage":"lambda says no","errorType":"Nope","stackTrace":["at a","at b"]}' ;;
    *) http POST "$api/$request_id/response" "{\"aws\":\"$request_id\"}" ;;
  esac
done
"#,
    );
    let engine = engine(&fixture).await;
    let spec = spec(&fixture, "lambda");

    let outcome = engine.invoke(&spec, request("r-aws", json!({}))).await;
    assert_eq!(ret(&outcome), json!({"aws": "r-aws"}));
    let failed = engine
        .invoke(&spec, request("r-no", json!({"fail": 1})))
        .await;
    let (status, body) = error(&failed);
    assert_eq!(status, 430);
    assert_eq!(body["errorMessage"], "lambda says no");
    assert_eq!(body["stackTrace"], "at a\nat b");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bootstrap_is_445() {
    let fixture = Fixture::new(&[("index.sh", "echo hi\n")]);
    let engine = engine(&fixture).await;
    let spec = spec(&fixture, "no-bootstrap");

    let outcome = engine.invoke(&spec, request("r-none", json!({}))).await;
    let (status, body) = error(&outcome);
    assert_eq!(status, 445);
    let message = body["errorMessage"].as_str().expect("message");
    assert!(message.contains("bootstrap"), "{message}");
    engine.shutdown().await;
}

/// The repository's `examples/custom-shell`, as a user would deploy it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_example_runs() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/custom-shell");
    let fixture = Fixture::new(&[]);
    for file in ["bootstrap", "index.sh"] {
        let contents = std::fs::read_to_string(example.join(file)).expect("read example");
        std::fs::write(fixture.code.path().join(file), contents).expect("copy example");
    }
    install_bootstrap(
        fixture.code.path(),
        &std::fs::read_to_string(example.join("bootstrap")).expect("read bootstrap"),
    );
    let engine = engine(&fixture).await;
    let spec = spec(&fixture, "shell-example");

    let outcome = engine
        .invoke(&spec, request("r-sh", json!({"name": "nimbus"})))
        .await;
    assert_eq!(
        ret(&outcome),
        json!({"runtime": "custom-shell", "request_id": "r-sh", "event": {"name": "nimbus"}})
    );
    assert!(
        outcome.log.contains("loading main_handler from index.sh"),
        "{}",
        outcome.log
    );
    assert!(outcome.log.contains("handling r-sh\n"), "{}", outcome.log);

    let failed = engine
        .invoke(&spec, request("r-sh-2", json!({"fail": true})))
        .await;
    let (status, body) = error(&failed);
    assert_eq!(status, 430);
    assert_eq!(body["errorMessage"], "the event asked to fail");
    assert!(!failed.cold_start);
    engine.shutdown().await;
}
