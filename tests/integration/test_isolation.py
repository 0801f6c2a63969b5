"""The sandbox (issue 4) through the real server and API 3.0: hostile functions, in Python and
Node.js, try to read the platform's database and credentials and another function's code, list
host processes, kill the server, write outside /tmp, fill /tmp, fork-bomb, allocate past their
memory limit and reach the server's port on loopback. Each attempt fails inside the function
(which reports what happened) or ends the invocation with the right status; the server keeps
serving another function after each; and once the server stops, nothing of its sandboxes runs.

The server runs with its default isolation (the sandbox), which needs root.
"""

import hashlib
import json
import os
import threading
import time
import tomllib
from pathlib import Path

import pytest

from api3_helpers import Api3, node_zip
from helpers import ECHO, py_zip, unique_name
from nimbus_server import ServerFactory

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root")

# The sandbox's default uid range (nimbus-sandbox's DEFAULT_FIRST_ID, DEFAULT_ID_COUNT).
SANDBOX_UIDS = range(2_000_000_000, 2_000_000_000 + 100_000)
MEMORY_MB = 1024  # room for a fork bomb of 512 small processes (resident sets are summed)
TMP_LIMIT = 64 << 20

PY_HOSTILE = r'''
import errno, os, signal, socket


def attempt(action):
    try:
        return {"ok": True, "value": action()}
    except OSError as e:
        return {"ok": False, "error": errno.errorcode.get(e.errno, str(e))}


def read(path):
    with open(path, "rb") as f:
        return f.read(64).decode("utf-8", "replace")


def write(path):
    with open(path, "w") as f:
        f.write("pwned")
    return path


def connect(host, port):
    with socket.create_connection((host, port), timeout=3):
        return "connected"


def fill_tmp():
    written, error = 0, None
    fd = os.open("/tmp/fill", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    chunk = b"x" * (1 << 20)
    try:
        while written < (1 << 30):
            written += os.write(fd, chunk)
    except OSError as e:
        error = errno.errorcode.get(e.errno)
    finally:
        os.close(fd)
    return {"written": written, "error": error}


def fork_bomb():
    spawned, error = 0, None
    try:
        while spawned < 100000:
            os.posix_spawn("/bin/sleep", ["sleep", "120"], {})
            spawned += 1
    except OSError as e:
        error = errno.errorcode.get(e.errno)
    return {"spawned": spawned, "error": error}


def main_handler(event, context):
    attack = event["attack"]
    me = {"uid": os.getuid(), "pid": os.getpid()}
    if attack == "read":
        me["attempts"] = {p: attempt(lambda: read(p)) for p in event["paths"]}
        me["own_code"] = attempt(lambda: read("/var/user/index.py"))
        me["data_dir"] = attempt(lambda: sorted(os.listdir(event["data_dir"])))
    elif attack == "processes":
        me["procs"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    elif attack == "kill":
        me["server"] = attempt(lambda: os.kill(event["pid"], signal.SIGKILL))
        me["everyone"] = attempt(lambda: os.kill(-1, signal.SIGKILL))
    elif attack == "write":
        me["attempts"] = {p: attempt(lambda: write(p)) for p in event["paths"]}
        me["tmp"] = attempt(lambda: write("/tmp/allowed"))
    elif attack == "fill_tmp":
        me.update(fill_tmp())
    elif attack == "fork_bomb":
        me.update(fork_bomb())
    elif attack == "memory":
        kept = []
        while True:
            kept.append(b"x" * (16 << 20))
    elif attack == "connect":
        me["attempts"] = {"%s:%d" % (h, p): attempt(lambda: connect(h, p))
                          for h, p in event["targets"]}
    elif attack == "linger":
        import subprocess, time
        subprocess.Popen(["sleep", "300"], start_new_session=True)
        time.sleep(event["seconds"])
    return me
'''

