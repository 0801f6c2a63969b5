"""The legacy API 2.0 and API 3.0 are two views of the same functions and invocation records: a
function created through one is invoked, updated, listed, logged and deleted through the other."""

import json

import pytest

from api3_helpers import Api3, poll_until, sdk_code
from helpers import assert_error, assert_ok, b64, invoke_data, toolbox_zip, unique_name


@pytest.fixture(scope="module")
def sdk(server):
    return Api3.for_server(server)


def legacy_env(environment):
    """{key: value} of a legacy GetFunction `environment`, whichever casing the server uses."""
    lowered = {k.lower(): v for k, v in (environment or {}).items()}
    variables = lowered.get("variables") or []
    if isinstance(variables, dict):
        return dict(variables)
    pairs = {}
    for item in variables:
        item = {k.lower(): v for k, v in item.items()}
        pairs[item["key"]] = item["value"]
    return pairs


def legacy_log(api, name, request_id):
    resp = poll_until(lambda: assert_ok(api.logs(name, requestId=request_id)),
                      lambda r: r["total"] >= 1, timeout=15)
    assert resp["total"] == 1, resp
    return resp["data"][0]


def test_created_with_api3_used_with_legacy(api, sdk):
    name = unique_name("from3")
    sdk.create(name, toolbox_zip(), MemorySize=256, Timeout=7, Description="made with 3.0",
               Environment={"Variables": [{"Key": "ORIGIN", "Value": "api3"}]})

    data = assert_ok(api.get(name))["data"]
    assert data["functionName"] == name
    assert data["handler"] == "index.main_handler"
    assert data["runtime"] == "Python3.9"
    assert (data["memorySize"], data["timeout"]) == (256, 7)
    assert data["description"] == "made with 3.0"
    assert legacy_env(data["environment"]) == {"ORIGIN": "api3"}

    listed = assert_ok(api.list(searchKey=name))["data"]
    assert [f["functionName"] for f in listed["functions"]] == [name]

    run = invoke_data(api.invoke(name, {"return": "context", "env": ["ORIGIN"]}))
    seen = json.loads(run["retMsg"])
    assert seen["env"] == {"ORIGIN": "api3"}
    assert seen["context"]["memory_limit_in_mb"] == 256

    # The legacy invocation is in the API 3.0 logs, and the 3.0 one in the legacy logs.
    entry = sdk.finished_log(name, run["requestId"])
    assert entry["RetCode"] == 0
    assert json.loads(entry["RetMsg"]) == seen
    result = sdk.invoke(name, {"via": "api3"})
    assert result["InvokeResult"] == 0
    legacy_entry = legacy_log(api, name, result["FunctionRequestId"])
    assert json.loads(legacy_entry["retMsg"]) == {"via": "api3"}
    assert sdk.logs(name, Limit=100)["TotalCount"] == 2
    assert assert_ok(api.logs(name, limit=100))["total"] == 2

    assert_ok(api.delete(name))
    assert sdk_code(sdk.error("GetFunction", FunctionName=name)) == "ResourceNotFound.Function"
    assert sdk.list(SearchKey=name)["TotalCount"] == 0


def test_created_with_legacy_used_with_api3(api, sdk):
    name = unique_name("from2")
    env = {"variables": [{"key": "ORIGIN", "value": "legacy"}]}
    assert_ok(api.create(name, toolbox_zip(), memorySize=384, timeout=9,
                         description="made with 2.0", environment=env))

    got = sdk.wait_active(name)
    assert got["Handler"] == "index.main_handler"
    assert (got["MemorySize"], got["Timeout"]) == (384, 9)
    assert got["Description"] == "made with 2.0"
    assert got["Namespace"] == "default"
    assert got["Environment"]["Variables"] == [{"Key": "ORIGIN", "Value": "legacy"}]
    assert [f["FunctionName"] for f in sdk.list(SearchKey=name)["Functions"]] == [name]

    seen = json.loads(sdk.invoke(name, {"return": "context", "env": ["ORIGIN"]})["RetMsg"])
    assert seen["env"] == {"ORIGIN": "legacy"}

    sdk.update_config(name, MemorySize=640, Description="changed with 3.0")
    data = assert_ok(api.get(name))["data"]
    assert data["memorySize"] == 640
    assert data["description"] == "changed with 3.0"

    assert_ok(api.update(name, timeout=12))
    assert sdk.get(name)["Timeout"] == 12

    sdk.delete(name)
    assert_error(api.get(name), 5000, "ResourceNotFound.Function")


def test_names_are_shared(api, sdk):
    name = unique_name("clash")
    assert_ok(api.create(name, toolbox_zip()))
    exc = sdk.error("CreateFunction", FunctionName=name, Handler="index.main_handler",
                    Runtime="Python3.9", Code={"ZipFile": b64(toolbox_zip())})
    assert sdk_code(exc) == "ResourceInUse.Function"
    other = unique_name("clash")
    sdk.create(other, toolbox_zip())
    assert_error(api.create(other, toolbox_zip()), 5100, "ResourceInUse")
    assert_ok(api.delete(name))
    sdk.delete(other)


def test_legacy_async_invocation_is_an_async_event(api, sdk):
    name = unique_name("async2")
    assert_ok(api.create(name, toolbox_zip(), timeout=10))
    resp = assert_ok(api.invoke(name, {"sleep": 1, "n": 1}, invokeType="Event"))
    request_id = resp["data"]["requestId"]
    status = sdk.wait_async(request_id)
    assert status["Status"] == "FINISHED", status
    assert status["InvokeRequestId"] == request_id
    listed = sdk.call("ListAsyncEvents", FunctionName=name)
    assert [e["InvokeRequestId"] for e in listed["EventList"]] == [request_id]
    entry = sdk.finished_log(name, request_id)
    assert json.loads(entry["RetMsg"]) == {"sleep": 1, "n": 1}
    assert_ok(api.delete(name))


def test_api3_async_invocation_in_legacy_logs(api, sdk):
    name = unique_name("async3")
    sdk.create(name, toolbox_zip(), Timeout=10)
    request_id = sdk.invoke_async(name, {"n": 3})
    assert sdk.wait_async(request_id)["Status"] == "FINISHED"
    entry = legacy_log(api, name, request_id)
    assert entry["invokeType"] == "Event"
    assert json.loads(entry["retMsg"]) == {"n": 3}
    sdk.delete(name)


def test_functions_of_other_namespaces_stay_out_of_the_legacy_default_view(api, sdk):
    ns = unique_name("xns")
    sdk.call("CreateNamespace", Namespace=ns)
    name = unique_name("xnsfn")
    sdk.create(name, toolbox_zip(), Namespace=ns)
    assert_error(api.get(name), 5000, "ResourceNotFound.Function")
    assert assert_ok(api.list(searchKey=name))["data"]["total"] == 0
    data = assert_ok(api.get(name, namespace=ns))["data"]
    assert data["namespace"] == ns
    run = invoke_data(api.invoke(name, {"return": "context"}, namespace=ns))
    assert json.loads(run["retMsg"])["context"]["namespace"] == ns
    sdk.delete(name, Namespace=ns)
    sdk.call("DeleteNamespace", Namespace=ns)
