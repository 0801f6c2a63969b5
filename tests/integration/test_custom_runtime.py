"""SCF's custom runtime (SCF-API.md §4) through the real server and tencentcloud-sdk-python:
the repository's examples (examples/custom-shell, a bash bootstrap over /dev/tcp, and
examples/custom-rust, built here with cargo) and deliberately broken bootstraps (exits at once,
never ready, answers twice, never answers), checked through results, logs and status codes."""

import io
import json
import os
import re
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from api3_helpers import Api3, sdk_code
from helpers import b64, unique_name

REPO_ROOT = Path(__file__).resolve().parents[2]
SHELL_EXAMPLE = REPO_ROOT / "examples" / "custom-shell"
RUNTIME = "CustomRuntime"
# A runtime that never says ready fails after the function's InitTimeout.
INIT_TIMEOUT_S = 5

# Shared by the broken bootstraps: `http METHOD PATH [BODY]` sets status, request_id and body.
PRELUDE = r"""#!/bin/bash
set -u
export LC_ALL=C
http() {
  local method="$1" path="$2" data="${3-}" line length=0
  exec 3<>"/dev/tcp/${SCF_RUNTIME_API}/${SCF_RUNTIME_API_PORT}" || exit 1
  printf '%s %s HTTP/1.1\r\nHost: api\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "$method" "$path" "${#data}" "$data" >&3
  IFS=' ' read -r _ status _ <&3
  request_id=''
  while IFS= read -r line <&3; do
    line="${line%$'\r'}"
    [ -z "$line" ] && break
    case "${line,,}" in
      content-length:*) length="${line#*:}"; length="${length//[^0-9]/}" ;;
      request_id:*) request_id="${line#*:}"; request_id="${request_id# }" ;;
    esac
  done
  body=''
  if [ "${length:-0}" -gt 0 ]; then IFS= read -r -N "$length" body <&3; fi
  exec 3<&-
}
"""


