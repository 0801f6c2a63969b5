"""API 3.0 through tencentcloud-sdk-python (SCF-API.md §2, §5.3): every action of issue 6, with
TC3-HMAC-SHA256 over POST (the SDK's default) and GET, and with signature v1 (HmacSHA256 over
POST, HmacSHA1 over GET). Python handlers, plus one Node.js handler."""

import json
import math
import time
from datetime import datetime, timedelta

import pytest

from api3_helpers import (
    DATETIME_RE,
    EVENT_TIME_RE,
    SDK_VARIANTS,
    Api3,
    assert_request_id,
    node_zip,
    poll_until,
    sdk_code,
)
from helpers import ECHO, b64, poll, py_zip, toolbox_zip, unique_name

TIME_FMT = "%Y-%m-%d %H:%M:%S"

ECHO_V2 = """
def handler(event, context):
    return {"v2": event}
"""


def env(**variables):
    return {"Variables": [{"Key": k, "Value": v} for k, v in variables.items()]}


def env_dict(environment):
    assert environment is not None, "Environment missing"
    return {pair["Key"]: pair["Value"] for pair in environment.get("Variables") or []}


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def ret(result):
    """The parsed RetMsg of a successful invocation."""
    assert result["InvokeResult"] == 0, result
    assert result["ErrMsg"] in ("", None), result
    return json.loads(result["RetMsg"])


def err_of(result):
    """The parsed ErrMsg of a failed invocation (SCF reports it as a JSON object)."""
    assert result["InvokeResult"] != 0, result
    err = json.loads(result["ErrMsg"])
    assert isinstance(err, dict), result
    return err


@pytest.fixture(scope="module")
def sdk(server):
    return Api3.for_server(server, "tc3-post")


@pytest.fixture(scope="module")
def toolbox(sdk):
    name = unique_name("tb3")
    sdk.create(name, toolbox_zip(), MemorySize=256, Timeout=10)
    return name


# --------------------------------------------------------------------------------------------
# The whole life of a function, with each SDK configuration
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(SDK_VARIANTS))
def test_function_lifecycle(server, variant):
    sdk = Api3.for_server(server, variant)
    name = unique_name("life")

    created = sdk.create(
        name, toolbox_zip(), wait=False, MemorySize=256, Timeout=10,
        Description="first version", Environment=env(GREETING="hello", COLOUR="blue"),
    )
    assert_request_id(created["RequestId"])
    assert sdk.get(name)["Status"] in ("Creating", "Active")
    got = sdk.wait_active(name)
    assert got["FunctionName"] == name
    assert got["Handler"] == "index.main_handler"
    assert got["Runtime"] == "Python3.9"
    assert got["MemorySize"] == 256
    assert got["Timeout"] == 10
    assert got["Description"] == "first version"
    assert got["Namespace"] == "default"
    assert env_dict(got["Environment"]) == {"GREETING": "hello", "COLOUR": "blue"}
    assert isinstance(got["CodeSize"], int) and got["CodeSize"] > 0
    assert DATETIME_RE.match(got["AddTime"]) and DATETIME_RE.match(got["ModTime"]), got
    assert got["ModTime"] >= got["AddTime"]
    assert_request_id(got["RequestId"])

    listed = sdk.list(SearchKey=name)
    assert [f["FunctionName"] for f in listed["Functions"]] == [name]
    assert listed["TotalCount"] == 1

    seen = ret(sdk.invoke(name, {"return": "context", "env": ["GREETING", "COLOUR"]}))
    assert seen["context"]["function_name"] == name
    assert seen["context"]["memory_limit_in_mb"] == 256
    assert seen["context"]["time_limit_in_ms"] == 10000
    assert seen["env"] == {"GREETING": "hello", "COLOUR": "blue"}

    time.sleep(1.1)  # ModTime has one-second granularity
    sdk.update_config(name, MemorySize=512, Timeout=20, Description="second version",
                      Environment=env(GREETING="bonjour"))
    got2 = sdk.get(name)
    assert (got2["MemorySize"], got2["Timeout"]) == (512, 20)
    assert got2["Description"] == "second version"
    assert env_dict(got2["Environment"]) == {"GREETING": "bonjour"}
    assert got2["Handler"] == "index.main_handler"
    assert got2["AddTime"] == got["AddTime"]
    assert got2["ModTime"] > got["ModTime"]
    seen = ret(sdk.invoke(name, {"return": "context", "env": ["GREETING", "COLOUR"]}))
    assert seen["context"]["memory_limit_in_mb"] == 512
    assert seen["context"]["time_limit_in_ms"] == 20000
    assert seen["env"] == {"GREETING": "bonjour", "COLOUR": None}

    sdk.update_code(name, py_zip(ECHO_V2, filename="main.py"), Handler="main.handler")
    got3 = sdk.get(name)
    assert got3["Handler"] == "main.handler"
    assert got3["MemorySize"] == 512  # configuration kept
    assert ret(sdk.invoke(name, {"k": variant})) == {"v2": {"k": variant}}

    assert_request_id(sdk.delete(name)["RequestId"])
    assert sdk_code(sdk.error("GetFunction", FunctionName=name)) == "ResourceNotFound.Function"
    assert sdk.list(SearchKey=name)["TotalCount"] == 0


