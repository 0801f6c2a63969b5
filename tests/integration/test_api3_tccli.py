"""API 3.0 through the real `tccli` (SCF-API.md §5.4): `--endpoint http://127.0.0.1:PORT`, which
makes tccli send and sign `Host: http://127.0.0.1:PORT`. Each test runs tccli with its own
temporary HOME (removed afterwards), so ~/.tccli is never touched."""

import json
import time

import pytest

from api3_helpers import DATETIME_RE, Api3, Tccli, assert_request_id, poll_until, sdk_code
from helpers import b64, py_zip, toolbox_zip, unique_name

POLL_S = 30


@pytest.fixture(scope="module")
def tccli(server):
    runner = Tccli(server)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def sdk(server):
    return Api3.for_server(server)


def wait_active(tccli, name, **params):
    got = poll_until(lambda: tccli.call("GetFunction", FunctionName=name, **params),
                     lambda r: r["Status"] not in ("Creating", "Updating"), timeout=POLL_S)
    assert got["Status"] == "Active", got
    return got


def create(tccli, name, code_zip=None, **params):
    resp = tccli.call(
        "CreateFunction",
        FunctionName=name,
        Code={"ZipFile": b64(code_zip or toolbox_zip())},
        Handler="index.main_handler",
        Runtime="Python3.9",
        **params,
    )
    assert_request_id(resp["RequestId"])
    return wait_active(tccli, name)


@pytest.fixture(scope="module")
def toolbox(tccli):
    name = unique_name("cli3")
    create(tccli, name, Timeout=10, MemorySize=256,
           Environment={"Variables": [{"Key": "GREETING", "Value": "hi-from-tccli"}]},
           Description="made by tccli")
    return name


def test_create_and_get(tccli, sdk, toolbox):
    got = tccli.call("GetFunction", FunctionName=toolbox)
    assert got["FunctionName"] == toolbox
    assert got["Handler"] == "index.main_handler"
    assert got["Runtime"] == "Python3.9"
    assert (got["MemorySize"], got["Timeout"]) == (256, 10)
    assert got["Description"] == "made by tccli"
    assert got["Environment"]["Variables"] == [{"Key": "GREETING", "Value": "hi-from-tccli"}]
    assert DATETIME_RE.match(got["ModTime"]), got
    # The same function, seen through the SDK.
    assert sdk.get(toolbox)["Description"] == "made by tccli"


def test_create_with_unfolded_arguments(tccli, sdk):
    name = unique_name("unfold")
    result = tccli.run("CreateFunction", extra_args=[
        "--cli-unfold-argument",
        "--FunctionName", name,
        "--Code.ZipFile", b64(toolbox_zip()),
        "--Handler", "index.main_handler",
        "--Runtime", "Python3.9",
        "--MemorySize", "384",
        "--Environment.Variables.0.Key", "K1",
        "--Environment.Variables.0.Value", "v1",
    ])
    assert_request_id(result.json()["RequestId"])
    got = sdk.wait_active(name)
    assert got["MemorySize"] == 384
    assert got["Environment"]["Variables"] == [{"Key": "K1", "Value": "v1"}]
    sdk.delete(name)


def test_invoke_sync(tccli, toolbox):
    marker = unique_name("m")
    event = {"print": marker, "k": "v", "env": ["GREETING"], "return": "context"}
    resp = tccli.call("Invoke", FunctionName=toolbox, ClientContext=json.dumps(event),
                      LogType="Tail", InvocationType="RequestResponse")
    assert_request_id(resp["RequestId"])
    result = resp["Result"]
    assert result["InvokeResult"] == 0, result
    seen = json.loads(result["RetMsg"])
    assert seen["env"] == {"GREETING": "hi-from-tccli"}
    assert seen["context"]["function_name"] == toolbox
    assert marker in result["Log"]
    assert isinstance(result["BillDuration"], int) and result["BillDuration"] >= 1
    assert result["FunctionRequestId"]


def test_invoke_function(tccli, toolbox):
    resp = tccli.call("InvokeFunction", FunctionName=toolbox, Event=json.dumps({"via": "cli"}))
    assert json.loads(resp["Result"]["RetMsg"]) == {"via": "cli"}


def test_invoke_async_status_and_list(tccli, toolbox):
    started = time.monotonic()
    tccli.call("GetFunction", FunctionName=toolbox)
    baseline = time.monotonic() - started  # what one tccli run costs by itself
    started = time.monotonic()
    resp = tccli.call("Invoke", FunctionName=toolbox, InvocationType="Event",
                      ClientContext=json.dumps({"sleep": 4, "print": "async-cli"}))
    # Waiting for the function would take four seconds more than a plain call.
    assert time.monotonic() - started < baseline + 2.5
    request_id = resp["Result"]["FunctionRequestId"]
    assert request_id
    status = poll_until(
        lambda: tccli.call("GetAsyncEventStatus", InvokeRequestId=request_id)["Result"],
        lambda r: r["Status"] != "RUNNING", timeout=POLL_S,
    )
    assert status["Status"] == "FINISHED", status
    assert status["InvokeRequestId"] == request_id
    listed = tccli.call("ListAsyncEvents", FunctionName=toolbox, InvokeRequestId=request_id)
    assert [e["InvokeRequestId"] for e in listed["EventList"]] == [request_id]
    assert listed["EventList"][0]["Status"] == "FINISHED"
    logs = tccli.call("GetFunctionLogs", FunctionName=toolbox, FunctionRequestId=request_id)
    assert logs["TotalCount"] == 1
    assert logs["Data"][0]["RetCode"] == 0
    assert "async-cli" in logs["Data"][0]["Log"]


