"""The server process itself: health check, shutdown, persistence across a restart, generated
credentials, and refusing to start on bad input."""

import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import shutil
import tempfile
import threading
import time
import tomllib
from pathlib import Path

import pytest

from helpers import (
    ECHO,
    RawClient,
    RawResponse,
    assert_error,
    assert_ok,
    finished_log,
    invoke_data,
    poll,
    py_zip,
    toolbox_zip,
    unique_name,
)
from api3_helpers import envelope as api3_envelope
from nimbus_server import LISTENING_RE, clean_env, nimbus_bin

FAIL_TIMEOUT_S = 20


# --------------------------------------------------------------------------------------------
# A running server
# --------------------------------------------------------------------------------------------


def test_healthz(server):
    status, _ = server.http_get("/healthz")
    assert status == 200


def test_listening_line_is_printed_once(server):
    assert sum(bool(LISTENING_RE.match(line)) for line in server.stdout_lines) == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_legacy_path_without_parameters_answers_json(server, method):
    raw = server.raw()
    resp = raw.send_raw(method, "/v2/index.php", b"" if method == "POST" else None)
    assert resp.status == 200
    assert resp.content_type.split(";")[0].strip() == "application/json"
    assert_error(resp.json(), 4000, "MissingParameter")


def test_configured_credentials_create_no_credentials_file(server, api):
    assert_ok(api.list())
    assert not (server.data_dir / "credentials").exists()