@pytest.mark.parametrize("variant", list(SDK_VARIANTS))
def test_invoke_and_logs_with_each_configuration(server, toolbox, variant):
    sdk = Api3.for_server(server, variant)
    marker = unique_name("mark")
    event = {"print": marker, "text": "héllo 世界 & a+b=c %20"}
    result = sdk.invoke(toolbox, event, LogType="Tail")
    assert ret(result) == event
    assert marker in result["Log"]
    entry = sdk.finished_log(toolbox, result["FunctionRequestId"])
    assert marker in entry["Log"]
    assert json.loads(entry["RetMsg"]) == event
    assert ret(sdk.invoke_function(toolbox, {"via": variant})) == {"via": variant}


@pytest.mark.parametrize("variant", list(SDK_VARIANTS))
def test_errors_reach_each_configuration(server, variant):
    sdk = Api3.for_server(server, variant)
    exc = sdk.error("GetFunction", FunctionName=unique_name("missing"))
    assert sdk_code(exc) == "ResourceNotFound.Function"
    assert exc.get_message()
    assert_request_id(exc.get_request_id())


# --------------------------------------------------------------------------------------------
# GetFunction details
# --------------------------------------------------------------------------------------------


def test_get_function_show_code(sdk):
    name = unique_name("code")
    marker = unique_name("src")
    source = ECHO + f"\n# {marker}\n"
    sdk.create(name, py_zip(source))
    shown = sdk.get(name, ShowCode="TRUE")
    assert marker in (shown["CodeInfo"] or ""), shown["CodeInfo"]
    assert "def main_handler" in shown["CodeInfo"]
    hidden = sdk.get(name, ShowCode="FALSE")
    assert marker not in (hidden["CodeInfo"] or "")
    assert marker not in (sdk.get(name)["CodeInfo"] or "")


def test_create_applies_defaults(sdk):
    name = unique_name("dflt")
    sdk.call("CreateFunction", FunctionName=name, Code={"ZipFile": b64(py_zip(ECHO))},
             Handler="index.main_handler", Runtime="Python3.9")
    got = sdk.wait_active(name)
    assert got["MemorySize"] == 128
    assert got["Timeout"] == 3
    assert got["Namespace"] == "default"
    assert ret(sdk.invoke(name, {"x": 1}, Qualifier="$LATEST")) == {"x": 1}


# --------------------------------------------------------------------------------------------
# Invoke and InvokeFunction results
# --------------------------------------------------------------------------------------------


