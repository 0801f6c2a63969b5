//! Many concurrent invocations of many functions, Python and Node.js at once: every invocation
//! is answered, with its own result and its own log, and no process outlives the engine.
//!
//! This is its own test binary so that no other test's instances are running when it checks
//! the process table for children of this process.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Fixture, child_processes, request};
use nimbus_engine::{Engine, FunctionSpec, InvocationOutcome, InvocationResult, Runtime};
use serde_json::{Value, json};
use tokio::task::JoinSet;

const FUNCTIONS_PER_RUNTIME: usize = 4;
const CALLS_PER_FUNCTION: usize = 25;
const ROUNDS: usize = 2;

const PYTHON_ECHO: &str = r#"
import os, time
def main_handler(event, context):
    print("begin", context["request_id"], event["nonce"])
    for line in range(event["lines"]):
        print("line", line, event["tag"] + "-" + "x" * event["width"])
    time.sleep(event["sleep_ms"] / 1000)
    print("end", context["request_id"], event["nonce"], flush=True)
    return {"nonce": event["nonce"], "request_id": context["request_id"],
            "function": os.environ["SCF_FUNCTIONNAME"], "payload": event["payload"]}
"#;

const NODE_ECHO: &str = r"
exports.main_handler = (event, context, callback) => {
  console.log('begin', context.request_id, event.nonce);
  for (let line = 0; line < event.lines; line++) {
    console.log('line', line, event.tag + '-' + 'x'.repeat(event.width));
  }
  setTimeout(() => {
    console.log('end', context.request_id, event.nonce);
    callback(null, { nonce: event.nonce, request_id: context.request_id,
      function: process.env.SCF_FUNCTIONNAME, payload: event.payload });
  }, event.sleep_ms);
};
";

/// A small deterministic generator (xorshift64*), seeded per run and printed on failure.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

struct Call {
    function: String,
    request_id: String,
    nonce: String,
    payload: Value,
}

fn functions(python: &Fixture, node: &Fixture) -> Vec<FunctionSpec> {
    let mut specs = Vec::new();
    for i in 0..FUNCTIONS_PER_RUNTIME {
        specs.push(python.spec(&format!("py-{i}"), Runtime::Python3));
        specs.push(node.spec(&format!("node-{i}"), Runtime::Nodejs));
    }
    for spec in &mut specs {
        spec.memory_mb = 64;
        spec.timeout = Duration::from_secs(120);
        spec.init_timeout = Duration::from_secs(120);
    }
    specs
}

fn new_call(random: &mut Random, spec: &FunctionSpec, round: usize, index: usize) -> (Call, Value) {
    let nonce = format!("nonce{:016x}", random.next());
    let request_id = format!(
        "{}-r{round}-{index}-{:08x}",
        spec.name,
        random.next() as u32
    );
    let payload = json!({
        "text": "é✓".repeat(usize::try_from(random.below(50)).expect("small")),
        "n": random.next() >> 11,
    });
    let event = json!({
        "nonce": nonce,
        "tag": &nonce["nonce".len().."nonce".len() + 8],
        "sleep_ms": random.below(50),
        "lines": random.below(20),
        "width": random.below(300),
        "payload": payload,
    });
    let call = Call {
        function: spec.name.clone(),
        request_id,
        nonce,
        payload,
    };
    (call, event)
}

/// Checks that `outcome` answers `call` and nothing else.
fn check(call: &Call, outcome: &InvocationOutcome, seed: u64) {
    let context = format!("seed {seed:#x}, {}:\n{}", call.request_id, outcome.log);
    assert_eq!(outcome.request_id, call.request_id, "{context}");
    let InvocationResult::Success { ret_msg } = &outcome.result else {
        panic!("failed: {:?}; {context}", outcome.result);
    };
    let value: Value = serde_json::from_str(ret_msg).expect("ret_msg is JSON");
    assert_eq!(value["nonce"], call.nonce.as_str(), "{context}");
    assert_eq!(value["request_id"], call.request_id.as_str(), "{context}");
    assert_eq!(value["function"], call.function.as_str(), "{context}");
    assert_eq!(value["payload"], call.payload, "{context}");

    let log = &outcome.log;
    assert!(
        log.starts_with(&format!("START RequestId: {}\n", call.request_id)),
        "{context}"
    );
    let begin = format!("begin {} {}", call.request_id, call.nonce);
    let end = format!("end {} {}", call.request_id, call.nonce);
    assert!(log.contains(&begin) && log.contains(&end), "{context}");
    // Exactly this call's two nonce lines: nothing of another invocation leaked in.
    assert_eq!(log.matches("nonce").count(), 2, "{context}");
    let tag = &call.nonce["nonce".len().."nonce".len() + 8];
    assert!(
        log.lines()
            .filter(|line| line.contains("line "))
            .all(|line| line.contains(tag)),
        "{context}"
    );
    assert!(
        log.ends_with("MB\n") && log.contains(&format!("END RequestId: {}\n", call.request_id)),
        "{context}"
    );
}

async fn run_round(engine: &Engine, specs: &[FunctionSpec], random: &mut Random, round: usize) {
    let seed = random.0;
    let mut tasks = JoinSet::new();
    let mut expected = HashSet::new();
    for index in 0..CALLS_PER_FUNCTION {
        for spec in specs {
            let (call, event) = new_call(random, spec, round, index);
            expected.insert(call.request_id.clone());
            let engine = engine.clone();
            let spec = spec.clone();
            tasks.spawn(async move {
                let outcome = engine.invoke(&spec, request(&call.request_id, event)).await;
                (call, outcome)
            });
        }
    }

    let mut answered = 0;
    while let Some(joined) = tasks.join_next().await {
        let (call, outcome) = joined.expect("invocation task");
        check(&call, &outcome, seed);
        assert!(expected.remove(&call.request_id), "answered twice");
        answered += 1;
    }
    assert_eq!(answered, specs.len() * CALLS_PER_FUNCTION);
    assert!(expected.is_empty(), "lost: {expected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invocations_of_many_functions_stay_apart() {
    let python = Fixture::new(&[("index.py", PYTHON_ECHO)]);
    let node = Fixture::new(&[("index.js", NODE_ECHO)]);
    let mut config = python.config().await;
    config.default_concurrency = u32::try_from(CALLS_PER_FUNCTION).expect("small");
    config.memory_budget_mb = 64 * 2 * (FUNCTIONS_PER_RUNTIME * CALLS_PER_FUNCTION) as u64;
    let engine = Engine::new(config).expect("engine");
    let specs = functions(&python, &node);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |since| since.as_nanos() as u64)
        | 1;
    let mut random = Random(seed);
    for round in 0..ROUNDS {
        run_round(&engine, &specs, &mut random, round).await;
    }
    assert!(engine.live_instances() > 0);

    engine.shutdown().await;
    assert_eq!(engine.live_instances(), 0);
    assert_eq!(engine.live_memory_mb(), 0);
    let left = child_processes();
    assert!(left.is_empty(), "child processes left: {left:?}");
}