def test_logs_with_filter(tccli, toolbox):
    ok = tccli.call("Invoke", FunctionName=toolbox, ClientContext='{"n": 1}')["Result"]
    bad = tccli.call("Invoke", FunctionName=toolbox,
                     ClientContext='{"raise": "cli-boom"}')["Result"]
    assert ok["InvokeResult"] == 0 and bad["InvokeResult"] != 0
    failed = tccli.call("GetFunctionLogs", FunctionName=toolbox, Limit=100,
                        Filter={"RetCode": "not0"})
    ids = [entry["RequestId"] for entry in failed["Data"]]
    assert bad["FunctionRequestId"] in ids
    assert ok["FunctionRequestId"] not in ids
    assert all(entry["RetCode"] != 0 for entry in failed["Data"])
    one = tccli.call("GetFunctionLogs", FunctionName=toolbox,
                     FunctionRequestId=ok["FunctionRequestId"])
    assert one["TotalCount"] == 1
    assert json.loads(one["Data"][0]["RetMsg"]) == {"n": 1}


def test_update_configuration_and_code(tccli, sdk):
    name = unique_name("cliupd")
    create(tccli, name)
    tccli.call("UpdateFunctionConfiguration", FunctionName=name, MemorySize=512, Timeout=30,
               Description="updated by tccli")
    got = wait_active(tccli, name)
    assert (got["MemorySize"], got["Timeout"], got["Description"]) == (512, 30, "updated by tccli")
    source = "def handler(event, context):\n    return {'updated': event}\n"
    tccli.call("UpdateFunctionCode", FunctionName=name, Handler="main.handler",
               ZipFile=b64(py_zip(source, filename="main.py")))
    assert wait_active(tccli, name)["Handler"] == "main.handler"
    result = tccli.call("Invoke", FunctionName=name, ClientContext='{"x": 1}')["Result"]
    assert json.loads(result["RetMsg"]) == {"updated": {"x": 1}}
    listed = tccli.call("ListFunctions", SearchKey=name)
    assert [f["FunctionName"] for f in listed["Functions"]] == [name]
    tccli.call("DeleteFunction", FunctionName=name)
    assert sdk_code(sdk.error("GetFunction", FunctionName=name)) == "ResourceNotFound.Function"


def test_namespaces(tccli):
    ns = unique_name("clins")
    tccli.call("CreateNamespace", Namespace=ns, Description="via tccli")
    listed = tccli.call("ListNamespaces", Limit=100)
    assert ns in [n["Name"] for n in listed["Namespaces"]]
    name = unique_name("clinsfn")
    tccli.call("CreateFunction", FunctionName=name, Namespace=ns, Handler="index.main_handler",
               Runtime="Python3.9", Code={"ZipFile": b64(toolbox_zip())})
    wait_active(tccli, name, Namespace=ns)
    result = tccli.call("Invoke", FunctionName=name, Namespace=ns,
                        ClientContext='{"return": "context"}')["Result"]
    assert json.loads(result["RetMsg"])["context"]["namespace"] == ns
    assert tccli.run("GetFunction", {"FunctionName": name}).error_code == \
        "ResourceNotFound.Function"
    tccli.call("DeleteFunction", FunctionName=name, Namespace=ns)
    tccli.call("DeleteNamespace", Namespace=ns)
    assert ns not in [n["Name"] for n in tccli.call("ListNamespaces", Limit=100)["Namespaces"]]


def test_get_account(tccli):
    account = tccli.call("GetAccount")
    assert account["AccountUsage"]["NamespacesCount"] >= 1
    assert account["AccountLimit"]["Namespace"]


def test_error_codes_in_output_and_exit_status(tccli):
    missing = tccli.run("GetFunction", {"FunctionName": unique_name("missing")})
    assert missing.returncode == 255
    assert missing.error_code == "ResourceNotFound.Function"
    assert missing.stdout.strip() == ""

    wrong_key = tccli.run("ListFunctions", secret_key="not-the-key")
    assert wrong_key.error_code == "AuthFailure.SignatureFailure"
    unknown_id = tccli.run("ListFunctions", secret_id="AKIDnobodyknows")
    assert unknown_id.error_code == "AuthFailure.SecretIdNotFound"

    name = unique_name("clibad")
    not_zip = tccli.run("CreateFunction", {"FunctionName": name, "Handler": "index.main_handler",
                                           "Runtime": "Python3.9",
                                           "Code": {"ZipFile": b64(b"not a zip")}})
    assert not_zip.error_code == "InvalidParameterValue.ZipFile"
    bad_memory = tccli.run("CreateFunction", {"FunctionName": name, "MemorySize": 100,
                                              "Handler": "index.main_handler",
                                              "Runtime": "Python3.9",
                                              "Code": {"ZipFile": b64(toolbox_zip())}})
    assert bad_memory.error_code.startswith("InvalidParameterValue")
    # Neither failed create left a function behind; the same credentials still work.
    ok = tccli.run("ListFunctions", {"SearchKey": name})
    assert ok.returncode == 0 and ok.json()["TotalCount"] == 0