def test_sync_result_fields(sdk, toolbox):
    event = {"a": 1, "nested": {"b": [1, 2, 3]}, "sleep": 0.3}
    result = sdk.invoke(toolbox, event, InvocationType="RequestResponse", LogType="None")
    assert ret(result) == event
    assert result["InvokeResult"] == 0
    assert isinstance(result["FunctionRequestId"], str) and result["FunctionRequestId"]
    assert is_number(result["Duration"]) and result["Duration"] >= 300
    assert isinstance(result["BillDuration"], int) and result["BillDuration"] >= 1
    # 1 ms granularity in API 3.0: BillDuration is Duration rounded up, not to 100 ms.
    assert math.ceil(result["Duration"]) <= result["BillDuration"] <= math.ceil(result["Duration"]) + 1
    assert isinstance(result["MemUsage"], int) and result["MemUsage"] > 0
    assert result["Log"] in ("", None)


def test_bill_duration_of_a_quick_invocation_is_at_least_one_ms(sdk, toolbox):
    result = sdk.invoke(toolbox, {})
    assert ret(result) == {}
    assert 1 <= result["BillDuration"] <= max(1, math.ceil(result["Duration"]) + 1)


def test_each_invocation_has_its_own_request_id(sdk, toolbox):
    ids = {sdk.invoke(toolbox, {})["FunctionRequestId"] for _ in range(3)}
    assert len(ids) == 3


def test_log_type_tail_returns_the_log_and_none_does_not(sdk, toolbox):
    marker = unique_name("tail")
    assert marker in sdk.invoke(toolbox, {"print": marker}, LogType="Tail")["Log"]
    other = unique_name("none")
    assert other not in (sdk.invoke(toolbox, {"print": other})["Log"] or "")


def test_string_and_unicode_return_values(sdk, toolbox):
    result = sdk.invoke(toolbox, {"return": "string", "value": "héllo 世界"})
    assert ret(result) == "héllo 世界"
    assert sdk.invoke(toolbox, {"return": "string", "value": "hi"})["RetMsg"] == '"hi"'


def test_default_event_is_an_empty_object(sdk, toolbox):
    assert ret(sdk.invoke(toolbox)) == {}


def test_handler_exception_is_an_api_success_with_err_msg(sdk, toolbox):
    marker, text = unique_name("before"), unique_name("boom")
    result = sdk.invoke(toolbox, {"print": marker, "raise": text}, LogType="Tail")
    err = err_of(result)
    assert err["statusCode"] == 430
    assert text in err.get("errorMessage", "") + err.get("stackTrace", "")
    assert marker in result["Log"]


def test_timeout_is_reported_as_433(sdk):
    name = unique_name("slow")
    sdk.create(name, toolbox_zip(), Timeout=1)
    started = time.monotonic()
    result = sdk.invoke(name, {"sleep": 30})
    assert time.monotonic() - started < 10
    assert err_of(result)["statusCode"] == 433
    assert ret(sdk.invoke(name, {"after": "timeout"})) == {"after": "timeout"}


def test_invoke_function_action(sdk, toolbox):
    marker = unique_name("if")
    result = sdk.invoke_function(toolbox, {"print": marker, "x": 2}, LogType="Tail")
    assert ret(result) == {"print": marker, "x": 2}
    assert marker in result["Log"]
    assert isinstance(result["FunctionRequestId"], str) and result["FunctionRequestId"]
    assert isinstance(result["BillDuration"], int) and result["BillDuration"] >= 1


def test_large_sync_client_context_is_accepted(sdk, toolbox):
    """Sync events may be up to 6 MB in API 3.0 (the legacy API stopped at 1 MB)."""
    size = 4 * 1024 * 1024
    result = sdk.invoke(toolbox, {"return": "len", "s": "x" * size})
    assert ret(result) == size


# --------------------------------------------------------------------------------------------
# Asynchronous invocations
# --------------------------------------------------------------------------------------------


