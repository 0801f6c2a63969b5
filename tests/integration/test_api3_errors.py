"""API 3.0 errors: the envelope (HTTP 200, Content-Type exactly application/json, Error.Code,
Error.Message, RequestId), each way a signature can be wrong (SCF-API.md §2.3-§2.5, §6), and the
SCF error codes of issue 6. Each negative check has a positive control built the same way, so a
server that refused everything would fail too."""

import hashlib
import json
import time

import pytest

from api3_helpers import (
    Api3,
    RawApi3,
    assert_code_startswith,
    assert_request_id,
    envelope,
    poll_until,
    raw_error_code,
    raw_ok,
    sdk_code,
    tc3_canonical_request,
    tc3_signature,
)
from helpers import ECHO, b64, py_zip, toolbox_zip, unique_name

INVALID = ("InvalidParameter",)  # InvalidParameter, InvalidParameter.*, InvalidParameterValue.*


@pytest.fixture(scope="module")
def sdk(server):
    return Api3.for_server(server)


@pytest.fixture(scope="module")
def rawapi(server):
    return RawApi3.for_server(server)


@pytest.fixture(scope="module")
def echo(sdk):
    name = unique_name("err")
    sdk.create(name, toolbox_zip(), Timeout=10)
    return name


def create_params(name, code_zip=None, **more):
    params = {
        "FunctionName": name,
        "Code": {"ZipFile": b64(code_zip if code_zip is not None else py_zip(ECHO))},
        "Handler": "index.main_handler",
        "Runtime": "Python3.9",
    }
    params.update(more)
    return params


def logs_total(sdk, name):
    return sdk.logs(name, Limit=1)["TotalCount"]


# --------------------------------------------------------------------------------------------
# The raw signer itself (so that the negative tests below are not testing a broken signer)
# --------------------------------------------------------------------------------------------


def test_raw_signer_matches_the_published_vectors():
    payload = (b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], '
               b'"Name": "instance-name"}]}')
    canonical = tc3_canonical_request("POST", "", "application/json; charset=utf-8",
                                      "cvm.tencentcloudapi.com", payload)
    assert hashlib.sha256(canonical.encode()).hexdigest() == \
        "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
    signature, scope = tc3_signature("Gu5t9xGARNpq86cd98joQYCN3EXAMPLE", 1551113065, "cvm",
                                     canonical)
    assert scope == "2019-02-25/cvm/tc3_request"
    assert signature == "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"


# --------------------------------------------------------------------------------------------
# Envelope
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_success_envelope(rawapi, method):
    inner = raw_ok(rawapi.tc3("ListFunctions", {"Limit": 1}, method=method))
    assert isinstance(inner["Functions"], list)
    assert isinstance(inner["TotalCount"], int)


def test_error_envelope(rawapi):
    resp = rawapi.tc3("GetFunction", {"FunctionName": unique_name("missing")})
    assert raw_error_code(resp) == "ResourceNotFound.Function"
    body = resp.json()["Response"]
    assert set(body) == {"Error", "RequestId"}


def test_request_ids_are_unique(rawapi):
    ids = {envelope(rawapi.tc3("ListFunctions", {"Limit": 1}))["RequestId"] for _ in range(3)}
    assert len(ids) == 3


def test_malformed_json_body_is_an_error_envelope(rawapi):
    resp = rawapi.tc3("ListFunctions", body=b'{"Limit": 1')
    assert raw_error_code(resp)


def test_v1_success_envelope(rawapi):
    for method in ("GET", "POST"):
        inner = raw_ok(rawapi.v1("ListFunctions", {"Limit": 1}, method=method))
        assert isinstance(inner["TotalCount"], int)


# --------------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------------


def test_wrong_key_tc3_sdk(server):
    bad = Api3.for_server(server, secret_key=server.secret_key + "x")
    assert sdk_code(bad.error("ListFunctions")) == "AuthFailure.SignatureFailure"


@pytest.mark.parametrize("variant", ["tc3-get", "v1-sha256-post", "v1-sha1-get"])
def test_wrong_key_other_configurations(server, variant):
    bad = Api3.for_server(server, variant, secret_key="not-the-key")
    assert sdk_code(bad.error("ListFunctions")) == "AuthFailure.SignatureFailure"


