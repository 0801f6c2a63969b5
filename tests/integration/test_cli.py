"""The `nimbus` client subcommands (deploy, invoke, logs, functions) against a real server."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import TOOLBOX, assert_ok, finished_log, poll, unique_name
from nimbus_server import clean_env, nimbus_bin

CLI_TIMEOUT_S = 60


def run_cli(server, *args, use_env=True, secret_key=None):
    """Runs `nimbus ARGS`; credentials and endpoint come from the environment or from flags."""
    key = secret_key or server.secret_key
    if use_env:
        env = clean_env(
            NIMBUS_ENDPOINT=server.endpoint,
            NIMBUS_SECRET_ID=server.secret_id,
            NIMBUS_SECRET_KEY=key,
        )
        argv = [nimbus_bin(), *args]
    else:
        env = clean_env()
        flags = ["--endpoint", server.endpoint, "--secret-id", server.secret_id]
        flags += ["--secret-key", key]
        argv = [nimbus_bin(), args[0], *flags, *args[1:]]
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=CLI_TIMEOUT_S,
    )


def ok(result):
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    return result


@pytest.fixture
def project():
    """A folder holding a Python function (the toolbox handler), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="nimbus-it-cli-"))
    (root / "index.py").write_text(TOOLBOX)
    (root / "helper.py").write_text("VALUE = 1\n")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def deployed(server, project):
    name = unique_name("cli")
    ok(run_cli(server, "deploy", str(project), "--name", name))
    return name


def test_deploy_creates_a_function_with_the_given_configuration(server, api, project):
    name = unique_name("cli")
    ok(
        run_cli(
            server,
            "deploy", str(project),
            "--name", name,
            "--handler", "index.main_handler",
            "--memory", "256",
            "--timeout", "12",
            "--env", "ALPHA=one",
            "--env", "BETA=two=2",
        )
    )
    data = assert_ok(api.get(name, code=1))["data"]
    assert data["handler"] == "index.main_handler"
    assert data["memorySize"] == 256
    assert data["timeout"] == 12
    assert data["code"] == TOOLBOX
    invoked = api.invoke(name, {"return": "context", "env": ["ALPHA", "BETA"]})
    assert json.loads(assert_ok(invoked)["data"]["retMsg"])["env"] == {
        "ALPHA": "one",
        "BETA": "two=2",
    }


def test_deploy_with_runtime(server, api, project):
    name = unique_name("cli")
    ok(run_cli(server, "deploy", str(project), "--name", name, "--runtime", "Python3.9"))
    assert assert_ok(api.get(name))["data"]["runtime"] == "Python3.9"


def test_deploy_again_updates_the_function(server, api, project, deployed):
    (project / "index.py").write_text("def main_handler(event, context):\n    return 'v2'\n")
    ok(run_cli(server, "deploy", str(project), "--name", deployed, "--timeout", "20"))
    data = assert_ok(api.get(deployed))["data"]
    assert data["timeout"] == 20
    result = ok(run_cli(server, "invoke", deployed))
    assert json.loads(result.stdout) == "v2"


def test_deploy_refuses_an_invalid_name(server, api, project):
    result = run_cli(server, "deploy", str(project), "--name", "1-bad-name-")
    assert result.returncode != 0
    assert result.stderr.strip()


def test_invoke_prints_the_return_value(server, deployed):
    result = ok(run_cli(server, "invoke", deployed, "--event", '{"a": 1, "b": "two"}'))
    assert json.loads(result.stdout) == {"a": 1, "b": "two"}


def test_invoke_with_log_prints_the_log_to_stderr(server, deployed):
    marker = unique_name("cli-print")
    event = json.dumps({"print": marker})
    result = ok(run_cli(server, "invoke", deployed, "--event", event, "--log"))
    assert marker in result.stderr
    assert json.loads(result.stdout) == {"print": marker}


def test_invoke_of_a_failing_function_exits_1(server, deployed):
    text = unique_name("cli-boom")
    result = run_cli(server, "invoke", deployed, "--event", json.dumps({"raise": text}))
    assert result.returncode == 1
    assert text in result.stdout + result.stderr


def test_invoke_unknown_function_fails(server):
    result = run_cli(server, "invoke", unique_name("missing"))
    assert result.returncode != 0
    assert result.stderr.strip()


def test_invoke_async_prints_a_request_id_that_shows_up_in_logs(server, api, deployed):
    result = ok(run_cli(server, "invoke", deployed, "--async", "--event", '{"z": 26}'))
    resp = poll(lambda: assert_ok(api.logs(deployed)), lambda r: r["total"] >= 1, timeout=15)
    assert resp["total"] == 1, resp
    request_id = resp["data"][0]["requestId"]
    assert request_id in result.stdout
    entry = finished_log(api, deployed, request_id)
    assert json.loads(entry["retMsg"]) == {"z": 26}