def test_async_invoke_answers_at_once_and_finishes(sdk, toolbox):
    marker = unique_name("async")
    event = {"sleep": 2, "print": marker}
    started = time.monotonic()
    result = sdk.invoke(toolbox, event, InvocationType="Event")
    assert time.monotonic() - started < 1.5, "an Event invocation must not wait for the function"
    request_id = result["FunctionRequestId"]
    assert isinstance(request_id, str) and request_id
    assert result["RetMsg"] in ("", None)

    running = sdk.async_status(request_id)
    assert running["Status"] == "RUNNING", running
    assert running["InvokeRequestId"] == request_id

    done = sdk.wait_async(request_id)
    assert done["Status"] == "FINISHED", done
    assert done["StatusCode"] == 200
    assert done["InvokeRequestId"] == request_id

    entry = sdk.finished_log(toolbox, request_id)
    assert entry["RetCode"] == 0
    assert json.loads(entry["RetMsg"]) == event
    assert marker in entry["Log"]
    assert entry["Duration"] >= 2000


def test_failed_async_event_is_failed(sdk, toolbox):
    # Without retries the first function error is final (the default retries twice, minutes
    # apart: see test_async_queue.py).
    sdk.call("UpdateFunctionEventInvokeConfig", FunctionName=toolbox,
             AsyncTriggerConfig={"RetryConfig": [{"RetryNum": 0}], "MsgTTL": 3600})
    request_id = sdk.invoke_async(toolbox, {"raise": "async-boom"})
    status = sdk.wait_async(request_id)
    assert status["Status"] == "FAILED", status
    assert status["StatusCode"] != 200
    assert sdk.finished_log(toolbox, request_id)["RetCode"] != 0


def test_list_async_events(sdk):
    name = unique_name("events")
    sdk.create(name, toolbox_zip(), Timeout=10)
    first = sdk.invoke_async(name, {"n": 1})
    second = sdk.invoke_async(name, {"n": 2})
    for request_id in (first, second):
        assert sdk.wait_async(request_id)["Status"] == "FINISHED"

    listed = sdk.call("ListAsyncEvents", FunctionName=name)
    assert listed["TotalCount"] == 2
    events = {e["InvokeRequestId"]: e for e in listed["EventList"]}
    assert set(events) == {first, second}
    for event in events.values():
        assert event["Status"] == "FINISHED"
        assert event["Qualifier"] == "$LATEST"
        assert isinstance(event["InvokeType"], str) and event["InvokeType"]
        assert EVENT_TIME_RE.match(event["StartTime"]), event
        assert EVENT_TIME_RE.match(event["EndTime"]), event
        assert event["EndTime"] >= event["StartTime"]

    one = sdk.call("ListAsyncEvents", FunctionName=name, InvokeRequestId=second)
    assert [e["InvokeRequestId"] for e in one["EventList"]] == [second]
    assert one["TotalCount"] == 1
    finished = sdk.call("ListAsyncEvents", FunctionName=name, Status=["FINISHED"])
    assert finished["TotalCount"] == 2
    running = sdk.call("ListAsyncEvents", FunctionName=name, Status=["RUNNING"])
    assert running["TotalCount"] == 0 and not running["EventList"]
    paged = sdk.call("ListAsyncEvents", FunctionName=name, Limit=1)
    assert len(paged["EventList"]) == 1 and paged["TotalCount"] == 2


def test_sync_invocations_are_not_async_events(sdk):
    name = unique_name("noevents")
    sdk.create(name, toolbox_zip())
    ret(sdk.invoke(name, {}))
    assert sdk.call("ListAsyncEvents", FunctionName=name)["TotalCount"] == 0


def test_terminate_async_event(sdk):
    name = unique_name("term")
    sdk.create(name, toolbox_zip(), Timeout=60)
    started = time.monotonic()
    request_id = sdk.invoke_async(name, {"sleep": 40, "print": "never-finished"})
    assert sdk.async_status(request_id)["Status"] == "RUNNING"
    time.sleep(0.5)
    assert_request_id(sdk.call("TerminateAsyncEvent", FunctionName=name,
                               InvokeRequestId=request_id)["RequestId"])
    status = sdk.wait_async(request_id, timeout=15)
    assert status["Status"] == "ABORTED", status
    assert time.monotonic() - started < 30
    listed = sdk.call("ListAsyncEvents", FunctionName=name, InvokeRequestId=request_id)
    assert [e["Status"] for e in listed["EventList"]] == ["ABORTED"]
    aborted = sdk.call("ListAsyncEvents", FunctionName=name, Status=["ABORTED"])
    assert [e["InvokeRequestId"] for e in aborted["EventList"]] == [request_id]
    entry = sdk.finished_log(name, request_id)
    assert entry["RetCode"] != 0
    # The function keeps working after one of its runs was stopped.
    assert ret(sdk.invoke(name, {"after": "terminate"})) == {"after": "terminate"}