@pytest.mark.parametrize("variant", ["tc3-post", "v1-sha256-post"])
def test_unknown_secret_id(server, variant):
    bad = Api3.for_server(server, variant, secret_id="AKIDnobodyknows")
    assert sdk_code(bad.error("ListFunctions")) == "AuthFailure.SecretIdNotFound"


def test_wrong_key_does_not_act(server, sdk):
    name = unique_name("noauth")
    bad = Api3.for_server(server, secret_key="not-the-key")
    exc = bad.error("CreateFunction", **create_params(name))
    assert sdk_code(exc) == "AuthFailure.SignatureFailure"
    assert sdk_code(sdk.error("GetFunction", FunctionName=name)) == "ResourceNotFound.Function"


def test_timestamp_window_tc3(rawapi):
    now = int(time.time())
    raw_ok(rawapi.tc3("ListFunctions", {}, timestamp=now - 120))
    raw_ok(rawapi.tc3("ListFunctions", {}, timestamp=now + 120))
    assert raw_error_code(rawapi.tc3("ListFunctions", {}, timestamp=now - 600)) == \
        "AuthFailure.SignatureExpire"
    assert raw_error_code(rawapi.tc3("ListFunctions", {}, timestamp=now + 600)) == \
        "AuthFailure.SignatureExpire"
    assert raw_error_code(rawapi.tc3("ListFunctions", {}, method="GET",
                                     timestamp=now - 600)) == "AuthFailure.SignatureExpire"


def test_timestamp_window_v1(rawapi):
    now = int(time.time())
    raw_ok(rawapi.v1("ListFunctions", {}, timestamp=now - 120))
    assert raw_error_code(rawapi.v1("ListFunctions", {}, timestamp=now - 600)) == \
        "AuthFailure.SignatureExpire"
    assert raw_error_code(rawapi.v1("ListFunctions", {}, method="POST",
                                    timestamp=now - 600)) == "AuthFailure.SignatureExpire"


def test_scope_date_must_be_the_timestamp_s(rawapi):
    """A signature made with a key derived for another day does not sign today's request."""
    assert raw_error_code(rawapi.tc3("ListFunctions", {}, scope_date="2020-01-01")) == \
        "AuthFailure.SignatureFailure"


def test_replayed_nonce_v1(rawapi):
    fixed = {"Nonce": 424242, "Timestamp": int(time.time())}
    raw_ok(rawapi.v1("ListFunctions", fixed))
    assert raw_error_code(rawapi.v1("ListFunctions", fixed)) == "AuthFailure.SignatureExpire"


def test_wrong_key_raw(rawapi):
    assert raw_error_code(rawapi.tc3("ListFunctions", {}, key="wrong")) == \
        "AuthFailure.SignatureFailure"
    assert raw_error_code(rawapi.v1("ListFunctions", {}, key="wrong")) == \
        "AuthFailure.SignatureFailure"
    assert raw_error_code(rawapi.tc3("ListFunctions", {}, secret_id="AKIDunknown")) == \
        "AuthFailure.SecretIdNotFound"
    assert raw_error_code(rawapi.v1("ListFunctions", {}, secret_id="AKIDunknown")) == \
        "AuthFailure.SecretIdNotFound"


def test_tampered_body_fails(rawapi):
    signed = json.dumps({"Limit": 1}).encode()
    sent = json.dumps({"Limit": 2}).encode()
    raw_ok(rawapi.tc3("ListFunctions", body=signed))
    assert raw_error_code(rawapi.tc3("ListFunctions", body=sent, sign_body=signed)) == \
        "AuthFailure.SignatureFailure"


def test_tampered_query_fails(rawapi):
    raw_ok(rawapi.tc3("ListFunctions", method="GET", query="Limit=1&Offset=0"))
    bad = rawapi.tc3("ListFunctions", method="GET", query="Limit=2&Offset=0",
                     sign_query="Limit=1&Offset=0")
    assert raw_error_code(bad) == "AuthFailure.SignatureFailure"


def test_raw_query_order_is_signed_as_sent(rawapi):
    """The Python SDK does not sort GET parameters (§2.3): the server must use the raw query."""
    raw_ok(rawapi.tc3("ListFunctions", method="GET", query="Offset=0&Limit=1&Order=DESC"))
    bad = rawapi.tc3("ListFunctions", method="GET", query="Offset=0&Limit=1&Order=DESC",
                     sign_query="Limit=1&Offset=0&Order=DESC")
    assert raw_error_code(bad) == "AuthFailure.SignatureFailure"