JS_HOSTILE = r'''
const fs = require('fs');
const net = require('net');
const { spawn } = require('child_process');

function attempt(action) {
  try {
    return { ok: true, value: action() };
  } catch (e) {
    return { ok: false, error: e.code || String(e) };
  }
}

async function attemptAsync(action) {
  try {
    return { ok: true, value: await action() };
  } catch (e) {
    return { ok: false, error: e.code || String(e) };
  }
}

const read = (path) => fs.readFileSync(path).subarray(0, 64).toString();
const write = (path) => { fs.writeFileSync(path, 'pwned'); return path; };

function connect(host, port) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port, timeout: 3000 });
    socket.on('connect', () => { socket.destroy(); resolve('connected'); });
    socket.on('timeout', () => {
      socket.destroy();
      reject(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' }));
    });
    socket.on('error', reject);
  });
}

function fillTmp() {
  const fd = fs.openSync('/tmp/fill', 'w');
  const chunk = Buffer.alloc(1 << 20, 120);
  let written = 0;
  let error = null;
  try {
    while (written < (1 << 30)) written += fs.writeSync(fd, chunk);
  } catch (e) {
    error = e.code;
  } finally {
    fs.closeSync(fd);
  }
  return { written, error };
}

async function forkBomb() {
  let spawned = 0;
  while (spawned < 100000) {
    const child = spawn('/bin/sleep', ['120'], { stdio: 'ignore' });
    if (child.pid === undefined) {
      const error = await new Promise((resolve) => child.once('error', (e) => resolve(e.code)));
      return { spawned, error };
    }
    child.on('error', () => {});
    spawned++;
  }
  return { spawned, error: null };
}

exports.main_handler = async (event) => {
  const me = { uid: process.getuid(), pid: process.pid };
  switch (event.attack) {
    case 'read': {
      me.attempts = {};
      for (const path of event.paths) me.attempts[path] = attempt(() => read(path));
      me.own_code = attempt(() => read('/var/user/index.js'));
      me.data_dir = attempt(() => fs.readdirSync(event.data_dir).sort());
      break;
    }
    case 'processes':
      me.procs = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p)).map(Number)
        .sort((a, b) => a - b);
      break;
    case 'kill':
      me.server = attempt(() => process.kill(event.pid, 'SIGKILL'));
      me.everyone = attempt(() => process.kill(-1, 'SIGKILL'));
      break;
    case 'write': {
      me.attempts = {};
      for (const path of event.paths) me.attempts[path] = attempt(() => write(path));
      me.tmp = attempt(() => write('/tmp/allowed'));
      break;
    }
    case 'fill_tmp':
      Object.assign(me, fillTmp());
      break;
    case 'fork_bomb':
      Object.assign(me, await forkBomb());
      break;
    case 'memory': {
      const kept = [];
      for (;;) kept.push(Buffer.alloc(16 << 20, 1));
    }
    case 'connect': {
      me.attempts = {};
      for (const [host, port] of event.targets) {
        me.attempts[`${host}:${port}`] = await attemptAsync(() => connect(host, port));
      }
      break;
    }
    case 'linger':
      spawn('sleep', ['300'], { detached: true, stdio: 'ignore' }).unref();
      await new Promise((resolve) => setTimeout(resolve, event.seconds * 1000));
      break;
    default:
      throw new Error(`unknown attack ${event.attack}`);
  }
  return me;
};
'''

VICTIM = '''
SECRET = "victim-secret-4711"
def main_handler(event, context):
    return SECRET
'''

RUNTIMES = {
    "python": ("Python3.9", lambda: py_zip(PY_HOSTILE)),
    "node": ("Nodejs18.15", lambda: node_zip(JS_HOSTILE)),
}


@pytest.fixture(scope="module")
def isolated():
    """A server of its own, whose credentials are in its data directory's credentials file
    (generated at start-up), as they are when no credentials are configured."""
    factory = ServerFactory()
    server = factory.start(env_credentials=False)
    with open(server.data_dir / "credentials", "rb") as f:
        creds = tomllib.load(f)
    server.secret_id, server.secret_key = creds["secret_id"], creds["secret_key"]
    yield server
    factory.close()


@pytest.fixture(scope="module")
def sdk(isolated):
    return Api3.for_server(isolated)


@pytest.fixture(scope="module")
def bystander(sdk):
    name = unique_name("bystander")
    sdk.create(name, py_zip(ECHO), MemorySize=128, Timeout=10)
    return name


@pytest.fixture(scope="module")
def victim(isolated, sdk):
    """Another function, and where its code lies on the host."""
    code = py_zip(VICTIM)
    name = unique_name("victim")
    sdk.create(name, code)
    path = isolated.data_dir / "code" / hashlib.sha256(code).hexdigest() / "index.py"
    assert path.is_file(), path
    return name, path


@pytest.fixture(scope="module")
def hostile(sdk):
    names = {}
    for key, (runtime, code) in RUNTIMES.items():
        name = unique_name(f"hostile-{key}")
        sdk.create(name, code(), runtime=runtime, MemorySize=MEMORY_MB, Timeout=60)
        names[key] = name
    return names