GRACEFUL = """
import signal, sys, time

def on_term(signum, frame):
    print("cleaning up after SIGTERM")
    sys.exit(0)

def main_handler(event, context):
    signal.signal(signal.SIGTERM, on_term)
    print("started")
    time.sleep(30)
    return "never"
"""


def test_graceful_termination_lets_the_function_clean_up(sdk):
    """GraceShutdown=true sends the function SIGTERM and lets it end of its own accord: what
    it logged until then is the aborted event's log."""
    name = unique_name("graceful")
    sdk.create(name, py_zip(GRACEFUL), Timeout=60)
    request_id = sdk.invoke_async(name, {})
    time.sleep(1.5)  # the attempt starts and installs its handler
    started = time.monotonic()
    assert_request_id(sdk.call("TerminateAsyncEvent", FunctionName=name,
                               InvokeRequestId=request_id, GraceShutdown=True)["RequestId"])
    assert sdk.wait_async(request_id, timeout=15)["Status"] == "ABORTED"
    entry = poll(lambda: sdk.finished_log(name, request_id),
                 lambda entry: "cleaning up after SIGTERM" in entry["Log"], timeout=10)
    assert "started" in entry["Log"] and "cleaning up after SIGTERM" in entry["Log"], entry
    assert time.monotonic() - started < 10, "it ended of its own accord, not at its timeout"
    assert entry["RetCode"] != 0


# --------------------------------------------------------------------------------------------
# GetFunctionLogs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logged(sdk):
    """A function with three successful runs, one exception and one timeout."""
    name = unique_name("logs3")
    sdk.create(name, toolbox_zip(), Timeout=2)
    runs = {}
    for sleep in (0.0, 0.4, 0.2):
        marker = unique_name("ok")
        result = sdk.invoke(name, {"print": marker, "sleep": sleep})
        assert result["InvokeResult"] == 0, result
        runs[result["FunctionRequestId"]] = {"marker": marker, "kind": "ok", "sleep": sleep}
    marker = unique_name("raise")
    result = sdk.invoke(name, {"print": marker, "raise": "logged"})
    assert result["InvokeResult"] != 0
    runs[result["FunctionRequestId"]] = {"marker": marker, "kind": "raise", "sleep": 0}
    marker = unique_name("late")
    result = sdk.invoke(name, {"print": marker, "sleep": 6})
    assert result["InvokeResult"] != 0
    runs[result["FunctionRequestId"]] = {"marker": marker, "kind": "timeout", "sleep": 0}
    resp = poll_until(lambda: sdk.logs(name, Limit=100), lambda r: r["TotalCount"] >= len(runs))
    assert resp["TotalCount"] == len(runs), resp
    return name, runs


def logs_total(sdk, name, expected, **params):
    """GetFunctionLogs' TotalCount once it reaches `expected` (bounded wait)."""
    resp = poll_until(lambda: sdk.logs(name, Limit=100, **params),
                      lambda r: r["TotalCount"] >= expected)
    return resp["TotalCount"]


def ids_of(resp):
    return [entry["RequestId"] for entry in resp["Data"]]