@pytest.mark.parametrize(
    "authorization",
    [
        "garbage",
        "TC3-HMAC-SHA256",
        "TC3-HMAC-SHA256 Credential=AKIDx",
        "TC3-HMAC-SHA256 Credential=AKIDnimbustest/2024-01-01/scf/tc3_request, "
        "SignedHeaders=content-type;host",
        "Basic dXNlcjpwYXNz",
    ],
    ids=["garbage", "algorithm-only", "credential-only", "no-signature", "basic"],
)
def test_malformed_authorization(rawapi, authorization):
    resp = rawapi.tc3("ListFunctions", {}, authorization=authorization)
    assert raw_error_code(resp) == "AuthFailure.InvalidAuthorization"


def test_no_signature_at_all_is_refused(rawapi):
    resp = rawapi.tc3("ListFunctions", {}, drop_headers=("Authorization",))
    assert_code_startswith(raw_error_code(resp), "AuthFailure", "MissingParameter")


def test_node_sdk_style_signature_is_accepted(rawapi):
    """tencentcloud-sdk-nodejs signs the host without its port and puts `127` (the first label
    of the endpoint) in the credential scope (§5.5)."""
    hostname = rawapi.host.rsplit(":", 1)[0]
    raw_ok(rawapi.tc3("ListFunctions", {"Limit": 1}, sign_host=hostname, service="127"))
    raw_ok(rawapi.tc3("ListFunctions", {"Limit": 1}, method="GET", sign_host=hostname,
                      service="127"))
    assert raw_error_code(rawapi.tc3("ListFunctions", {"Limit": 1}, sign_host=hostname,
                                     service="127", key="wrong")) == \
        "AuthFailure.SignatureFailure"


def test_tccli_style_host_is_accepted(rawapi):
    """tccli sends and signs `Host: http://127.0.0.1:PORT` (§5.4)."""
    host = f"http://{rawapi.host}"
    raw_ok(rawapi.tc3("ListFunctions", {"Limit": 1}, host_header=host))
    assert raw_error_code(rawapi.tc3("ListFunctions", {"Limit": 1}, host_header=host,
                                     sign_host=rawapi.host + ".evil")) == \
        "AuthFailure.SignatureFailure"


# --------------------------------------------------------------------------------------------
# Action and parameter errors
# --------------------------------------------------------------------------------------------


def test_invalid_action(sdk, rawapi):
    assert sdk_code(sdk.error_json("NoSuchAction")) == "InvalidAction"
    assert raw_error_code(rawapi.tc3("DescribeInstances", {})) == "InvalidAction"
    assert raw_error_code(rawapi.v1("NoSuchAction", {})) == "InvalidAction"


def test_missing_parameter(sdk):
    params = create_params("x")
    del params["FunctionName"]
    assert_code_startswith(sdk_code(sdk.error("CreateFunction", **params)), "MissingParameter")
    assert_code_startswith(sdk_code(sdk.error("Invoke")), "MissingParameter")
    assert_code_startswith(sdk_code(sdk.error("GetFunction")), "MissingParameter")
    no_code = create_params(unique_name("nocode"))
    del no_code["Code"]
    assert sdk_code(sdk.error("CreateFunction", **no_code)) == "MissingParameter.Code"


def test_unknown_parameter(sdk, rawapi, echo):
    resp = rawapi.tc3("GetFunction", {"FunctionName": echo, "Bogus": 1})
    assert raw_error_code(resp) == "UnknownParameter"
    raw_ok(rawapi.tc3("GetFunction", {"FunctionName": echo}))
    assert sdk_code(sdk.error_json("ListFunctions", Bogus="x")) == "UnknownParameter"


@pytest.mark.parametrize("memory", [0, 100, 200, 3200, 4096])
def test_invalid_memory_size(sdk, memory):
    name = unique_name("mem")
    exc = sdk.error("CreateFunction", **create_params(name, MemorySize=memory))
    assert_code_startswith(sdk_code(exc), "InvalidParameterValue")
    assert sdk_code(sdk.error("GetFunction", FunctionName=name)) == "ResourceNotFound.Function"