def package(files):
    """A zip of {name: (bytes or str, unix mode)}, modes kept as a Unix zip tool keeps them."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, (content, mode) in files.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.create_system = 3
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, content.encode("utf-8") if isinstance(content, str) else content)
    return buf.getvalue()


def bootstrap_zip(script):
    return package({"bootstrap": (PRELUDE + script, 0o755)})


def ret(result):
    assert result["InvokeResult"] == 0, result
    assert result["ErrMsg"] in ("", None), result
    return json.loads(result["RetMsg"])


def err_of(result):
    assert result["InvokeResult"] != 0, result
    err = json.loads(result["ErrMsg"])
    assert isinstance(err, dict), result
    return err


@pytest.fixture(scope="module")
def sdk(server):
    return Api3.for_server(server, "tc3-post")


@pytest.fixture(scope="module")
def rust_bootstrap():
    """The Rust example's binary, built as a user would build it."""
    proc = subprocess.run(
        ["cargo", "build", "--release", "-p", "nimbus-example-custom-rust",
         "--message-format=json-render-diagnostics"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        pytest.fail(f"cargo build of examples/custom-rust failed:\n{proc.stderr[-4000:]}")
    for line in proc.stdout.splitlines():
        message = json.loads(line)
        if (message.get("reason") == "compiler-artifact" and message.get("executable")
                and message["target"]["name"] == "bootstrap"):
            return Path(message["executable"]).read_bytes()
    pytest.fail("cargo built no bootstrap executable")


# --------------------------------------------------------------------------------------------
# The examples
# --------------------------------------------------------------------------------------------


def test_shell_example(sdk):
    name = unique_name("custom-sh")
    code = package({
        "bootstrap": ((SHELL_EXAMPLE / "bootstrap").read_text(), 0o755),
        "index.sh": ((SHELL_EXAMPLE / "index.sh").read_text(), 0o644),
    })
    sdk.create(name, code, handler="index.main_handler", runtime=RUNTIME, Timeout=5)
    assert sdk.get(name)["Runtime"] == RUNTIME

    first = sdk.invoke(name, {"name": "nimbus"}, LogType="Tail")
    request_id = first["FunctionRequestId"]
    assert ret(first) == {"runtime": "custom-shell", "request_id": request_id,
                          "event": {"name": "nimbus"}}
    # What the bootstrap printed while starting is part of the first invocation's log.
    assert "custom-shell: loading main_handler from index.sh" in first["Log"], first["Log"]
    assert f"custom-shell: handling {request_id}" in first["Log"], first["Log"]
    entry = sdk.finished_log(name, request_id)
    assert f"custom-shell: handling {request_id}" in entry["Log"], entry

    second = sdk.invoke(name, {"n": 2}, LogType="Tail")
    assert ret(second)["event"] == {"n": 2}
    assert "loading main_handler" not in second["Log"], second["Log"]
    assert request_id not in second["Log"], second["Log"]

    failed = sdk.invoke(name, {"fail": True}, LogType="Tail")
    err = err_of(failed)
    assert err["statusCode"] == 430
    assert err["errorMessage"] == "the event asked to fail"


def test_rust_example(sdk, rust_bootstrap):
    name = unique_name("custom-rs")
    sdk.create(name, package({"bootstrap": (rust_bootstrap, 0o755)}), handler="anything",
               runtime=RUNTIME, Timeout=5, MemorySize=256)

    result = sdk.invoke(name, {"name": "nimbus"}, LogType="Tail")
    value = ret(result)
    assert value["greeting"] == "hello nimbus"
    assert value["request_id"] == result["FunctionRequestId"]
    assert value["handler"] == "anything"
    assert (value["memory_limit_in_mb"], value["time_limit_in_ms"]) == ("256", "5000")
    assert "custom-rust: starting" in result["Log"], result["Log"]
    assert f"custom-rust: handling {result['FunctionRequestId']}" in result["Log"]

    failed = sdk.invoke(name, {"fail": "not today"})
    err = err_of(failed)
    assert (err["statusCode"], err["errorMessage"]) == (430, "not today")


# --------------------------------------------------------------------------------------------
# Packages refused at create time
# --------------------------------------------------------------------------------------------


def test_package_without_bootstrap_is_refused(sdk):
    exc = sdk.error("CreateFunction", FunctionName=unique_name("no-bs"), Runtime=RUNTIME,
                    Handler="index.main_handler",
                    Code={"ZipFile": b64(package({"index.sh": ("echo hi", 0o755)}))})
    assert sdk_code(exc) == "InvalidParameterValue.Handler"
    assert "bootstrap" in exc.get_message()


def test_bootstrap_that_is_not_executable_is_refused(sdk):
    exc = sdk.error("CreateFunction", FunctionName=unique_name("no-x"), Runtime=RUNTIME,
                    Handler="index.main_handler",
                    Code={"ZipFile": b64(package({"bootstrap": ("#!/bin/sh\n", 0o644)}))})
    assert sdk_code(exc) == "InvalidParameterValue.Code"
    assert "executable" in exc.get_message()


# --------------------------------------------------------------------------------------------
# Broken bootstraps
# --------------------------------------------------------------------------------------------


def test_bootstrap_exiting_at_once_is_445(sdk):
    name = unique_name("custom-exit")
    sdk.create(name, bootstrap_zip('echo "giving up at once"\nexit 3\n'), handler="x",
               runtime=RUNTIME)
    result = sdk.invoke(name, {}, LogType="Tail")
    assert err_of(result)["statusCode"] == 445
    assert "giving up at once" in result["Log"], result["Log"]


def test_init_error_is_445_with_its_message(sdk):
    name = unique_name("custom-initerr")
    sdk.create(name, bootstrap_zip("http POST /runtime/init/error 'no database'\nsleep 60\n"),
               handler="x", runtime=RUNTIME)
    err = err_of(sdk.invoke(name, {}))
    assert err["statusCode"] == 445
    assert "no database" in err["errorMessage"], err


def test_answering_twice_keeps_the_first_answer(sdk):
    name = unique_name("custom-twice")
    script = r"""
http POST /runtime/init/ready ' '
while true; do
  http GET /runtime/invocation/next
  http POST /runtime/invocation/response '{"answer":"first"}'
  http POST /runtime/invocation/response '{"answer":"second"}'
  echo "second answer got $status"
done
"""
    sdk.create(name, bootstrap_zip(script), handler="x", runtime=RUNTIME)
    assert ret(sdk.invoke(name, {})) == {"answer": "first"}
    again = sdk.invoke(name, {}, LogType="Tail")
    assert ret(again) == {"answer": "first"}
    # Printed after the first invocation was answered: part of the next one's log.
    assert "second answer got 403" in again["Log"], again["Log"]


def test_never_answering_is_433_and_the_instance_is_replaced(sdk):
    name = unique_name("custom-hang")
    script = r"""
echo "instance $RANDOM$RANDOM"
http POST /runtime/init/ready ' '
while true; do
  http GET /runtime/invocation/next
  case "$body" in
    *hang*) echo "hanging on $request_id"; exec sleep 600 ;;
  esac
  http POST /runtime/invocation/response '"answered"'
done
"""
    sdk.create(name, bootstrap_zip(script), handler="x", runtime=RUNTIME, Timeout=1)
    started = time.monotonic()
    hung = sdk.invoke(name, {"hang": True}, LogType="Tail")
    assert time.monotonic() - started < 15
    assert err_of(hung)["statusCode"] == 433
    assert f"hanging on {hung['FunctionRequestId']}" in hung["Log"], hung["Log"]
    # The killed instance is gone: the next call starts a new one, which prints its line.
    after = sdk.invoke(name, {}, LogType="Tail")
    assert ret(after) == "answered"
    assert "instance " in after["Log"], after["Log"]


def test_never_ready_is_450(sdk):
    name = unique_name("custom-noready")
    sdk.create(name, bootstrap_zip('echo "never ready"\nexec sleep 600\n'), handler="x",
               runtime=RUNTIME, InitTimeout=INIT_TIMEOUT_S)
    assert sdk.get(name)["InitTimeout"] == INIT_TIMEOUT_S
    started = time.monotonic()
    result = sdk.invoke(name, {}, LogType="Tail")
    elapsed = time.monotonic() - started
    assert err_of(result)["statusCode"] == 450
    assert "never ready" in result["Log"], result["Log"]
    assert INIT_TIMEOUT_S - 1 <= elapsed < INIT_TIMEOUT_S + 20, elapsed


def test_custom_runtime_environment(sdk):
    name = unique_name("custom-env")
    script = r"""
http POST /runtime/init/ready ' '
while true; do
  http GET /runtime/invocation/next
  printf -v result '{"handler":"%s","runtime":"%s","name":"%s","api":"%s","user":"%s"}' \
    "$_HANDLER" "$SCF_RUNTIME" "$SCF_FUNCTIONNAME" "$SCF_RUNTIME_API" "${GREETING:-}"
  http POST /runtime/invocation/response "$result"
done
"""
    sdk.create(name, bootstrap_zip(script), handler="free form handler", runtime=RUNTIME,
               Environment={"Variables": [{"Key": "GREETING", "Value": "hi"}]})
    assert ret(sdk.invoke(name, {})) == {
        "handler": "free form handler", "runtime": RUNTIME, "name": name,
        "api": "127.0.0.1", "user": "hi",
    }


def test_network_is_off_unless_asked_yet_the_runtime_api_answers(sdk, server):
    """Without public network the bootstrap reaches its runtime API, on SCF's port 9001 in a
    network namespace of its own, and nothing on the host; with it, host loopback too."""
    name = unique_name("custom-net")
    script = r"""
http POST /runtime/init/ready ' '
while true; do
  http GET /runtime/invocation/next
  port="${body//[^0-9]/}"
  if (exec 4<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then reach=connected; else reach=refused; fi
  http POST /runtime/invocation/response "{\"api_port\":\"$SCF_RUNTIME_API_PORT\",\"host\":\"$reach\"}"
done
"""
    sdk.create(name, bootstrap_zip(script), handler="index.main", runtime=RUNTIME)
    event = {"port": server.port}
    assert ret(sdk.invoke(name, event)) == {"api_port": "9001", "host": "refused"}

    sdk.call("UpdateFunctionConfiguration", FunctionName=name,
             PublicNetConfig={"PublicNetStatus": "ENABLE"})
    got = ret(sdk.invoke(name, event))
    assert got["host"] == "connected", got
    assert got["api_port"] != "9001", got


def test_shell_example_needs_no_curl():
    """The shell example's HTTP is bash's own (/dev/tcp): it runs where curl is missing."""
    text = (SHELL_EXAMPLE / "bootstrap").read_text()
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert any("/dev/tcp/" in line for line in code)
    assert not any(re.search(r"\b(curl|wget|nc)\b", line) for line in code)
    assert os.access(SHELL_EXAMPLE / "bootstrap", os.X_OK)