def test_logs_fields(sdk, logged):
    name, runs = logged
    resp = sdk.logs(name, Limit=100)
    assert_request_id(resp["RequestId"])
    assert resp["TotalCount"] == len(runs)
    assert set(ids_of(resp)) == set(runs)
    for entry in resp["Data"]:
        run = runs[entry["RequestId"]]
        assert entry["FunctionName"] == name
        assert DATETIME_RE.match(entry["StartTime"]), entry
        assert is_number(entry["Duration"]) and entry["Duration"] >= run["sleep"] * 1000
        assert isinstance(entry["BillDuration"], int) and entry["BillDuration"] >= 1
        assert entry["BillDuration"] >= math.floor(entry["Duration"])
        assert entry["BillDuration"] <= math.ceil(entry["Duration"]) + 1
        assert isinstance(entry["MemUsage"], int) and entry["MemUsage"] > 0
        assert run["marker"] in entry["Log"]
        assert entry["InvokeFinished"] == 1
        assert isinstance(entry["RetMsg"], str)
        if run["kind"] == "ok":
            assert entry["RetCode"] == 0
            assert json.loads(entry["RetMsg"]) == {"print": run["marker"], "sleep": run["sleep"]}
        else:
            assert entry["RetCode"] != 0


def test_logs_by_request_id(sdk, logged):
    name, runs = logged
    for request_id in runs:
        resp = sdk.logs(name, FunctionRequestId=request_id)
        assert resp["TotalCount"] == 1
        assert ids_of(resp) == [request_id]


@pytest.mark.parametrize(
    "ret_code, kinds",
    [
        ("is0", {"ok"}),
        ("not0", {"raise", "timeout"}),
        ("UserCodeException", {"raise"}),
        ("TimeLimitExceeded", {"timeout"}),
    ],
)
def test_logs_filter_ret_code(sdk, logged, ret_code, kinds):
    name, runs = logged
    resp = sdk.logs(name, Limit=100, Filter={"RetCode": ret_code})
    expected = {rid for rid, run in runs.items() if run["kind"] in kinds}
    assert set(ids_of(resp)) == expected
    assert resp["TotalCount"] == len(expected)


def test_logs_order(sdk, logged):
    name, runs = logged
    asc = sdk.logs(name, Limit=100, Order="asc", OrderBy="start_time")
    desc = sdk.logs(name, Limit=100, Order="desc", OrderBy="start_time")
    starts = [e["StartTime"] for e in asc["Data"]]
    assert starts == sorted(starts)
    assert [e["StartTime"] for e in desc["Data"]] == sorted(starts, reverse=True)
    by_duration = sdk.logs(name, Limit=100, Order="asc", OrderBy="duration")
    durations = [e["Duration"] for e in by_duration["Data"]]
    assert durations == sorted(durations) and len(durations) == len(runs)
    by_duration_desc = sdk.logs(name, Limit=100, Order="desc", OrderBy="duration")
    assert [e["Duration"] for e in by_duration_desc["Data"]] == sorted(durations, reverse=True)


def test_logs_pages(sdk, logged):
    name, runs = logged
    seen = []
    for offset in range(0, len(runs), 2):
        page = sdk.logs(name, Offset=offset, Limit=2, Order="asc", OrderBy="duration")
        assert page["TotalCount"] == len(runs)
        assert len(page["Data"]) == min(2, len(runs) - offset)
        seen += ids_of(page)
    assert len(seen) == len(set(seen)) == len(runs)
    assert set(seen) == set(runs)
    assert sdk.logs(name, Offset=len(runs), Limit=2)["Data"] in ([], None)


def test_logs_time_range(sdk, logged):
    name, runs = logged
    starts = [datetime.strptime(e["StartTime"], TIME_FMT) for e in sdk.logs(name, Limit=100)["Data"]]
    first, last = min(starts), max(starts)

    def window(start, end):
        return sdk.logs(name, Limit=100, StartTime=start.strftime(TIME_FMT),
                        EndTime=end.strftime(TIME_FMT))

    assert window(first - timedelta(seconds=1), last + timedelta(seconds=1))["TotalCount"] == len(runs)
    assert window(last + timedelta(seconds=10), last + timedelta(hours=1))["TotalCount"] == 0
    assert window(first - timedelta(hours=1), first - timedelta(seconds=10))["TotalCount"] == 0


def test_logs_of_a_function_without_invocations(sdk):
    name = unique_name("quiet")
    sdk.create(name, py_zip(ECHO))
    resp = sdk.logs(name)
    assert resp["TotalCount"] == 0
    assert resp["Data"] in ([], None)


