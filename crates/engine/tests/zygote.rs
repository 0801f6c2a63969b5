//! Python spares forked from the zygote (the engine's `zygote.rs`) against spares that started
//! their own interpreter: the same sandbox, seen from inside and from the host. Runs as root,
//! in the sandbox, where the host offers cgroup v2 (the zygote needs it).

mod common;

use common::{Fixture, child_processes, eventually, request, ret};
use nimbus_engine::{Engine, Runtime};
use serde_json::{Value, json};

/// What the instance sees of its sandbox.
const PROBE: &str = r#"
import os, socket

def main_handler(event, context):
    if event.get("exit"):
        os._exit(3)
    status = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
                   "Seccomp_filters", "NSpid"):
            status[key] = value.split()
    try:
        os.setuid(0)
        setuid = "allowed"
    except PermissionError:
        setuid = "refused"
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=0.2)
        network = "reached"
    except OSError as exc:
        network = type(exc).__name__
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
        "ppid": os.getppid(),
        "cwd": os.getcwd(),
        "umask": os.umask(0o022),
        "root": sorted(os.listdir("/")),
        "processes": sorted(p for p in os.listdir("/proc") if p.isdigit()),
        "cgroup": open("/proc/self/cgroup").read(),
        "limits": open("/proc/self/limits").read(),
        "fds": sorted(os.listdir("/proc/self/fd")),
        "env": sorted(os.environ),
        "hostname": socket.gethostname(),
        "status": status,
        "setuid": setuid,
        "network": network,
        "dumpable": os.access("/proc/self/environ", os.R_OK),
    }
"#;

async fn engine(fixture: &Fixture, zygote: bool) -> Engine {
    let mut config = fixture.config().await;
    config.python_spares = 1;
    config.node_spares = 0;
    config.python_zygote = zygote;
    let engine = Engine::new(config).expect("engine starts");
    eventually("a spare is ready", || engine.spare_instances() == 1).await;
    engine
}

/// The uids of the engine's child processes' children (a zygote's spares).
fn grandchildren_uids() -> Vec<(u32, u32)> {
    let mut found = Vec::new();
    for child in child_processes() {
        let children = std::fs::read_to_string(format!("/proc/{child}/task/{child}/children"))
            .unwrap_or_default();
        for pid in children.split_whitespace().filter_map(|p| p.parse().ok()) {
            if let Some(uid) = uid_of(pid) {
                found.push((pid, uid));
            }
        }
    }
    found
}

fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Stops the engine and waits until none of its processes (instances, spares, the zygote)
/// is left.
async fn shut_down(engine: Engine) {
    engine.shutdown().await;
    drop(engine);
    eventually("no instance, spare or zygote is left", || {
        child_processes().is_empty()
    })
    .await;
}

/// The zygote: the engine's one Python child.
fn zygote_pid() -> u32 {
    child_processes()
        .into_iter()
        .find(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.starts_with("python"))
        })
        .expect("the zygote is a child of the engine")
}

