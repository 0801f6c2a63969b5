"""GetFunctionLogs: the invocation records of a function, their fields, filters, order, pages."""

import json

import pytest

from helpers import (
    DATETIME_RE,
    assert_error,
    assert_ok,
    invoke_data,
    poll,
    toolbox_zip,
    unique_name,
)

INVALID = "InvalidParameter"


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def wait_for_total(api, name, total):
    resp = poll(
        lambda: assert_ok(api.logs(name, limit=100)),
        lambda r: r["total"] >= total,
        timeout=10,
    )
    assert resp["total"] == total, resp
    return resp


@pytest.fixture(scope="module")
def logged(api):
    """A function with three successful invocations of different lengths and one failure."""
    name = unique_name("logs")
    assert_ok(api.create(name, toolbox_zip(), timeout=10))
    runs = {}
    for sleep in (0.0, 0.6, 0.3):
        marker = unique_name("mark")
        data = invoke_data(api.invoke(name, {"print": marker, "sleep": sleep}))
        assert data["invokeResult"] == 0
        runs[data["requestId"]] = {"marker": marker, "sleep": sleep, "ok": True}
    marker = unique_name("mark")
    data = invoke_data(api.invoke(name, {"print": marker, "raise": "logged failure"}))
    assert data["invokeResult"] != 0
    runs[data["requestId"]] = {"marker": marker, "sleep": 0, "ok": False}
    wait_for_total(api, name, len(runs))
    return name, runs


def test_total_and_data_are_top_level(api, logged):
    name, runs = logged
    resp = assert_ok(api.logs(name))
    assert resp["total"] == len(runs)
    assert isinstance(resp["data"], list)
    assert {entry["requestId"] for entry in resp["data"]} == set(runs)


def test_entries_have_the_documented_fields(api, logged):
    name, runs = logged
    for entry in assert_ok(api.logs(name))["data"]:
        run = runs[entry["requestId"]]
        assert entry["functionName"] == name
        assert DATETIME_RE.match(entry["startTime"]), entry
        assert is_number(entry["duration"]) and entry["duration"] >= run["sleep"] * 1000
        assert isinstance(entry["billDuration"], int)
        assert entry["billDuration"] >= 100 and entry["billDuration"] % 100 == 0
        assert entry["billDuration"] >= entry["duration"]
        assert isinstance(entry["memUsage"], int) and entry["memUsage"] > 0
        assert run["marker"] in entry["log"]
        assert entry["invokeType"] == "RequestResponse"
        assert isinstance(entry["retMsg"], str)
        if run["ok"]:
            assert entry["retCode"] == 0
            assert json.loads(entry["retMsg"]) == {"print": run["marker"], "sleep": run["sleep"]}
        else:
            assert entry["retCode"] != 0


def test_request_id_filter_gives_one_record_with_only_its_log(api, logged):
    name, runs = logged
    markers = {run["marker"] for run in runs.values()}
    for request_id, run in runs.items():
        resp = assert_ok(api.logs(name, requestId=request_id))
        assert resp["total"] == 1
        [entry] = resp["data"]
        assert entry["requestId"] == request_id
        assert run["marker"] in entry["log"]
        for other in markers - {run["marker"]}:
            assert other not in entry["log"]


def test_unknown_request_id_gives_nothing(api, logged):
    name, _ = logged
    resp = assert_ok(api.logs(name, requestId="00000000-0000-4000-8000-000000000000"))
    assert resp["total"] == 0 and resp["data"] == []


@pytest.mark.parametrize(
    "orderby, field",
    [
        ("start_time", "startTime"),
        ("duration", "duration"),
        ("mem_usage", "memUsage"),
        ("request_id", "requestId"),
        ("function_name", "functionName"),
    ],
)
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_order(api, logged, orderby, field, order):
    name, runs = logged
    entries = assert_ok(api.logs(name, orderby=orderby, order=order))["data"]
    values = [entry[field] for entry in entries]
    assert len(values) == len(runs)
    assert values == sorted(values, reverse=(order == "desc"))


def test_order_by_duration_puts_the_slowest_first_when_descending(api, logged):
    name, runs = logged
    slowest = max(runs, key=lambda rid: runs[rid]["sleep"])
    entries = assert_ok(api.logs(name, orderby="duration", order="desc"))["data"]
    assert entries[0]["requestId"] == slowest
    entries = assert_ok(api.logs(name, orderby="duration", order="asc"))["data"]
    assert entries[-1]["requestId"] == slowest


def test_pages_with_offset_and_limit(api, logged):
    name, runs = logged
    common = {"orderby": "request_id", "order": "asc"}
    first = assert_ok(api.logs(name, offset=0, limit=3, **common))
    second = assert_ok(api.logs(name, offset=3, limit=3, **common))
    assert len(first["data"]) == 3 and len(second["data"]) == 1
    assert first["total"] == second["total"] == len(runs)
    ids = [e["requestId"] for e in first["data"] + second["data"]]
    assert ids == sorted(runs)


def test_default_limit_is_twenty(api):
    name = unique_name("logs")
    assert_ok(api.create(name, toolbox_zip()))
    for i in range(21):
        invoke_data(api.invoke(name, {"i": i}))
    wait_for_total(api, name, 21)
    resp = assert_ok(api.logs(name))
    assert resp["total"] == 21
    assert len(resp["data"]) == 20


def test_logs_of_one_function_exclude_other_functions(api, logged):
    name, runs = logged
    other = unique_name("logs")
    assert_ok(api.create(other, toolbox_zip()))
    request_id = invoke_data(api.invoke(other, {}))["requestId"]
    resp = wait_for_total(api, other, 1)
    assert [e["requestId"] for e in resp["data"]] == [request_id]
    assert request_id not in {e["requestId"] for e in assert_ok(api.logs(name))["data"]}
    assert assert_ok(api.logs(name))["total"] == len(runs)


def test_no_records_for_a_function_never_invoked(api):
    name = unique_name("logs")
    assert_ok(api.create(name, toolbox_zip()))
    resp = assert_ok(api.logs(name))
    assert resp["total"] == 0 and resp["data"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"order": "sideways"},
        {"orderby": "colour"},
        {"offset": -1},
        {"limit": "lots"},
    ],
    ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()),
)
def test_invalid_parameters(api, logged, params):
    name, _ = logged
    assert_error(api.logs(name, **params), 4000, INVALID)