def test_logs_lists_the_request_ids(server, api, deployed):
    ids = []
    for i in range(2):
        data = assert_ok(api.invoke(deployed, {"i": i}))["data"]
        ids.append(data["requestId"])
    poll(lambda: assert_ok(api.logs(deployed)), lambda r: r["total"] >= 2)
    result = ok(run_cli(server, "logs", deployed))
    for request_id in ids:
        assert request_id in result.stdout
    limited = ok(run_cli(server, "logs", deployed, "--limit", "1"))
    assert sum(request_id in limited.stdout for request_id in ids) == 1


def test_functions_lists_one_line_per_function(server, deployed):
    result = ok(run_cli(server, "functions"))
    matching = [line for line in result.stdout.splitlines() if deployed in line]
    assert len(matching) == 1


def test_flags_work_instead_of_environment(server, project):
    name = unique_name("cli")
    ok(run_cli(server, "deploy", str(project), "--name", name, use_env=False))
    result = ok(run_cli(server, "invoke", name, "--event", '{"f": 1}', use_env=False))
    assert json.loads(result.stdout) == {"f": 1}
    assert name in ok(run_cli(server, "functions", use_env=False)).stdout


@pytest.mark.parametrize("use_env", [True, False])
def test_wrong_secret_key_fails_with_one_line(server, api, project, use_env):
    name = unique_name("cli")
    result = run_cli(
        server, "deploy", str(project), "--name", name, use_env=use_env, secret_key="wrong"
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert assert_ok(api.list(searchKey=name))["data"]["total"] == 0
    result = run_cli(server, "functions", use_env=use_env, secret_key="wrong")
    assert result.returncode != 0
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1


def test_unreachable_endpoint_fails():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = clean_env(
        NIMBUS_ENDPOINT=f"http://127.0.0.1:{port}",
        NIMBUS_SECRET_ID="AKIDnimbustest",
        NIMBUS_SECRET_KEY="whatever",
    )
    result = subprocess.run(
        [nimbus_bin(), "functions"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=CLI_TIMEOUT_S,
    )
    assert result.returncode != 0
    assert result.stderr.strip()


def test_connection_flags_are_global(server, deployed):
    # The contract calls --endpoint/--secret-id/--secret-key global flags: they may also come
    # before the subcommand.
    flags = ["--endpoint", server.endpoint, "--secret-id", server.secret_id]
    flags += ["--secret-key", server.secret_key]
    result = subprocess.run(
        [nimbus_bin(), *flags, "invoke", deployed, "--event", '{"g": 1}'],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=CLI_TIMEOUT_S,
    )
    assert json.loads(ok(result).stdout) == {"g": 1}


def test_status_dead_letters_and_replay(server, tmp_path):
    """`status`, `dead-letters` and `replay` read the async queue through API 3.0."""
    from api3_helpers import Api3

    sdk = Api3.for_server(server)
    source = tmp_path / "fn"
    source.mkdir()
    (source / "index.py").write_text(
        "def main_handler(event, context):\n    raise ValueError('cli-boom')\n")
    name = unique_name("clidlq")
    ok(run_cli(server, "deploy", str(source), "--name", name))
    sdk.call("UpdateFunctionEventInvokeConfig", FunctionName=name,
             AsyncTriggerConfig={"RetryConfig": [{"RetryNum": 0}], "MsgTTL": 3600})
    request_id = ok(run_cli(server, "invoke", name, "--async")).stdout.strip()
    sdk.wait_async(request_id)

    status = ok(run_cli(server, "status", request_id)).stdout
    assert request_id in status and "FAILED" in status and "retCode=430" in status
    letters = ok(run_cli(server, "dead-letters", name)).stdout
    assert request_id in letters and "cli-boom" in letters
    new_id = ok(run_cli(server, "replay", name, request_id)).stdout.strip()
    assert new_id and new_id != request_id
    assert sdk.wait_async(new_id)["Status"] == "FAILED"
    again = run_cli(server, "replay", name, request_id)
    assert again.returncode != 0 and "ResourceNotFound.AsyncEvent" in again.stderr


@pytest.mark.parametrize("command", ["functions", "invoke", "logs"])
def test_closed_stdout_ends_the_command_quietly(server, api, deployed, command):
    """`nimbus functions | head -1`: a reader that goes away early is no failure. Its read end
    is closed before the command starts, so the first line written meets a broken pipe at once
    (a real `head` races the command and may not)."""
    assert_ok(api.invoke(deployed, {"n": 1}))  # something for `logs` to print
    args = ["functions"] if command == "functions" else [command, deployed]
    env = clean_env(
        NIMBUS_ENDPOINT=server.endpoint,
        NIMBUS_SECRET_ID=server.secret_id,
        NIMBUS_SECRET_KEY=server.secret_key,
    )
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [nimbus_bin(), *args],
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=CLI_TIMEOUT_S,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