/// Whether the host gives instances a cgroup, without which there is no zygote (the test
/// says it is skipped).
fn has_cgroup_v2() -> bool {
    let found = nimbus_sandbox::probe(&nimbus_sandbox::SandboxConfig::default()).is_ok_and(
        |capabilities| {
            !matches!(
                capabilities.cgroup,
                nimbus_sandbox::CgroupSupport::Unavailable { .. }
            )
        },
    );
    if !found {
        eprintln!("skipped: no cgroup v2 here, so no zygote");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_spare_is_sandboxed_as_one_that_started_its_own_interpreter() {
    if !has_cgroup_v2() {
        return;
    }
    let fixture = Fixture::new(&[("index.py", PROBE)]);
    let spec = fixture.spec("probe", Runtime::Python3);

    let started = engine(&fixture, false).await;
    let own = ret(&started.invoke(&spec, request("r1", json!({}))).await).clone();
    assert!(
        grandchildren_uids().iter().all(|(_, uid)| *uid == 0),
        "without a zygote, the engine's children's children are the sandbox's init"
    );
    shut_down(started).await;

    let forking = engine(&fixture, true).await;
    let forked = ret(&forking.invoke(&spec, request("r2", json!({}))).await).clone();
    let uid = forked["uid"]
        .as_u64()
        .and_then(|uid| u32::try_from(uid).ok());
    assert!(
        grandchildren_uids()
            .iter()
            .any(|(_, child_uid)| Some(*child_uid) == uid),
        "the instance's runtime is a child of the zygote, a child of the engine"
    );

    let compare = |value: &Value| {
        let mut value = value.clone();
        let object = value.as_object_mut().expect("an object");
        // Each spare has a uid of its own; what matters is that it is not root.
        for key in ["uid", "gid"] {
            assert_ne!(object.remove(key), Some(json!(0)), "{key}");
        }
        // Init (1) for a runtime it started; outside the namespace (0) for a forked one.
        object.remove("ppid");
        value
    };
    assert_eq!(compare(&forked), compare(&own));
    assert_eq!(forked["ppid"], 0, "the parent is outside the PID namespace");
    assert_eq!(forked["setuid"], "refused");
    assert_eq!(forked["status"]["CapBnd"], json!(["0000000000000000"]));
    assert_eq!(forked["status"]["NoNewPrivs"], json!(["1"]));
    assert_eq!(forked["status"]["Seccomp"], json!(["2"]));
    assert_eq!(forked["status"]["NSpid"], json!(["2"]));
    assert_eq!(
        forked["processes"],
        json!(["2"]),
        "init is hidden, nothing else runs"
    );

    shut_down(forking).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_instance_that_exits_is_replaced_by_another_fork() {
    if !has_cgroup_v2() {
        return;
    }
    let fixture = Fixture::new(&[("index.py", PROBE)]);
    let spec = fixture.spec("exits", Runtime::Python3);
    let engine = engine(&fixture, true).await;
    let died = engine
        .invoke(&spec, request("r1", json!({"exit": true})))
        .await;
    let (status, _) = common::error(&died);
    assert_eq!(status, 439, "the instance exited");
    eventually("a spare is ready again", || engine.spare_instances() == 1).await;
    let after = ret(&engine.invoke(&spec, request("r2", json!({}))).await);
    assert_eq!(after["setuid"], "refused");
    let uid = after["uid"]
        .as_u64()
        .and_then(|uid| u32::try_from(uid).ok());
    let zygote = zygote_pid();
    let forked: Vec<u32> =
        std::fs::read_to_string(format!("/proc/{zygote}/task/{zygote}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect();
    assert!(
        forked.iter().any(|&pid| uid_of(pid) == uid),
        "the replacement is a child of the zygote: {forked:?}"
    );
    shut_down(engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_zygote_dies_spares_start_their_own_interpreter() {
    if !has_cgroup_v2() {
        return;
    }
    let fixture = Fixture::new(&[("index.py", PROBE)]);
    let engine = engine(&fixture, true).await;
    let zygote = zygote_pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(zygote).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the zygote");
    // The ready spare was forked before: it serves. The one that replaces it cannot be
    // forked, so the engine starts one the usual way.
    for name in ["first", "second", "third"] {
        let outcome = engine
            .invoke(
                &fixture.spec(name, Runtime::Python3),
                request(name, json!({})),
            )
            .await;
        assert_eq!(ret(&outcome)["setuid"], "refused", "{name}");
    }
    eventually("a spare is ready again", || engine.spare_instances() == 1).await;
    assert!(
        common::not_running(zygote),
        "the dead zygote was reaped or is a zombie"
    );
    shut_down(engine).await;
}

/// Reports the function's secret and uid.
const SECRET_PROBE: &str = r#"
import os

def main_handler(event, context):
    return {"uid": os.getuid(), "secret": os.environ.get("API_KEY"), "pid": os.getpid()}
"#;

/// Whether `needle` is in the readable private memory of `pid` (read as root).
fn memory_contains(pid: u32, needle: &[u8]) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut memory = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with("rw") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let mut region = vec![0; usize::try_from(end - start).expect("size")];
        if memory.seek(SeekFrom::Start(start)).is_err() || memory.read_exact(&mut region).is_err() {
            continue;
        }
        if region.windows(needle.len()).any(|window| window == needle) {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_without_a_spare_is_forked_and_the_zygote_never_holds_its_environment() {
    if !has_cgroup_v2() {
        return;
    }
    let fixture = Fixture::new(&[("index.py", SECRET_PROBE)]);
    let mut config = fixture.config().await;
    config.python_spares = 0;
    config.node_spares = 0;
    config.python_zygote = true;
    let engine = Engine::new(config).expect("engine starts");
    let secret = format!(
        "zygote-test-secret-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    );
    let mut spec = fixture.spec("secretive", Runtime::Python3);
    spec.environment.push(("API_KEY".into(), secret.clone()));
    let seen = ret(&engine.invoke(&spec, request("r1", json!({}))).await);
    assert_eq!(seen["secret"], secret.as_str());

    let uid = seen["uid"].as_u64().and_then(|uid| u32::try_from(uid).ok());
    let forked: Vec<_> = grandchildren_uids()
        .into_iter()
        .filter(|(_, child_uid)| Some(*child_uid) == uid)
        .collect();
    assert_eq!(
        forked.len(),
        1,
        "the instance is a child of the zygote: {forked:?}"
    );
    let zygote = zygote_pid();
    assert!(
        memory_contains(forked[0].0, secret.as_bytes()),
        "the instance holds its environment (the scan works)"
    );
    assert!(
        !memory_contains(zygote, secret.as_bytes()),
        "the function's environment reached the zygote"
    );
    shut_down(engine).await;
}

/// Leaves an orphan that exits at once, then reports the processes left in the namespace.
const ORPHAN_PROBE: &str = r#"
import os, time

def main_handler(event, context):
    child = os.fork()
    if child == 0:
        if os.fork() == 0:
            time.sleep(0.05)
            os._exit(0)
        os._exit(0)
    os.waitpid(child, 0)
    time.sleep(0.3)
    states = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with open("/proc/%s/stat" % pid) as f:
                states[pid] = f.read().rsplit(")", 1)[1].split()[0]
    return states
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_init_of_a_forked_instance_reaps_its_orphans() {
    if !has_cgroup_v2() {
        return;
    }
    let fixture = Fixture::new(&[("index.py", ORPHAN_PROBE)]);
    let engine = engine(&fixture, true).await;
    let spec = fixture.spec("orphans", Runtime::Python3);
    let states = ret(&engine.invoke(&spec, request("r1", json!({}))).await);
    assert_eq!(
        states,
        json!({"2": "R"}),
        "only the runtime is left, no zombie"
    );
    shut_down(engine).await;
}
