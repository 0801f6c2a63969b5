"""API 3.0 through the real tencentcloud-sdk-nodejs-scf (SCF-API.md §5.5), driven by
tests/node/run.js (install it with `npm ci --prefix tests/node`). With TC3 the Node SDK signs the
host without its port and puts `127` in the credential scope for an IP endpoint; the server must
accept both quirks."""

import json

import pytest

from api3_helpers import (
    DATETIME_RE,
    EVENT_TIME_RE,
    Api3,
    NodeSdk,
    assert_request_id,
    node_zip,
    sdk_code,
)
from helpers import b64, py_zip, toolbox_zip, unique_name

PROFILES = {
    "tc3-post": {},
    "tc3-get": {"reqMethod": "GET"},
    "v1-sha256-post": {"signMethod": "HmacSHA256"},
}


@pytest.fixture(scope="module")
def node(server):
    NodeSdk.check_installed()
    return NodeSdk(server)


@pytest.fixture(scope="module")
def sdk(server):
    return Api3.for_server(server)


def run_lifecycle(node, sdk, runtime, code_zip, profile):
    name = unique_name("nodesdk")
    marker = unique_name("nm")
    event = {"marker": marker, "print": marker, "n": 7}
    out = node.run("lifecycle", {"name": name, "zip": b64(code_zip), "runtime": runtime,
                                 "event": event, "profile": profile})
    assert out["name"] == name

    assert_request_id(out["create"]["RequestId"])
    assert out["statuses"][-1] == "Active", out["statuses"]
    assert set(out["statuses"]) <= {"Creating", "Active"}, out["statuses"]
    got = out["getAfterCreate"]
    assert got["FunctionName"] == name and got["Runtime"] == runtime
    assert (got["MemorySize"], got["Timeout"]) == (256, 10)
    assert got["Description"] == "created by the node sdk"
    assert got["Environment"]["Variables"] == [{"Key": "GREETING", "Value": "hello-from-node"}]
    updated = out["getAfterUpdate"]
    assert updated["MemorySize"] == 512
    assert updated["Description"] == "updated by the node sdk"
    assert updated["Timeout"] == 10

    result = out["invoke"]["Result"]
    assert result["InvokeResult"] == 0, result
    assert marker in result["Log"]
    assert isinstance(result["BillDuration"], int) and result["BillDuration"] >= 1
    assert result["MemUsage"] > 0
    sync_id = result["FunctionRequestId"]

    via = out["invokeFunction"]["Result"]
    assert via["InvokeResult"] == 0, via

    assert out["invokeAsyncMs"] < 1500, "an Event invocation must not wait for the function"
    async_id = out["invokeAsync"]["Result"]["FunctionRequestId"]
    assert async_id and async_id != sync_id
    status = out["asyncStatus"]["Result"]
    assert status["Status"] == "FINISHED", status
    assert status["InvokeRequestId"] == async_id
    events = out["listAsyncEvents"]["EventList"]
    assert [e["InvokeRequestId"] for e in events] == [async_id]
    assert events[0]["Status"] == "FINISHED"
    assert EVENT_TIME_RE.match(events[0]["StartTime"]), events

    logs = out["logs"]
    assert logs["TotalCount"] == 1
    entry = logs["Data"][0]
    assert entry["RequestId"] == sync_id
    assert entry["FunctionName"] == name
    assert entry["RetCode"] == 0
    assert marker in entry["Log"]
    assert DATETIME_RE.match(entry["StartTime"]), entry
    async_entry = out["asyncLogs"]["Data"][0]
    assert async_entry["RequestId"] == async_id and async_entry["RetCode"] == 0

    assert [f["FunctionName"] for f in out["list"]["Functions"]] == [name]
    missing = out["getMissing"]
    assert missing["ok"] is False and missing["code"] == "ResourceNotFound.Function"
    assert_request_id(out["delete"]["RequestId"])
    gone = out["getAfterDelete"]
    assert gone["ok"] is False and gone["code"] == "ResourceNotFound.Function"
    # Deleted for the Python SDK too.
    assert sdk_code(sdk.error("GetFunction", FunctionName=name)) == "ResourceNotFound.Function"
    return out


@pytest.mark.parametrize("profile", list(PROFILES))
def test_lifecycle_python_function(node, sdk, profile):
    out = run_lifecycle(node, sdk, "Python3.9", toolbox_zip(), PROFILES[profile])
    ret = json.loads(out["invoke"]["Result"]["RetMsg"])
    assert ret["marker"] == ret["print"] and ret["n"] == 7
    assert json.loads(out["invokeFunction"]["Result"]["RetMsg"]) == {"via": "InvokeFunction"}
    assert json.loads(out["asyncLogs"]["Data"][0]["RetMsg"]) == {"via": "async", "sleep": 2}