@pytest.mark.parametrize("memory", [64, 128, 384, 3072])
def test_valid_memory_sizes(sdk, memory):
    name = unique_name("mem")
    sdk.create(name, py_zip(ECHO), MemorySize=memory)
    assert sdk.get(name)["MemorySize"] == memory
    sdk.delete(name)


@pytest.mark.parametrize("timeout", [0, 901])
def test_invalid_timeout(sdk, timeout):
    name = unique_name("tmo")
    exc = sdk.error("CreateFunction", **create_params(name, Timeout=timeout))
    assert_code_startswith(sdk_code(exc), "InvalidParameterValue", "LimitExceeded")
    assert sdk_code(sdk.error("GetFunction", FunctionName=name)) == "ResourceNotFound.Function"


@pytest.mark.parametrize("timeout", [1, 900])
def test_valid_timeouts(sdk, timeout):
    name = unique_name("tmo")
    sdk.create(name, py_zip(ECHO), Timeout=timeout)
    assert sdk.get(name)["Timeout"] == timeout
    sdk.delete(name)


def test_invalid_update_configuration(sdk, echo):
    before = sdk.get(echo)
    exc = sdk.error("UpdateFunctionConfiguration", FunctionName=echo, MemorySize=100)
    assert_code_startswith(sdk_code(exc), "InvalidParameterValue")
    assert sdk.get(echo)["MemorySize"] == before["MemorySize"]


@pytest.mark.parametrize(
    "changes",
    [
        {"FunctionName": "1starts-with-digit"},
        {"FunctionName": "ends-with-dash-"},
        {"Runtime": "Cobol85"},
        {"Handler": "nodot"},
    ],
    ids=["name-digit", "name-dash", "runtime", "handler"],
)
def test_invalid_create_parameters(sdk, changes):
    params = create_params(unique_name("inv"), **changes)
    exc = sdk.error("CreateFunction", **params)
    assert_code_startswith(sdk_code(exc), *INVALID)


def test_unknown_function(sdk):
    missing = unique_name("missing")
    for action, params in [
        ("GetFunction", {}),
        ("Invoke", {"ClientContext": "{}"}),
        ("InvokeFunction", {"Event": "{}"}),
        ("DeleteFunction", {}),
        ("UpdateFunctionConfiguration", {"Description": "x"}),
        ("UpdateFunctionCode", {"ZipFile": b64(py_zip(ECHO)), "Handler": "index.main_handler"}),
    ]:
        exc = sdk.error(action, FunctionName=missing, **params)
        assert sdk_code(exc) == "ResourceNotFound.Function", action
    exc = sdk.error("Invoke", FunctionName=missing, InvocationType="Event", ClientContext="{}")
    assert sdk_code(exc) == "ResourceNotFound.Function"


def test_create_twice(sdk):
    name = unique_name("twice")
    sdk.create(name, toolbox_zip(version=1))
    exc = sdk.error("CreateFunction", **create_params(name, toolbox_zip(version=2),
                                                     Description="second"))
    assert sdk_code(exc) == "ResourceInUse.Function"
    kept = sdk.get(name)
    assert kept["Description"] in ("", None)
    result = sdk.invoke(name, {"return": "count"})
    assert json.loads(result["RetMsg"])["version"] == 1


def test_code_not_a_zip(sdk):
    name = unique_name("nozip")
    exc = sdk.error("CreateFunction", **create_params(name, b"this is not a zip archive"))
    assert sdk_code(exc) == "InvalidParameterValue.ZipFile"
    assert sdk_code(sdk.error("GetFunction", FunctionName=name)) == "ResourceNotFound.Function"


def test_code_not_base64(sdk):
    params = create_params(unique_name("nob64"))
    params["Code"] = {"ZipFile": "%%%not base64%%%"}
    assert_code_startswith(sdk_code(sdk.error("CreateFunction", **params)), "InvalidParameterValue")


def test_update_code_not_a_zip(sdk, echo):
    exc = sdk.error("UpdateFunctionCode", FunctionName=echo, ZipFile=b64(b"not a zip"),
                    Handler="index.main_handler")
    assert sdk_code(exc) == "InvalidParameterValue.ZipFile"
    assert json.loads(sdk.invoke(echo, {"still": "works"})["RetMsg"]) == {"still": "works"}


def test_function_in_unknown_namespace(sdk):
    exc = sdk.error("CreateFunction", **create_params(unique_name("nsfn"),
                                                     Namespace=unique_name("nons")))
    assert sdk_code(exc) == "ResourceNotFound.Namespace"