def process_table():
    """{pid: (ppid, state)} of every process visible in /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def descendants(pid):
    table = process_table()
    found, frontier = set(), {pid}
    while frontier:
        children = {p for p, (ppid, _) in table.items() if ppid in frontier} - found
        found |= children
        frontier = children
    return found


def alive(pids):
    table = process_table()
    return {p for p in pids if p in table and table[p][1] != "Z"}


def test_sigterm_stops_the_server_and_its_instances(server_factory):
    server = server_factory.start()
    api = server.legacy()
    name = unique_name()
    assert_ok(api.create(name, toolbox_zip()))
    invoke_data(api.invoke(name, {"return": "count"}))  # leaves a warm instance behind
    children = descendants(server.pid)
    port = server.port

    proc = server.proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    assert proc.returncode in (0, -signal.SIGTERM)
    left = poll(lambda: alive(children), lambda pids: not pids, timeout=5)
    assert not left, f"processes left behind after SIGTERM: {sorted(left)}"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_sigterm_lets_an_in_flight_invocation_finish(server_factory):
    server = server_factory.start()
    api = server.legacy()
    name = unique_name()
    assert_ok(api.create(name, toolbox_zip(), timeout=10))
    invoke_data(api.invoke(name, {}))  # warm, so the slow call below starts at once
    result = {}

    def slow_call():
        result["resp"] = api.invoke(name, {"sleep": 2, "return": "count"})

    caller = threading.Thread(target=slow_call)
    caller.start()
    poll(lambda: len(descendants(server.pid)), lambda n: n > 0, timeout=5)
    time.sleep(0.5)  # the call is inside the handler's 2 s sleep
    proc = server.proc
    proc.send_signal(signal.SIGTERM)
    caller.join(timeout=15)
    data = invoke_data(result["resp"])
    assert json.loads(data["retMsg"])["count"] == 2
    proc.wait(timeout=10)
    assert proc.returncode in (0, -signal.SIGTERM)


def test_missing_data_dir_is_created(server_factory):
    data_dir = server_factory.new_dir() / "nested" / "deeper"
    server = server_factory.start(data_dir=data_dir)
    assert_ok(server.legacy().list())
    assert data_dir.is_dir()


# --------------------------------------------------------------------------------------------
# Persistence
# --------------------------------------------------------------------------------------------


def test_functions_and_logs_survive_a_restart(server_factory):
    first = server_factory.start()
    api = first.legacy()
    name = unique_name("persist")
    env = {"variables": [{"key": "KEPT", "value": "yes"}]}
    assert_ok(
        api.create(name, toolbox_zip(), description="kept", memorySize=256, timeout=9,
                   environment=env)
    )
    sync_id = invoke_data(api.invoke(name, {"return": "count"}))["requestId"]
    async_id = assert_ok(api.invoke(name, {"k": 1}, invokeType="Event"))["data"]["requestId"]
    finished_log(api, name, async_id)
    before = assert_ok(api.get(name, code=1))["data"]
    total_before = assert_ok(api.list())["data"]["total"]
    first.stop()

    second = server_factory.start(data_dir=first.data_dir, secret_key=first.secret_key)
    api = second.legacy()
    after = assert_ok(api.get(name, code=1))["data"]
    for key in ("functionName", "handler", "runtime", "memorySize", "timeout", "description",
                "codeSize", "addTime", "modTime", "code", "environment", "namespace"):
        assert after[key] == before[key], key
    assert assert_ok(api.list())["data"]["total"] == total_before
    logs = assert_ok(api.logs(name))
    assert {sync_id, async_id} <= {entry["requestId"] for entry in logs["data"]}
    assert logs["total"] == 2
    data = invoke_data(api.invoke(name, {"return": "count"}))
    assert json.loads(data["retMsg"])["count"] == 1  # a new process, the same code
    data = invoke_data(api.invoke(name, {"return": "context", "env": ["KEPT"]}))
    assert json.loads(data["retMsg"])["env"] == {"KEPT": "yes"}


def test_deleted_function_stays_deleted_after_a_restart(server_factory):
    first = server_factory.start()
    name = unique_name()
    assert_ok(first.legacy().create(name, py_zip(ECHO)))
    assert_ok(first.legacy().delete(name))
    first.stop()
    second = server_factory.start(data_dir=first.data_dir, secret_key=first.secret_key)
    assert_error(second.legacy().get(name), 5000, "ResourceNotFound.Function")


# --------------------------------------------------------------------------------------------
# Generated credentials
# --------------------------------------------------------------------------------------------


def read_credentials(path):
    with open(path, "rb") as f:
        creds = tomllib.load(f)
    assert isinstance(creds["secret_id"], str) and creds["secret_id"]
    assert isinstance(creds["secret_key"], str) and creds["secret_key"]
    return creds


def test_first_start_without_credentials_generates_a_pair(server_factory):
    server = server_factory.start(env_credentials=False)
    path = server.data_dir / "credentials"
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = read_credentials(path)

    listening = next(i for i, line in enumerate(server.stdout_lines) if LISTENING_RE.match(line))
    announced = [
        line for line in server.stdout_lines[:listening]
        if creds["secret_id"] in line and (str(path) in line or str(path.resolve()) in line)
    ]
    assert announced, server.stdout_lines
    assert not any(creds["secret_key"] in line for line in server.stdout_lines)
    assert creds["secret_key"] not in Path(server.log_path).read_text("utf-8", "replace")

    api = server.legacy(secret_id=creds["secret_id"], secret_key=creds["secret_key"])
    assert_ok(api.list())
    wrong = server.legacy(secret_id=creds["secret_id"], secret_key=creds["secret_key"] + "x")
    assert_error(wrong.list(), 4100, "AuthFailure")


def test_generated_credentials_are_kept_across_restarts(server_factory):
    first = server_factory.start(env_credentials=False)
    path = first.data_dir / "credentials"
    content = path.read_bytes()
    creds = read_credentials(path)
    first.stop()

    second = server_factory.start(data_dir=first.data_dir, env_credentials=False)
    assert path.read_bytes() == content
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    api = second.legacy(secret_id=creds["secret_id"], secret_key=creds["secret_key"])
    assert_ok(api.list())
    assert not any(creds["secret_key"] in line for line in second.stdout_lines)


def test_two_data_dirs_generate_different_pairs(server_factory):
    one = server_factory.start(env_credentials=False)
    two = server_factory.start(env_credentials=False)
    a = read_credentials(one.data_dir / "credentials")
    b = read_credentials(two.data_dir / "credentials")
    assert a["secret_key"] != b["secret_key"]
    # One server's key does not open the other.
    raw = RawClient(two.host, a["secret_id"], a["secret_key"])
    resp = raw.send("GET", raw.signed("ListFunctions")).json()
    assert resp["code"] in (4100, 4104), resp


# --------------------------------------------------------------------------------------------
# Start-up errors
# --------------------------------------------------------------------------------------------


@pytest.fixture
def scratch():
    root = Path(tempfile.mkdtemp(prefix="nimbus-it-scratch-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def serve_expecting_failure(*args, data_dir):
    """Runs `nimbus serve` that must exit non-zero on its own; answers (stdout, stderr)."""
    env = clean_env(NIMBUS_SECRET_ID="AKIDnimbustest", NIMBUS_SECRET_KEY="startup-error-key")
    argv = [nimbus_bin(), "serve", "--data-dir", str(data_dir), *args]
    if "--listen" not in args:
        argv += ["--listen", "127.0.0.1:0"]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=FAIL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        pytest.fail(f"nimbus serve {args} kept running instead of refusing to start")
    assert proc.returncode != 0, f"exit 0\nstdout: {stdout}\nstderr: {stderr}"
    assert not any(LISTENING_RE.match(line) for line in stdout.splitlines()), stdout
    assert stderr.strip(), "no error on stderr"
    return stdout, stderr


def test_unknown_flag_is_refused(scratch):
    serve_expecting_failure("--no-such-flag", data_dir=scratch)


@pytest.mark.parametrize("listen", ["not-an-address", "127.0.0.1:99999", "127.0.0.1"])
def test_invalid_listen_address_is_refused(scratch, listen):
    serve_expecting_failure("--listen", listen, data_dir=scratch)


def test_busy_port_is_refused(scratch):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        _, stderr = serve_expecting_failure("--listen", f"127.0.0.1:{port}", data_dir=scratch)
    assert str(port) in stderr


def test_data_dir_under_a_regular_file_is_refused(scratch):
    blocker = scratch / "a-file"
    blocker.write_text("not a directory\n")
    data_dir = blocker / "data"
    _, stderr = serve_expecting_failure(data_dir=data_dir)
    assert str(blocker) in stderr


def test_empty_config_file_is_accepted(server_factory, scratch):
    config = scratch / "nimbus.toml"
    config.write_text("")
    server = server_factory.start(extra_args=["--config", str(config)])
    assert server.http_get("/healthz")[0] == 200


@pytest.mark.parametrize("case", ["missing", "directory", "not-toml", "unknown-key"])
def test_bad_config_file_is_refused(scratch, case):
    config = scratch / "nimbus.toml"
    if case == "directory":
        config.mkdir()
    elif case == "not-toml":
        config.write_text("this is = = not [toml\n")
    elif case == "unknown-key":
        config.write_text('no_such_setting_anywhere = "x"\n')
    _, stderr = serve_expecting_failure("--config", str(config), data_dir=scratch / "data")
    expected = "no_such_setting_anywhere" if case == "unknown-key" else "nimbus.toml"
    assert expected in stderr


# --------------------------------------------------------------------------------------------
# Request bodies over the server's limit
# --------------------------------------------------------------------------------------------

MAX_BODY_BYTES = 80 * 1024 * 1024  # crates/api/src/lib.rs


def post_oversized(host, path, size):
    """POSTs `size` bytes, one shared 1 MiB block at a time (never held whole), and reads the
    answer even if the server closed the connection before taking all of them: it stops
    reading at its limit, and SDKs (urllib3) read the answer after a broken pipe too."""
    hostname, port = host.rsplit(":", 1)
    conn = http.client.HTTPConnection(hostname, int(port), timeout=60)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", "application/x-www-form-urlencoded")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        block = b"a" * (1 << 20)
        try:
            for offset in range(0, size, len(block)):
                conn.send(block[: size - offset])
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = conn.getresponse()
        found = {k.lower(): v for k, v in resp.getheaders()}
        return RawResponse(resp.status, found, resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize("over_by", [1, 16 * 1024 * 1024])
@pytest.mark.parametrize("path", ["/v2/index.php", "/"])
def test_body_over_the_limit_is_refused_in_the_dialect(server, path, over_by):
    resp = post_oversized(server.host, path, MAX_BODY_BYTES + over_by)
    assert resp.status == 200, (resp.status, resp.body[:200])
    assert resp.headers.get("content-type") == "application/json", resp.headers
    if path == "/":
        error = api3_envelope(resp)["Error"]
        assert error["Code"] == "InvalidParameter.RequestTooLarge", error
        assert error["Message"], error
    else:
        assert_error(resp.json(), 4000, "InvalidParameter.RequestTooLarge")