def test_lifecycle_nodejs_function(node, sdk):
    out = run_lifecycle(node, sdk, "Nodejs18.15", node_zip(), {})
    ret = json.loads(out["invoke"]["Result"]["RetMsg"])
    assert ret["got"]["n"] == 7
    assert ret["greeting"] == "hello-from-node"
    assert ret["memory_limit_in_mb"] == 512
    assert json.loads(out["invokeFunction"]["Result"]["RetMsg"])["got"] == {"via": "InvokeFunction"}


def test_node_sdk_sees_python_sdk_functions(node, sdk):
    name = unique_name("shared")
    sdk.create(name, py_zip("def main_handler(event, context):\n    return {'py': event}\n"))
    out = node.call("Invoke", {"FunctionName": name, "ClientContext": '{"from": "node"}'})
    assert out["ok"], out
    assert json.loads(out["response"]["Result"]["RetMsg"]) == {"py": {"from": "node"}}
    got = node.call("GetFunction", {"FunctionName": name})
    assert got["ok"] and got["response"]["Status"] == "Active"
    sdk.delete(name)


@pytest.mark.parametrize("profile", list(PROFILES))
def test_error_codes(node, profile):
    prof = PROFILES[profile]
    missing = node.call("GetFunction", {"FunctionName": unique_name("missing")}, profile=prof)
    assert missing["ok"] is False and missing["isError"]
    assert missing["code"] == "ResourceNotFound.Function"
    assert missing["message"]
    assert_request_id(missing["requestId"])

    wrong_key = node.call("ListFunctions", {}, profile=prof, secret_key="not-the-key")
    assert wrong_key["code"] == "AuthFailure.SignatureFailure", wrong_key
    unknown_id = node.call("ListFunctions", {}, profile=prof, secret_id="AKIDnobodyknows")
    assert unknown_id["code"] == "AuthFailure.SecretIdNotFound", unknown_id

    # The positive control with the same profile and the right key.
    listed = node.call("ListFunctions", {"Limit": 1}, profile=prof)
    assert listed["ok"], listed
    assert isinstance(listed["response"]["TotalCount"], int)


def test_more_error_codes(node, sdk):
    assert node.call("NoSuchAction", {})["code"] == "InvalidAction"
    name = unique_name("nodebad")
    not_zip = node.call("CreateFunction", {"FunctionName": name, "Handler": "index.main_handler",
                                           "Runtime": "Python3.9",
                                           "Code": {"ZipFile": b64(b"not a zip")}})
    assert not_zip["code"] == "InvalidParameterValue.ZipFile", not_zip
    bad_memory = node.call("CreateFunction", {"FunctionName": name, "MemorySize": 100,
                                              "Handler": "index.main_handler",
                                              "Runtime": "Python3.9",
                                              "Code": {"ZipFile": b64(toolbox_zip())}})
    assert (bad_memory["code"] or "").startswith("InvalidParameterValue"), bad_memory
    missing = node.call("CreateFunction", {"Handler": "index.main_handler",
                                           "Runtime": "Python3.9",
                                           "Code": {"ZipFile": b64(toolbox_zip())}})
    assert (missing["code"] or "").startswith("MissingParameter"), missing
    sdk.create(name, toolbox_zip())
    twice = node.call("CreateFunction", {"FunctionName": name, "Handler": "index.main_handler",
                                         "Runtime": "Python3.9",
                                         "Code": {"ZipFile": b64(toolbox_zip())}})
    assert twice["code"] == "ResourceInUse.Function", twice
    not_json = node.call("Invoke", {"FunctionName": name, "ClientContext": "{nope"})
    assert (not_json["code"] or "").startswith("InvalidParameter"), not_json
    sdk.delete(name)


def test_terminate_async_event(node, sdk):
    name = unique_name("nodeterm")
    sdk.create(name, toolbox_zip(), Timeout=60)
    started = node.call("Invoke", {"FunctionName": name, "InvocationType": "Event",
                                   "ClientContext": '{"sleep": 40}'})
    assert started["ok"], started
    request_id = started["response"]["Result"]["FunctionRequestId"]
    stopped = node.call("TerminateAsyncEvent", {"FunctionName": name,
                                                "InvokeRequestId": request_id})
    assert stopped["ok"], stopped
    assert sdk.wait_async(request_id, timeout=15)["Status"] == "ABORTED"
    sdk.delete(name)