# --------------------------------------------------------------------------------------------
# ListFunctions
# --------------------------------------------------------------------------------------------


def test_list_functions_search_order_and_pages(sdk):
    prefix = unique_name("lst")
    names = [f"{prefix}-{suffix}" for suffix in ("b", "c", "a")]
    for name in names:
        sdk.create(name, py_zip(ECHO), Description=f"desc of {name}")
    found = sdk.list(SearchKey=prefix, Limit=100)
    assert found["TotalCount"] == 3
    assert {f["FunctionName"] for f in found["Functions"]} == set(names)
    for entry in found["Functions"]:
        assert entry["Runtime"] == "Python3.9"
        assert entry["Namespace"] == "default"
        assert entry["Status"] == "Active"
        assert entry["Description"] == f"desc of {entry['FunctionName']}"
        assert DATETIME_RE.match(entry["AddTime"]) and DATETIME_RE.match(entry["ModTime"]), entry

    asc = sdk.list(SearchKey=prefix, Orderby="FunctionName", Order="ASC")
    assert [f["FunctionName"] for f in asc["Functions"]] == sorted(names)
    desc = sdk.list(SearchKey=prefix, Orderby="FunctionName", Order="DESC")
    assert [f["FunctionName"] for f in desc["Functions"]] == sorted(names, reverse=True)

    page1 = sdk.list(SearchKey=prefix, Orderby="FunctionName", Order="ASC", Limit=2)
    page2 = sdk.list(SearchKey=prefix, Orderby="FunctionName", Order="ASC", Limit=2, Offset=2)
    assert page1["TotalCount"] == page2["TotalCount"] == 3
    assert [f["FunctionName"] for f in page1["Functions"] + page2["Functions"]] == sorted(names)


def test_list_functions_total_counts_everything(sdk):
    before = sdk.list(Limit=1)
    assert len(before["Functions"]) <= 1
    name = unique_name("count")
    sdk.create(name, py_zip(ECHO))
    after = sdk.list(Limit=1)
    assert after["TotalCount"] == before["TotalCount"] + 1
    sdk.delete(name)
    assert sdk.list(Limit=1)["TotalCount"] == before["TotalCount"]


# --------------------------------------------------------------------------------------------
# Namespaces and the account
# --------------------------------------------------------------------------------------------


def namespaces(sdk):
    resp = sdk.call("ListNamespaces", Limit=100)
    return {ns["Name"]: ns for ns in resp["Namespaces"]}, resp


def test_namespaces_isolate_function_names(sdk):
    ns = unique_name("ns")[:30]
    assert_request_id(sdk.call("CreateNamespace", Namespace=ns,
                               Description="for the isolation test")["RequestId"])
    listed, resp = namespaces(sdk)
    assert "default" in listed and ns in listed
    assert resp["TotalCount"] == len(resp["Namespaces"])
    assert listed[ns]["Description"] == "for the isolation test"
    assert isinstance(listed[ns]["Type"], str) and listed[ns]["Type"]
    assert DATETIME_RE.match(listed[ns]["AddTime"]) and DATETIME_RE.match(listed[ns]["ModTime"])

    name = unique_name("twin")
    sdk.create(name, toolbox_zip(version=1))
    sdk.create(name, toolbox_zip(version=2), Namespace=ns)
    assert sdk.get(name)["Namespace"] == "default"
    assert sdk.get(name, Namespace=ns)["Namespace"] == ns

    in_default = ret(sdk.invoke(name, {"return": "count"}))
    in_ns = ret(sdk.invoke(name, {"return": "count"}, Namespace=ns))
    assert in_default["version"] == 1 and in_ns["version"] == 2
    ctx = ret(sdk.invoke(name, {"return": "context", "env": ["SCF_NAMESPACE"]}, Namespace=ns))
    assert ctx["context"]["namespace"] == ns
    assert ctx["env"] == {"SCF_NAMESPACE": ns}

    only_ns = sdk.list(Namespace=ns, Limit=100)
    assert [f["FunctionName"] for f in only_ns["Functions"]] == [name]
    assert only_ns["TotalCount"] == 1
    assert only_ns["Functions"][0]["Namespace"] == ns
    in_default_list = sdk.list(SearchKey=name)
    assert [f["Namespace"] for f in in_default_list["Functions"]] == ["default"]

    assert logs_total(sdk, name, 2, Namespace=ns) == 2
    assert logs_total(sdk, name, 1) == 1

    sdk.delete(name, Namespace=ns)
    assert sdk_code(sdk.error("GetFunction", FunctionName=name, Namespace=ns)) == \
        "ResourceNotFound.Function"
    assert ret(sdk.invoke(name, {"return": "count"}))["version"] == 1

    sdk.call("DeleteNamespace", Namespace=ns)
    assert ns not in namespaces(sdk)[0]
    exc = sdk.error("CreateFunction", FunctionName=name, Code={"ZipFile": b64(py_zip(ECHO))},
                    Handler="index.main_handler", Runtime="Python3.9", Namespace=ns)
    assert sdk_code(exc) == "ResourceNotFound.Namespace"
    sdk.delete(name)


