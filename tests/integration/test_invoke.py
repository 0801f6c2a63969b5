"""InvokeFunction against real Python handlers: sync and async runs, results, errors, logs,
limits, the context and environment a handler sees, and warm instance reuse."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import (
    poll,
    ECHO,
    assert_error,
    finished_log,
    assert_ok,
    invoke_data,
    make_zip,
    py_zip,
    toolbox_zip,
    unique_name,
)

INVALID = "InvalidParameter"


def new_toolbox(api, **params):
    name = unique_name("tb")
    assert_ok(api.create(name, toolbox_zip(), **params))
    return name


def err_of(data):
    """The parsed errMsg of a failed invocation."""
    assert data["invokeResult"] != 0, data
    err = json.loads(data["errMsg"])
    assert isinstance(err, dict), data
    return err


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@pytest.fixture(scope="module")
def toolbox(api):
    return new_toolbox(api, memorySize=256, timeout=10)


# --------------------------------------------------------------------------------------------
# Synchronous results
# --------------------------------------------------------------------------------------------


def test_sync_invoke_returns_the_documented_fields(api, toolbox):
    event = {"a": 1, "nested": {"b": [1, 2, 3]}}
    data = invoke_data(api.invoke(toolbox, event, invokeType="RequestResponse"))
    assert json.loads(data["retMsg"]) == event
    assert data["errMsg"] == ""
    assert data["invokeResult"] == 0
    assert isinstance(data["requestId"], str) and data["requestId"]
    assert is_number(data["duration"]) and data["duration"] >= 0
    assert isinstance(data["memUsage"], int) and data["memUsage"] > 0
    assert isinstance(data["billDuration"], int)
    assert data["billDuration"] >= 100
    assert data["billDuration"] % 100 == 0
    assert data["billDuration"] >= data["duration"]
    assert data["billDuration"] - data["duration"] <= 100
    assert data["log"] == "" and data["logMsg"] == ""


def test_each_invocation_gets_its_own_request_id(api, toolbox):
    ids = {invoke_data(api.invoke(toolbox, {}))["requestId"] for _ in range(3)}
    assert len(ids) == 3


def test_string_return_value_is_json_encoded(api, toolbox):
    data = invoke_data(api.invoke(toolbox, {"return": "string", "value": "hi"}))
    assert data["retMsg"] == '"hi"'


def test_default_event_is_an_empty_object(api, toolbox):
    data = invoke_data(api.invoke(toolbox))
    assert json.loads(data["retMsg"]) == {}


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unicode_event_round_trips(server, toolbox, method):
    client = server.legacy(method=method, signature_method="HmacSHA256")
    event = {"msg": "héllo 世界 & a+b=c %20", "emoji": "🙂"}
    data = invoke_data(client.invoke(toolbox, event))
    assert json.loads(data["retMsg"]) == event


def test_invoke_unknown_function(api):
    assert_error(api.invoke(unique_name("missing"), {}), 5000, "ResourceNotFound.Function")


def test_invoke_without_function_name(api):
    assert_error(api.call("InvokeFunction", param="{}"), 4000, "MissingParameter")


@pytest.mark.parametrize(
    "params",
    [
        {"param": "{not json"},
        {"param": "{}", "invokeType": "Sometimes"},
        {"param": "{}", "logType": "Everything"},
    ],
    ids=["param-not-json", "invokeType", "logType"],
)
def test_invalid_invoke_parameters(api, toolbox, params):
    before = assert_ok(api.logs(toolbox, limit=1))["total"]
    assert_error(api.call("InvokeFunction", params, functionName=toolbox), 4000, INVALID)
    assert assert_ok(api.logs(toolbox, limit=1))["total"] == before


def test_payload_over_one_megabyte_is_refused(api, toolbox):
    event = json.dumps({"return": "len", "s": "x" * (1024 * 1024 + 10)})
    assert_error(api.invoke(toolbox, event), 4000, "InvalidParameter.RequestTooLarge")


def test_payload_under_one_megabyte_is_accepted(api, toolbox):
    size = 900 * 1024
    data = invoke_data(api.invoke(toolbox, {"return": "len", "s": "y" * size}))
    assert json.loads(data["retMsg"]) == size


# --------------------------------------------------------------------------------------------
# Logs returned with the result
# --------------------------------------------------------------------------------------------


def test_tail_log_holds_what_the_handler_printed(api, toolbox):
    marker = unique_name("printed")
    data = invoke_data(api.invoke(toolbox, {"print": marker}, logType="Tail"))
    assert marker in data["log"]
    assert data["log"] == data["logMsg"]


def test_no_log_without_tail(api, toolbox):
    marker = unique_name("printed")
    for params in ({}, {"logType": "None"}):
        data = invoke_data(api.invoke(toolbox, {"print": marker}, **params))
        assert data["log"] == "" and data["logMsg"] == ""


def test_tail_log_is_the_last_four_kilobytes(api, toolbox):
    data = invoke_data(api.invoke(toolbox, {"print_lines": 300}, logType="Tail"))
    log = data["log"]
    assert len(log.encode("utf-8")) <= 4096
    assert "line-00299" in log
    assert "line-00000" not in log


def test_log_of_an_invocation_holds_only_its_own_prints(api, toolbox):
    first, second = unique_name("first"), unique_name("second")
    one = invoke_data(api.invoke(toolbox, {"print": first}, logType="Tail"))
    two = invoke_data(api.invoke(toolbox, {"print": second}, logType="Tail"))
    assert first in one["log"] and second not in one["log"]
    assert second in two["log"] and first not in two["log"]


# --------------------------------------------------------------------------------------------
# Function errors
# --------------------------------------------------------------------------------------------


def test_exception_in_handler_is_reported(api, toolbox):
    marker, text = unique_name("before-raise"), unique_name("boom")
    resp = api.invoke(toolbox, {"print": marker, "raise": text}, logType="Tail")
    data = invoke_data(resp)
    err = err_of(data)
    assert err["statusCode"] == 430
    # SCF puts the exception's text in the traceback (errorMessage may be a fixed phrase).
    assert text in err["errorMessage"] + err["stackTrace"]
    assert "errorCode" in err
    assert err["requestId"] == data["requestId"]
    assert marker in data["log"]


def test_missing_handler_function_is_437(api):
    name = unique_name()
    assert_ok(api.create(name, py_zip("def other(event, context):\n    return 1\n")))
    data = invoke_data(api.invoke(name, {}))
    assert err_of(data)["statusCode"] == 437


def test_handler_module_that_fails_to_import_is_an_error(api):
    name = unique_name()
    assert_ok(api.create(name, py_zip("def main_handler(event, context)\n    return 1\n")))
    data = invoke_data(api.invoke(name, {}))
    err = err_of(data)
    assert err["statusCode"] != 200


def test_handler_exceeding_its_timeout_is_stopped(api):
    name = new_toolbox(api, timeout=1)
    data = invoke_data(api.invoke(name, {"sleep": 30}))
    assert err_of(data)["statusCode"] == 433
    assert data["duration"] < 10_000
    # The instance was killed; the next invocation gets a working one.
    again = invoke_data(api.invoke(name, {"x": 1}))
    assert json.loads(again["retMsg"]) == {"x": 1}


def test_function_keeps_working_after_an_error(api):
    name = new_toolbox(api)
    invoke_data(api.invoke(name, {"raise": "once"}))
    data = invoke_data(api.invoke(name, {"ok": True}))
    assert data["invokeResult"] == 0
    assert json.loads(data["retMsg"]) == {"ok": True}


# --------------------------------------------------------------------------------------------
# Context, environment, warm reuse
# --------------------------------------------------------------------------------------------


def test_context_and_environment_seen_by_the_handler(api):
    name = unique_name("ctx")
    env = {"variables": [{"key": "USER_VAR", "value": "v1"}, {"key": "OTHER", "value": "x y"}]}
    assert_ok(api.create(name, toolbox_zip(), memorySize=256, timeout=7, environment=env))
    names = ["SCF_FUNCTIONNAME", "SCF_NAMESPACE", "USER_VAR", "OTHER"]
    data = invoke_data(api.invoke(name, {"return": "context", "env": names}))
    seen = json.loads(data["retMsg"])
    ctx = seen["context"]
    assert ctx["request_id"] == data["requestId"]
    assert ctx["function_name"] == name
    assert ctx["namespace"] == "default"
    assert ctx["memory_limit_in_mb"] == 256
    assert ctx["time_limit_in_ms"] == 7000
    assert ctx["function_version"]
    environment = json.loads(ctx["environment"])
    assert environment["USER_VAR"] == "v1" and environment["OTHER"] == "x y"
    assert "USER_VAR=v1" in ctx["environ"].split(";")
    assert seen["env"] == {
        "SCF_FUNCTIONNAME": name,
        "SCF_NAMESPACE": "default",
        "USER_VAR": "v1",
        "OTHER": "x y",
    }


def test_warm_instance_keeps_module_state(api):
    name = new_toolbox(api)
    counts = [json.loads(invoke_data(api.invoke(name, {"return": "count"}))["retMsg"])["count"]
              for _ in range(3)]
    assert counts == [1, 2, 3]


def test_update_code_retires_warm_instances(api):
    name = new_toolbox(api)
    first = json.loads(invoke_data(api.invoke(name, {"return": "count"}))["retMsg"])
    second = json.loads(invoke_data(api.invoke(name, {"return": "count"}))["retMsg"])
    assert (first, second) == ({"count": 1, "version": 1}, {"count": 2, "version": 1})
    assert_ok(api.update(name, code_zip=toolbox_zip(version=2)))
    after = json.loads(invoke_data(api.invoke(name, {"return": "count"}))["retMsg"])
    assert after == {"count": 1, "version": 2}


def test_update_configuration_is_used_by_the_next_invocation(api):
    name = new_toolbox(api, timeout=3)
    invoke_data(api.invoke(name, {"return": "count"}))
    env = {"variables": [{"key": "USER_VAR", "value": "changed"}]}
    assert_ok(api.update(name, timeout=9, memorySize=512, environment=env))
    data = invoke_data(api.invoke(name, {"return": "context", "env": ["USER_VAR"]}))
    seen = json.loads(data["retMsg"])
    assert seen["context"]["time_limit_in_ms"] == 9000
    assert seen["context"]["memory_limit_in_mb"] == 512
    assert seen["env"] == {"USER_VAR": "changed"}
    count = json.loads(invoke_data(api.invoke(name, {"return": "count"}))["retMsg"])["count"]
    assert count == 2  # a fresh instance served the context call, then this one


def test_concurrent_invocations_keep_results_and_logs_apart(api):
    name = new_toolbox(api, timeout=10)
    markers = [unique_name(f"par{i}") for i in range(4)]

    def run(marker):
        return invoke_data(
            api.invoke(name, {"print": marker, "sleep": 0.5, "m": marker}, logType="Tail")
        )

    with ThreadPoolExecutor(max_workers=len(markers)) as pool:
        results = list(pool.map(run, markers))
    assert len({data["requestId"] for data in results}) == len(markers)
    for marker, data in zip(markers, results):
        assert data["invokeResult"] == 0, data
        assert json.loads(data["retMsg"])["m"] == marker
        assert marker in data["log"]
        assert not [other for other in markers if other != marker and other in data["log"]]


def test_functions_do_not_share_module_state(api):
    one, two = new_toolbox(api), new_toolbox(api)
    for name in (one, two, one):
        invoke_data(api.invoke(name, {"return": "count"}))
    counts = [
        json.loads(invoke_data(api.invoke(n, {"return": "count"}))["retMsg"])["count"]
        for n in (one, two)
    ]
    assert counts == [3, 2]


def test_handler_can_import_sibling_modules(api):
    name = unique_name()
    source = "import helper\n\ndef main_handler(event, context):\n    return helper.VALUE\n"
    code = py_zip(source, extra={"helper.py": "VALUE = 'from-helper'\n"})
    assert_ok(api.create(name, code))
    data = invoke_data(api.invoke(name, {}))
    assert json.loads(data["retMsg"]) == "from-helper"


def test_python_packages_are_compiled_when_stored(api):
    """Instances see their code read-only and cannot write __pycache__: the server compiles
    the package when it is stored, and instances import that bytecode. A module that does not
    compile is left out, and the function is created all the same."""
    name = unique_name()
    source = (
        "import marshal, os, helper\n\n"
        "def main_handler(event, context):\n"
        "    with open(helper.__cached__, 'rb') as pyc:\n"
        "        source = marshal.loads(pyc.read()[16:]).co_filename\n"
        "    return {'cached': helper.__cached__, 'source': source}\n"
    )
    code = py_zip(source, extra={"helper.py": "VALUE = 1\n", "broken.py": "def f(:\n"})
    assert_ok(api.create(name, code))
    result = json.loads(invoke_data(api.invoke(name, {}))["retMsg"])
    assert result["cached"].startswith("/var/user/__pycache__/helper."), result
    # The bytecode names its source where the instance sees it, not in the data directory.
    assert result["source"] == "/var/user/helper.py", result


def test_a_package_first_stored_by_a_nodejs_function_is_compiled_for_python(api):
    """Functions share a package when its bytes are the same. Its Python sources are compiled
    when it is first stored, even by a Node.js function, so a Python function that uses it
    later finds the bytecode."""
    source = (
        "import os, helper\n\n"
        "def main_handler(event, context):\n"
        "    return {'cached': helper.__cached__, 'exists': os.path.exists(helper.__cached__)}\n"
    )
    code = make_zip(
        {
            "index.js": "exports.main_handler = async () => ({ok: 1});\n",
            "index.py": source,
            "helper.py": "VALUE = 1\n",
        }
    )
    node = unique_name("node")
    assert_ok(api.create(node, code, runtime="Nodejs18.15"))
    python = unique_name("py")
    assert_ok(api.create(python, code))
    result = json.loads(invoke_data(api.invoke(python, {}))["retMsg"])
    assert result["cached"].startswith("/var/user/__pycache__/helper."), result
    assert result["exists"], result


# --------------------------------------------------------------------------------------------
# Asynchronous invocation
# --------------------------------------------------------------------------------------------


def test_event_invocation_answers_at_once_and_runs_in_background(api):
    name = new_toolbox(api, timeout=10)
    marker = unique_name("async")
    started = time.monotonic()
    resp = assert_ok(
        api.invoke(name, {"sleep": 3, "print": marker, "k": "v"}, invokeType="Event")
    )
    elapsed = time.monotonic() - started
    request_id = resp["data"]["requestId"]
    assert isinstance(request_id, str) and request_id
    assert elapsed < 2.5, "an Event invocation must not wait for the function"

    entry = finished_log(api, name, request_id)
    assert entry["requestId"] == request_id
    assert entry["functionName"] == name
    assert entry["retCode"] == 0
    assert json.loads(entry["retMsg"]) == {"sleep": 3, "print": marker, "k": "v"}
    assert marker in entry["log"]
    assert entry["duration"] >= 3000
    assert entry["invokeType"] == "Event"


def test_failing_event_invocation_is_recorded_and_retried(api):
    name = new_toolbox(api)
    resp = assert_ok(api.invoke(name, {"raise": "async-boom"}, invokeType="Event"))
    request_id = resp["data"]["requestId"]

    # SCF retries a function error twice (1 and 2 minutes later): after the first attempt the
    # record carries its error and the event is still running.
    def failed_once(logs):
        return logs["total"] == 1 and logs["data"][0]["retCode"] != 0

    logs = poll(lambda: assert_ok(api.logs(name, requestId=request_id)), failed_once, timeout=15)
    entry = logs["data"][0]
    assert entry["retCode"] == 430, entry
    assert entry["status"] == "RUNNING", entry
    assert json.loads(entry["errMsg"])["statusCode"] == 430


def test_event_invocation_of_unknown_function(api):
    assert_error(
        api.invoke(unique_name("missing"), {}, invokeType="Event"),
        5000,
        "ResourceNotFound.Function",
    )


def test_echo_handler_via_get_and_sha1(api_get):
    name = unique_name()
    assert_ok(api_get.create(name, py_zip(ECHO)))
    data = invoke_data(api_get.invoke(name, {"via": "GET"}, logType="Tail"))
    assert json.loads(data["retMsg"]) == {"via": "GET"}