def test_listing_an_unknown_namespace(sdk):
    exc = sdk.error("ListFunctions", Namespace=unique_name("nons"))
    assert sdk_code(exc) == "ResourceNotFound.Namespace"
    # An existing namespace without functions lists none.
    ns = unique_name("empty")
    sdk.call("CreateNamespace", Namespace=ns)
    assert sdk.call("ListFunctions", Namespace=ns)["TotalCount"] == 0


def test_create_namespace_twice(sdk):
    ns = unique_name("nst")
    sdk.call("CreateNamespace", Namespace=ns)
    assert sdk_code(sdk.error("CreateNamespace", Namespace=ns)) == "ResourceInUse.Namespace"
    sdk.call("DeleteNamespace", Namespace=ns)


def test_default_namespace_cannot_be_deleted(sdk):
    exc = sdk.error("DeleteNamespace", Namespace="default")
    assert_code_startswith(sdk_code(exc), "FailedOperation", "InvalidParameter")
    listed = sdk.call("ListNamespaces", Limit=100)
    assert "default" in [ns["Name"] for ns in listed["Namespaces"]]


def test_delete_unknown_namespace(sdk):
    exc = sdk.error("DeleteNamespace", Namespace=unique_name("gone"))
    assert_code_startswith(sdk_code(exc), "ResourceNotFound")


@pytest.mark.parametrize(
    "params",
    [
        {"ClientContext": "{not json"},
        {"ClientContext": "{}", "InvocationType": "Sometimes"},
        {"ClientContext": "{}", "LogType": "Everything"},
    ],
    ids=["client-context-not-json", "invocation-type", "log-type"],
)
def test_invalid_invoke_parameters(sdk, echo, params):
    before = logs_total(sdk, echo)
    exc = sdk.error("Invoke", FunctionName=echo, **params)
    assert_code_startswith(sdk_code(exc), *INVALID)
    assert logs_total(sdk, echo) == before


def test_invoke_function_event_not_json(sdk, echo):
    exc = sdk.error("InvokeFunction", FunctionName=echo, Event="{not json")
    assert_code_startswith(sdk_code(exc), *INVALID)


def test_async_client_context_limit(sdk, echo):
    """Async events are limited to 128 KB (sync ones to 6 MB)."""
    small = json.dumps({"s": "x" * (100 * 1024)})
    request_id = sdk.invoke_async(echo, small)
    assert sdk.wait_async(request_id)["Status"] == "FINISHED"
    big = json.dumps({"s": "x" * (130 * 1024)})
    exc = sdk.error("Invoke", FunctionName=echo, InvocationType="Event", ClientContext=big)
    assert_code_startswith(sdk_code(exc), "InvalidParameter", "LimitExceeded")


def test_sync_client_context_over_six_megabytes(sdk, echo):
    big = json.dumps({"return": "len", "s": "x" * (6 * 1024 * 1024 + 100)})
    exc = sdk.error("Invoke", FunctionName=echo, ClientContext=big)
    assert_code_startswith(sdk_code(exc), "InvalidParameter", "LimitExceeded",
                           "RequestSizeLimitExceeded")


def test_async_status_of_unknown_event(sdk):
    exc = sdk.error("GetAsyncEventStatus", InvokeRequestId="00000000-0000-4000-8000-000000000000")
    assert_code_startswith(sdk_code(exc), "ResourceNotFound")


def test_error_exception_carries_message_and_request_id(sdk):
    exc = sdk.error("GetFunction", FunctionName=unique_name("missing"))
    assert isinstance(exc.get_message(), str) and exc.get_message()
    assert_request_id(exc.get_request_id())
    assert "ResourceNotFound.Function" in str(exc)


def test_errors_do_not_leave_invocations(sdk, echo):
    """A refused Invoke records nothing; an accepted one does (positive control)."""
    before = logs_total(sdk, echo)
    sdk.error("Invoke", FunctionName=echo, ClientContext="[not json")
    result = sdk.invoke(echo, {"ok": 1})
    resp = poll_until(lambda: logs_total(sdk, echo), lambda total: total >= before + 1)
    assert resp == before + 1
    assert sdk.logs(echo, FunctionRequestId=result["FunctionRequestId"])["TotalCount"] == 1