def test_get_account(sdk):
    before = sdk.call("GetAccount")
    assert_request_id(before["RequestId"])
    assert before["AccountUsage"] is not None and before["AccountLimit"] is not None, before
    count_before = before["AccountUsage"]["NamespacesCount"]
    assert count_before == namespaces(sdk)[1]["TotalCount"]
    limit_before = before["AccountLimit"]["NamespacesCount"]
    assert isinstance(limit_before, int)

    ns = unique_name("acct")
    sdk.call("CreateNamespace", Namespace=ns)
    # The namespace could be created, so the limit reported before was above the count then.
    assert limit_before > count_before, before["AccountLimit"]
    name = unique_name("acctfn")
    sdk.create(name, py_zip(ECHO), Namespace=ns)

    account = sdk.call("GetAccount")
    usage, limit = account["AccountUsage"], account["AccountLimit"]
    assert usage["NamespacesCount"] == count_before + 1
    per_ns = {u["Namespace"]: u for u in usage["Namespace"]}
    assert per_ns[ns]["FunctionsCount"] == 1
    assert per_ns[ns]["Functions"] == [name]
    assert per_ns["default"]["FunctionsCount"] == sdk.list(Limit=1)["TotalCount"]
    limits = {entry["Namespace"]: entry for entry in limit["Namespace"]}
    assert "default" in limits and ns in limits
    assert limits["default"]["TimeoutLimit"] == 900
    if limits["default"]["FunctionsCount"] is not None:
        assert limits["default"]["FunctionsCount"] > 0
    assert limit["NamespacesCount"] >= usage["NamespacesCount"]
    sdk.delete(name, Namespace=ns)
    sdk.call("DeleteNamespace", Namespace=ns)
    after = sdk.call("GetAccount")["AccountUsage"]
    assert after["NamespacesCount"] == count_before
    assert ns not in [u["Namespace"] for u in after["Namespace"]]


# --------------------------------------------------------------------------------------------
# A Node.js handler
# --------------------------------------------------------------------------------------------


def test_nodejs_runtime_handler(sdk):
    name = unique_name("node")
    sdk.create(name, node_zip(), runtime="Nodejs18.15", MemorySize=256,
               Environment=env(GREETING="hola"))
    got = sdk.get(name)
    assert got["Runtime"] == "Nodejs18.15"
    marker = unique_name("nm")
    result = sdk.invoke(name, {"marker": marker, "n": 1}, LogType="Tail")
    value = ret(result)
    assert value["got"] == {"marker": marker, "n": 1}
    assert value["function_name"] == name
    assert value["namespace"] == "default"
    assert value["memory_limit_in_mb"] == 256
    assert value["greeting"] == "hola"
    assert value["node"].startswith("v")
    assert f"node-marker {marker}" in result["Log"]
    failed = sdk.invoke(name, {"raise": "node-boom"})
    assert failed["InvokeResult"] != 0
    assert "node-boom" in failed["ErrMsg"]
