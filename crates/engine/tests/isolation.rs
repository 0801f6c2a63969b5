//! The sandbox as the engine sets it up: a uid per function, namespaces, a read-only root with
//! the code at `/var/user`, a private bounded `/tmp`, no network unless asked for, a contained
//! and reported fork bomb, and `Isolation::None` for hosts without namespaces. These tests run
//! as root, which the sandbox needs.

mod common;

use common::{Fixture, InstanceId, error, eventually, request, ret};
use std::time::Duration;

use nimbus_engine::{Engine, EngineError, Isolation, Runtime};
use nimbus_sandbox::{CgroupSupport, DEFAULT_FIRST_ID};
use serde_json::{Value, json};

/// Reports who and where the handler is, and what each attempt the event asks for did.
const PROBE: &str = r#"
import errno, os, socket

def attempt(action):
    try:
        return {"ok": True, "value": action()}
    except OSError as e:
        return {"ok": False, "errno": errno.errorcode.get(e.errno, str(e.errno))}

def read(path):
    with open(path) as f:
        return f.read(100)

def write(path):
    with open(path, "w") as f:
        return f.write("x")

def connect(port):
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return "connected"

def main_handler(event, context):
    result = {
        "uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid(),
        "ns": os.readlink("/proc/self/ns/pid"),
        "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "hostname": socket.gethostname(), "cwd": os.getcwd(),
        "code_root": os.environ.get("USER_CODE_ROOT"),
        "read": {p: attempt(lambda: read(p)) for p in event.get("read", [])},
        "write": {p: attempt(lambda: write(p)) for p in event.get("write", [])},
        "tmp": sorted(os.listdir("/tmp")),
    }
    if "fill" in event:
        result["fill"] = attempt(lambda: open("/tmp/fill", "wb").write(b"x" * event["fill"]))
    if "connect" in event:
        result["connect"] = attempt(lambda: connect(event["connect"]))
    return result
"#;