def attack(sdk, name, event):
    """Runs one attack; answers the invocation's Result (RetMsg parsed when it succeeded)."""
    result = sdk.invoke(name, event, LogType="Tail")
    if result["InvokeResult"] == 0:
        result["ret"] = json.loads(result["RetMsg"])
    return result


def ret_of(result):
    assert result["InvokeResult"] == 0, result
    return result["ret"]


def status_of(result):
    assert result["InvokeResult"] != 0, result
    return json.loads(result["ErrMsg"])["statusCode"]


def assert_still_serving(server, sdk, bystander):
    assert server.proc is not None and server.proc.poll() is None, "the server died"
    marker = unique_name("ping")
    result = sdk.invoke(bystander, {"ping": marker})
    assert result["InvokeResult"] == 0, result
    assert json.loads(result["RetMsg"]) == {"ping": marker}


def processes_of_uid(uid):
    """Host pids running as `uid` (zombies included, as the kernel still lists them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:") and int(line.split()[1]) == uid:
                found.append(int(entry.name))
    return found


def wait_until_no_process_of(uids, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        left = {uid: processes_of_uid(uid) for uid in uids}
        left = {uid: pids for uid, pids in left.items() if pids}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_platform_files_and_other_code_are_not_visible(isolated, sdk, hostile, victim,
                                                       bystander, runtime):
    victim_name, victim_code = victim
    paths = [
        str(isolated.data_dir / "nimbus.db"),
        str(isolated.data_dir / "credentials"),
        str(victim_code),
        "/etc/shadow",
        "/root/.bashrc",
    ]
    got = ret_of(attack(sdk, hostile[runtime], {
        "attack": "read", "paths": paths, "data_dir": str(isolated.data_dir)}))
    for path in paths:
        outcome = got["attempts"][path]
        assert not outcome["ok"] and outcome["error"] == "ENOENT", (path, outcome)
    assert got["own_code"]["ok"], got
    assert got["uid"] in SANDBOX_UIDS, got
    # The data directory shows only the engine's runtime shims, bound read-only.
    listing = got["data_dir"]
    assert not listing["ok"] or listing["value"] == ["runtimes"], listing
    # The victim still works and keeps its secret.
    assert json.loads(sdk.invoke(victim_name, {})["RetMsg"]) == "victim-secret-4711"
    assert_still_serving(isolated, sdk, bystander)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_host_processes_are_not_visible_and_the_server_cannot_be_killed(isolated, sdk, hostile,
                                                                        bystander, runtime):
    got = ret_of(attack(sdk, hostile[runtime], {"attack": "processes"}))
    procs = got["procs"]
    assert got["pid"] in procs, got
    assert isolated.pid not in procs and 1 not in procs, got
    assert len(procs) <= 3 and max(procs) < 100, got

    got = ret_of(attack(sdk, hostile[runtime], {"attack": "kill", "pid": isolated.pid}))
    assert got["server"] == {"ok": False, "error": "ESRCH"}, got
    # kill(-1) reaches only the function's own namespace (here: nothing but itself).
    time.sleep(0.2)
    os.kill(isolated.pid, 0)
    assert_still_serving(isolated, sdk, bystander)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_writes_outside_tmp_fail(isolated, sdk, hostile, victim, bystander, runtime):
    victim_dir = victim[1].parent
    paths = [
        "/var/user/evil",
        "/etc/evil",
        "/usr/evil",
        "/evil",
        str(isolated.data_dir / "evil"),
        str(victim_dir / "evil"),
    ]
    got = ret_of(attack(sdk, hostile[runtime], {"attack": "write", "paths": paths}))
    for path in paths:
        outcome = got["attempts"][path]
        assert not outcome["ok"] and outcome["error"] in ("EROFS", "EACCES", "ENOENT"), (
            path, outcome)
    assert got["tmp"]["ok"], got
    assert not (isolated.data_dir / "evil").exists()
    assert not (victim_dir / "evil").exists()
    assert_still_serving(isolated, sdk, bystander)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_tmp_is_bounded(isolated, sdk, hostile, bystander, runtime):
    got = ret_of(attack(sdk, hostile[runtime], {"attack": "fill_tmp"}))
    assert got["error"] in ("ENOSPC", "EFBIG"), got
    assert got["written"] <= TMP_LIMIT, got
    assert_still_serving(isolated, sdk, bystander)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_fork_bomb_is_contained_and_reported(isolated, sdk, hostile, bystander, runtime):
    result = attack(sdk, hostile[runtime], {"attack": "fork_bomb"})
    got = ret_of(result)
    assert got["error"] == "EAGAIN", got
    # RLIMIT_NPROC: 64 per instance times the default concurrency of 8, threads included.
    assert 0 < got["spawned"] < 512, got
    reports = [line for line in result["Log"].splitlines() if "Process limit reached" in line]
    assert len(reports) == 1, result["Log"]
    # The instance was stopped with everything it started.
    left = wait_until_no_process_of([got["uid"]])
    assert not left, left
    assert_still_serving(isolated, sdk, bystander)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_memory_past_the_limit_is_434(isolated, sdk, hostile, bystander, runtime):
    result = attack(sdk, hostile[runtime], {"attack": "memory"})
    assert status_of(result) == 434, result
    assert_still_serving(isolated, sdk, bystander)
    # The function works again afterwards, in a fresh instance.
    assert ret_of(attack(sdk, hostile[runtime], {"attack": "processes"}))["procs"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_no_network_not_even_the_servers_port(isolated, sdk, hostile, bystander, runtime):
    targets = [["127.0.0.1", isolated.port], ["10.255.255.1", 80]]
    got = ret_of(attack(sdk, hostile[runtime], {"attack": "connect", "targets": targets}))
    loopback = got["attempts"][f"127.0.0.1:{isolated.port}"]
    assert loopback == {"ok": False, "error": "ECONNREFUSED"}, got
    outside = got["attempts"]["10.255.255.1:80"]
    assert not outside["ok"] and outside["error"] in ("ENETUNREACH", "EHOSTUNREACH"), got
    assert_still_serving(isolated, sdk, bystander)


def test_distinct_functions_run_as_distinct_uids(sdk, hostile):
    uids = {runtime: ret_of(attack(sdk, name, {"attack": "processes"}))["uid"]
            for runtime, name in hostile.items()}
    assert len(set(uids.values())) == len(uids), uids
    assert all(uid in SANDBOX_UIDS for uid in uids.values()), uids


TICKER = """
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
"""


def test_an_idle_instance_is_frozen_until_its_next_invocation(sdk):
    """As on SCF, a thread the handler left running stands still between invocations: the
    server freezes an idle instance 50 ms after its invocation returned."""
    if own_cgroup_dir(os.getpid()) is None:
        pytest.skip("no cgroup v2 on this host: idle instances cannot be frozen")
    name = unique_name("ticker")
    sdk.create(name, py_zip(TICKER), MemorySize=128, Timeout=10)
    assert ret_of(attack(sdk, name, {})) == 0
    time.sleep(1.5)
    longest_pause = ret_of(attack(sdk, name, {}))
    assert longest_pause > 0.75, longest_pause


def own_cgroup_dir(pid):
    """The cgroup v2 directory `pid` runs in, if a cgroup2 hierarchy is mounted."""
    mount = None
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            mount = Path(fields[1])
    if mount is None:
        return None
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return mount / line[3:].lstrip("/")
    return None


def test_nothing_is_left_running_after_the_server_stops(isolated, sdk, hostile):
    # Instances left behind: one per function, each running an invocation that started a
    # child in a session of its own (out of the instance's process group) when the server is
    # told to stop.
    uids = [ret_of(attack(sdk, name, {"attack": "processes"}))["uid"]
            for name in hostile.values()]
    lingering = [threading.Thread(target=sdk.invoke, args=(name, {"attack": "linger",
                                                                  "seconds": 3}))
                 for name in hostile.values()]
    for thread in lingering:
        thread.start()
    deadline = time.monotonic() + 10
    while not all(len(processes_of_uid(uid)) >= 2 for uid in uids):
        assert time.monotonic() < deadline, {uid: processes_of_uid(uid) for uid in uids}
        time.sleep(0.1)
    pid = isolated.pid
    cgroup_parent = own_cgroup_dir(pid)
    assert isolated.stop() == 0
    for thread in lingering:
        thread.join(timeout=10)

    left = wait_until_no_process_of(uids)
    assert not left, left
    # Every process the server's sandboxes ran sat in a cgroup named after the server's pid
    # (where cgroups are in use): none is left, and neither is any of those cgroups. (Other
    # servers may be running sandboxes meanwhile, so sandbox uids alone do not tell.)
    marker = f"/nimbus.{pid}."
    stray = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroups = (entry / "cgroup").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if marker in cgroups and "State:\tZ" not in status:
            stray.append((entry.name, status.splitlines()[0]))
    assert not stray, stray
    if cgroup_parent is not None and cgroup_parent.is_dir():
        leftovers = [d.name for d in cgroup_parent.iterdir()
                     if d.name.startswith(f"nimbus.{pid}.")]
        assert not leftovers, leftovers