fn failed_with(value: &Value, errno: &str) -> bool {
    value["ok"] == false && value["errno"] == errno
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_run_apart_as_uids_of_their_own() {
    let fixture = Fixture::new(&[("index.py", PROBE)]);
    let engine = fixture.engine().await;
    assert_eq!(engine.isolation(), Isolation::Sandbox);
    assert!(engine.capabilities().namespaces.is_available());

    let host_code = fixture.code.path().join("index.py");
    let event = json!({
        "read": [host_code, "/etc/shadow", "/root/.bashrc", "/var/user/index.py"],
        "write": ["/var/user/x", "/etc/x", "/x", "/tmp/x"],
    });
    let a = ret(&engine
        .invoke(
            &fixture.spec("a", Runtime::Python3),
            request("a1", event.clone()),
        )
        .await);
    let b = ret(&engine
        .invoke(
            &fixture.spec("b", Runtime::Python3),
            request("b1", event.clone()),
        )
        .await);

    let first_id = u64::from(DEFAULT_FIRST_ID);
    assert!(a["uid"].as_u64().expect("uid") >= first_id, "{a}");
    assert_eq!(a["uid"], a["gid"]);
    assert_ne!(a["uid"], b["uid"], "two functions share a uid");
    assert_eq!(a["hostname"], "localhost");
    assert_eq!(a["cwd"], "/var/user");
    assert_eq!(a["code_root"], "/var/user");
    // Only its own processes: the sandbox's init runs as root and is hidden.
    assert_eq!(a["procs"], json!([a["pid"]]), "{a}");

    let read = &a["read"];
    assert!(
        failed_with(&read[host_code.to_str().expect("utf-8")], "ENOENT"),
        "{read}"
    );
    assert!(failed_with(&read["/etc/shadow"], "ENOENT"), "{read}");
    assert!(failed_with(&read["/root/.bashrc"], "ENOENT"), "{read}");
    assert_eq!(read["/var/user/index.py"]["ok"], true, "{read}");
    let write = &a["write"];
    for path in ["/var/user/x", "/etc/x", "/x"] {
        assert!(failed_with(&write[path], "EROFS"), "{path}: {write}");
    }
    assert_eq!(write["/tmp/x"]["ok"], true, "{write}");
    assert!(!fixture.code.path().join("x").exists());

    // A new instance of the same function (another revision), started once the first is
    // gone, runs as a uid of the range that no other function holds (it may be a spare's).
    let mut again = fixture.spec("a", Runtime::Python3);
    again.revision = 2;
    let a2 = ret(&engine.invoke(&again, request("a2", json!({}))).await);
    assert!(a2["uid"].as_u64().expect("uid") >= first_id, "{a2}");
    assert_ne!(a2["uid"], b["uid"], "two functions share a uid");
    assert_ne!(InstanceId::of(&a2), InstanceId::of(&a));
    // Its /tmp is its own: the first instance's file is not there (the engine's shim
    // directory may be, bound read-only: these tests keep it under /tmp).
    let tmp = a2["tmp"].as_array().expect("listing");
    assert!(!tmp.contains(&json!("x")), "{a2}");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_is_loopback_only_unless_the_function_asks_for_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("address").port();
    let fixture = Fixture::new(&[("index.py", PROBE)]);
    let engine = fixture.engine().await;

    let mut spec = fixture.spec("offline", Runtime::Python3);
    let event = json!({ "connect": port });
    let offline = ret(&engine.invoke(&spec, request("r1", event.clone())).await);
    assert!(
        failed_with(&offline["connect"], "ECONNREFUSED"),
        "{offline}"
    );

    spec.name = "online".into();
    spec.network = true;
    let online = ret(&engine.invoke(&spec, request("r2", event)).await);
    assert_eq!(online["connect"]["value"], "connected", "{online}");
    drop(listener);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmp_is_bounded() {
    let fixture = Fixture::new(&[("index.py", PROBE)]);
    let mut config = fixture.config().await;
    config.tmp_bytes = 2 << 20;
    let engine = Engine::new(config).expect("engine");
    let spec = fixture.spec("filler", Runtime::Python3);
    let small = ret(&engine
        .invoke(&spec, request("r1", json!({"fill": 1 << 20})))
        .await);
    assert_eq!(small["fill"]["ok"], true, "{small}");
    let large = ret(&engine
        .invoke(&spec, request("r2", json!({"fill": 8 << 20})))
        .await);
    let errno = large["fill"]["errno"].as_str().unwrap_or_default();
    assert!(["ENOSPC", "EFBIG"].contains(&errno), "{large}");
    engine.shutdown().await;
}

const FORK_BOMB: &str = r#"
import errno, os
def main_handler(event, context):
    spawned, failure = 0, None
    try:
        while spawned < 10000:
            os.posix_spawn("/bin/sleep", ["sleep", "60"], {})
            spawned += 1
    except OSError as e:
        failure = errno.errorcode.get(e.errno)
    return {"spawned": spawned, "failure": failure, "pid": os.getpid(),
            "ns": os.readlink("/proc/self/ns/pid")}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_contained_reported_and_its_instance_stopped() {
    let fixture = Fixture::new(&[("index.py", FORK_BOMB)]);
    let mut config = fixture.config().await;
    config.max_processes = 8;
    config.default_concurrency = 2;
    let engine = Engine::new(config).expect("engine");
    let spec = fixture.spec("bomb", Runtime::Python3);

    let outcome = engine.invoke(&spec, request("r1", Value::Null)).await;
    let value = ret(&outcome);
    assert_eq!(value["failure"], "EAGAIN", "{value}");
    // 16 processes and threads for the function's uid, the runtime being one of them.
    assert!(value["spawned"].as_u64().expect("count") < 16, "{value}");
    let reports: Vec<&str> = outcome
        .log
        .lines()
        .filter(|line| line.starts_with("Process limit reached"))
        .collect();
    assert_eq!(reports.len(), 1, "{}", outcome.log);
    let instance = InstanceId::of(&value);
    eventually("the bomb's instance is stopped", || instance.gone()).await;
    assert_eq!(engine.live_instances(), 0);

    let next = engine.invoke(&spec, request("r2", Value::Null)).await;
    assert!(next.cold_start);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_none_runs_as_the_server_in_the_code_directory() {
    let fixture = Fixture::new(&[("index.py", PROBE)]);
    let mut config = fixture.config().await;
    config.sandbox.isolation = Isolation::None;
    let engine = Engine::new(config).expect("engine");
    assert_eq!(engine.isolation(), Isolation::None);
    let spec = fixture.spec("plain", Runtime::Python3);
    let value = ret(&engine.invoke(&spec, request("r1", json!({}))).await);
    let code = fixture.code.path().to_str().expect("utf-8 path");
    let canonical = fixture.code.path().canonicalize().expect("canonical");
    assert_eq!(value["code_root"], code);
    assert_eq!(value["cwd"], canonical.to_str().expect("utf-8 path"));
    assert_eq!(value["uid"], nix::unistd::getuid().as_raw());
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_refuses_to_start_without_a_working_sandbox() {
    let fixture = Fixture::new(&[("index.py", PROBE)]);
    let mut config = fixture.config().await;
    config.sandbox.staging_dir = "/nonexistent/staging".into();
    assert!(matches!(
        Engine::new(config),
        Err(EngineError::SetUpSandbox(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_only_its_owner_can_read_fails_the_start() {
    let fixture = Fixture::new(&[("index.py", PROBE)]);
    common::set_mode(fixture.code.path(), 0o700);
    let engine = fixture.engine().await;
    let outcome = engine
        .invoke(
            &fixture.spec("private", Runtime::Python3),
            request("r1", json!({})),
        )
        .await;
    let (status, _) = error(&outcome);
    assert_eq!(status, 500);
    assert_eq!(engine.live_instances(), 0);
    engine.shutdown().await;
}

/// Starts children that outlive the invocation and then grow, together, past the function's
/// 128 MB (each stays under its own `RLIMIT_DATA`).
const HOG_LATER: &str = r#"
import os, time

def main_handler(event, context):
    for _ in range(3):
        if os.fork() == 0:
            os.setsid()
            time.sleep(0.3)
            blocks = []
            for _ in range(10):
                blocks.append(b"x" * (8 << 20))
                time.sleep(0.02)
            time.sleep(30)
            os._exit(0)
    return os.getuid()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_left_running_are_held_to_the_memory_limit_while_idle() {
    let fixture = Fixture::new(&[("index.py", HOG_LATER)]);
    // As on a host without cgroup v2, where idle instances cannot be frozen.
    let mut config = fixture.config().await;
    config.freeze_after = None;
    let engine = Engine::new(config).expect("engine");
    let spec = fixture.spec("hog-later", Runtime::Python3);
    let outcome = engine.invoke(&spec, request("h1", json!({}))).await;
    let uid = ret(&outcome).as_u64().expect("uid");
    assert_eq!(
        engine.live_instances(),
        1,
        "the invocation itself succeeded"
    );
    // The children reach ~240 MB about half a second later, while the instance is idle.
    eventually("the idle instance is stopped", || {
        engine.live_instances() == 0
    })
    .await;
    eventually("no process of the function is left", || !runs_as(uid)).await;
    engine.shutdown().await;
}

/// Starts a thread that notes the time every 10 ms; answers, from the second invocation on,
/// the longest pause between two notes.
const TICKER: &str = r#"
import threading, time

ticks = []

def tick():
    while True:
        ticks.append(time.monotonic())
        time.sleep(0.01)

def main_handler(event, context):
    if not ticks:
        ticks.append(time.monotonic())
        threading.Thread(target=tick, daemon=True).start()
        return 0
    # Now counts as a note: the thread may not have run at all since the first call.
    stamps = ticks + [time.monotonic()]
    return max(b - a for a, b in zip(stamps, stamps[1:]))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_is_frozen_until_its_next_invocation() {
    let fixture = Fixture::new(&[("index.py", TICKER)]);
    let Some(engine) = engine_that_freezes(&fixture).await else {
        return;
    };
    let spec = fixture.spec("ticker", Runtime::Python3);
    ret(&engine.invoke(&spec, request("t1", json!({}))).await);
    let idle = Duration::from_millis(1500);
    tokio::time::sleep(idle).await;
    let longest_pause = ret(&engine.invoke(&spec, request("t2", json!({}))).await)
        .as_f64()
        .expect("seconds");
    // Frozen 50 ms after the first invocation returned: the thread stood still for most of
    // the idle time. Unfrozen, it would have noted the time every 10 ms throughout.
    assert!(
        longest_pause > idle.as_secs_f64() / 2.0,
        "the ticker paused for {longest_pause} s at most while idle for {idle:?}"
    );
    assert_eq!(engine.live_instances(), 1, "the same instance answered");
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_cannot_be_thawed_is_replaced() {
    let fixture = Fixture::new(&[(
        "index.py",
        "import os\ndef main_handler(e, c):\n    return os.getuid()\n",
    )]);
    let Some(engine) = engine_that_freezes(&fixture).await else {
        return;
    };
    let spec = fixture.spec("unthawable", Runtime::Python3);
    let uid = ret(&engine.invoke(&spec, request("t1", json!({}))).await)
        .as_u64()
        .expect("uid");
    tokio::time::sleep(Duration::from_millis(300)).await; // frozen after 50 ms

    // Take the instance's cgroup away from under it: its processes move to a cgroup of the
    // test's own (which thaws them), and the emptied cgroup is removed, so the engine's
    // write to its cgroup.freeze fails.
    let runtime = pids_of(uid).into_iter().next().expect("the runtime runs");
    let cgroup = cgroup_dir_of(runtime);
    let refuge = Refuge::create(cgroup.with_file_name(format!("thaw-test-{runtime}")));
    let members = std::fs::read_to_string(cgroup.join("cgroup.procs")).expect("members");
    for pid in members.lines() {
        std::fs::write(refuge.0.join("cgroup.procs"), pid).expect("move a process");
    }
    std::fs::remove_dir(&cgroup).expect("remove the emptied cgroup");

    let outcome = engine.invoke(&spec, request("t2", json!({}))).await;
    // A fresh instance answered (with a spare's uid, perhaps: the old instance was the
    // function's last).
    assert!(ret(&outcome).is_u64(), "{outcome:?}");
    assert!(outcome.cold_start, "{outcome:?}");
    assert_eq!(engine.live_instances(), 1);
    eventually("the old instance's processes are gone", || {
        std::fs::read_to_string(refuge.0.join("cgroup.procs")).is_ok_and(|procs| procs.is_empty())
    })
    .await;
    drop(refuge);
    engine.shutdown().await;
    // The cold start refilled the spares: shutdown waits for that too, so no instance's
    // cgroup (the refilled spare's included) is left under the engine's.
    let root = cgroup.parent().expect("the engine's cgroup");
    let left: Vec<_> = std::fs::read_dir(root)
        .expect("engine cgroup")
        .flatten()
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.path())
        .collect();
    assert!(left.is_empty(), "left after shutdown: {left:?}");
}

/// The fixture's engine if this host has a cgroup v2 to freeze instances with; `None` (the
/// test is skipped) otherwise.
async fn engine_that_freezes(fixture: &Fixture) -> Option<Engine> {
    let engine = fixture.engine().await;
    if let CgroupSupport::Unavailable { reason } = &engine.capabilities().cgroup {
        eprintln!("skipped: no cgroup v2 to freeze with ({reason})");
        engine.shutdown().await;
        return None;
    }
    Some(engine)
}

/// A cgroup the test made; removed on drop, whatever it still holds killed first (a failed
/// test leaves nothing behind either).
struct Refuge(std::path::PathBuf);

impl Refuge {
    fn create(dir: std::path::PathBuf) -> Refuge {
        std::fs::create_dir(&dir).expect("refuge cgroup");
        Refuge(dir)
    }
}

impl Drop for Refuge {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..200 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!("cannot remove {}", self.0.display());
    }
}

/// The live processes whose real uid is `uid`.
fn pids_of(uid: u64) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
            let real = status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next())
                .and_then(|id| id.parse::<u64>().ok());
            (real == Some(uid) && !status.contains("State:\tZ")).then_some(pid)
        })
        .collect()
}

/// The cgroup v2 directory of `pid`, under the host's cgroup2 mount.
fn cgroup_dir_of(pid: u32) -> std::path::PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    let root = mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&"cgroup2"))
        .map(|fields| fields[1].to_owned())
        .expect("a cgroup2 mount");
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let path = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    std::path::Path::new(&root).join(path.trim_start_matches('/'))
}

/// Whether any live process has the real uid `uid`.
fn runs_as(uid: u64) -> bool {
    !pids_of(uid).is_empty()
}
