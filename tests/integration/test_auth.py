"""Signature v1 on the legacy path: what is accepted, what is refused, and with which code."""

import time
import urllib.parse

import pytest

from helpers import (
    ECHO,
    assert_error,
    assert_ok,
    b64,
    py_zip,
    sign_v1,
    unique_name,
)

AUTH_FAILURE = "AuthFailure"
MISSING = "MissingParameter"


def test_raw_signer_matches_the_official_vectors():
    # Guards the test helper itself: the negative tests below rely on it.
    params = {
        "Action": "DescribeInstances",
        "Nonce": "11886",
        "Region": "gz",
        "SecretId": "AKIDz8krbsJ5yKBZQpn74WFkmLPx3gnPhESA",
        "SignatureMethod": "HmacSHA256",
        "Timestamp": "1465185768",
        "instanceIds.0": "ins-09dx96dg",
        "limit": "20",
        "offset": "0",
    }
    key = "Gu5t9xGARNpq86cd98joQYCN3Cozk1qA"
    host, path = "cvm.api.qcloud.com", "/v2/index.php"
    assert sign_v1(params, key, "GET", host, path) == "PSWUwVv4TfW2sQP1FT9KbbLjIZ9bmK8f1cL6fbpf3KI="
    del params["SignatureMethod"]
    assert sign_v1(params, key, "GET", host, path) == "NSI3UqqD99b/UJb4tbG/xZpRW64="


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("signature_method", ["HmacSHA1", "HmacSHA256"])
def test_sdk_requests_are_accepted(server, method, signature_method):
    client = server.legacy(method=method, signature_method=signature_method)
    resp = assert_ok(client.list())
    assert resp["codeDesc"] == "Success"
    assert isinstance(resp["data"]["functions"], list)
    assert isinstance(resp["data"]["total"], int)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_raw_request_without_signature_method_uses_sha1(raw, method):
    params = raw.common("ListFunctions")
    assert "SignatureMethod" not in params
    params["Signature"] = sign_v1(params, raw.secret_key, method, raw.host)
    assert_ok(raw.send(method, params).json())


def test_signature_method_other_than_exact_hmacsha256_means_sha1(raw):
    params = raw.common("ListFunctions", SignatureMethod="hmacsha256")
    params["Signature"] = sign_v1(params, raw.secret_key, "GET", raw.host)  # SHA-1 by the rules
    assert_ok(raw.send("GET", params).json())


def test_sha256_signature_is_checked_with_sha256(raw):
    params = raw.common("ListFunctions", SignatureMethod="HmacSHA256")
    sha1_params = dict(params, SignatureMethod="HmacSHA1")
    # A SHA-1 signature while claiming HmacSHA256 must not verify.
    params["Signature"] = sign_v1(sha1_params, raw.secret_key, "GET", raw.host)
    assert_error(raw.send("GET", params).json(), 4100, AUTH_FAILURE)


def test_errors_are_http_200_with_json_content_type(raw):
    params = raw.signed("ListFunctions", key="not-the-key")
    resp = raw.send("GET", params)
    assert resp.status == 200
    assert resp.content_type.split(";")[0].strip() == "application/json"
    assert_error(resp.json(), 4100, "AuthFailure.SignatureFailure")


def test_success_has_json_content_type(raw):
    resp = raw.send("GET", raw.signed("ListFunctions"))
    assert resp.status == 200
    assert resp.content_type.split(";")[0].strip() == "application/json"
    assert_ok(resp.json())


def test_wrong_secret_key_via_sdk_is_refused(server):
    client = server.legacy(secret_key=server.secret_key + "x")
    assert_error(client.list(), 4100, "AuthFailure.SignatureFailure")


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_tampered_parameter_is_refused(raw, method):
    params = raw.signed("ListFunctions", method=method, limit=5)
    params["limit"] = 6
    assert_error(raw.send(method, params).json(), 4100, "AuthFailure.SignatureFailure")


def test_host_with_port_is_part_of_the_string_to_sign(raw):
    hostname = raw.host.split(":")[0]
    for wrong_host in (hostname, f"{hostname}:1", "scf.api.qcloud.com"):
        params = raw.signed("ListFunctions", sign_host=wrong_host)
        assert_error(raw.send("GET", params).json(), 4100, AUTH_FAILURE)


def test_method_is_part_of_the_string_to_sign(raw):
    params = raw.signed("ListFunctions", method="POST")
    assert_error(raw.send("GET", params).json(), 4100, AUTH_FAILURE)


def test_path_is_part_of_the_string_to_sign(raw):
    params = raw.common("ListFunctions")
    params["Signature"] = sign_v1(params, raw.secret_key, "GET", raw.host, path="/")
    assert_error(raw.send("GET", params).json(), 4100, AUTH_FAILURE)


def test_unknown_secret_id_is_refused(server):
    client = server.legacy(secret_id="AKIDdoesnotexist0000")
    assert_error(client.list(), 4104, "AuthFailure.SecretIdNotFound")


@pytest.mark.parametrize("missing", ["SecretId", "Timestamp", "Nonce"])
def test_missing_common_parameter(raw, missing):
    params = raw.common("ListFunctions")
    del params[missing]
    params["Signature"] = sign_v1(params, raw.secret_key, "GET", raw.host)
    assert_error(raw.send("GET", params).json(), 4000, MISSING)


def test_missing_signature(raw):
    params = raw.common("ListFunctions")
    resp = raw.send("GET", params).json()
    assert resp["code"] in (4000, 4100), resp
    assert resp["codeDesc"].startswith((MISSING, AUTH_FAILURE)), resp


def test_missing_action(raw):
    params = raw.common("ListFunctions")
    del params["Action"]
    params["Signature"] = sign_v1(params, raw.secret_key, "GET", raw.host)
    assert_error(raw.send("GET", params).json(), 4000, MISSING, "InvalidAction")


def test_unknown_action(raw):
    params = raw.signed("NoSuchAction")
    assert_error(raw.send("GET", params).json(), 4000, "InvalidAction")


@pytest.mark.parametrize("offset_s", [-3 * 3600, 3 * 3600])
def test_timestamp_outside_two_hours_is_refused(raw, offset_s):
    params = raw.signed("ListFunctions", Timestamp=int(time.time()) + offset_s)
    assert_error(raw.send("GET", params).json(), 4200, AUTH_FAILURE)


@pytest.mark.parametrize("offset_s", [-3600, 3600])
def test_timestamp_inside_two_hours_is_accepted(raw, offset_s):
    params = raw.signed("ListFunctions", Timestamp=int(time.time()) + offset_s)
    assert_ok(raw.send("GET", params).json())


def test_non_numeric_timestamp_is_refused(raw):
    params = raw.signed("ListFunctions", Timestamp="yesterday")
    resp = raw.send("GET", params).json()
    assert resp["code"] in (4000, 4200), resp


def test_replayed_get_url_is_refused(raw):
    query = urllib.parse.urlencode(raw.signed("ListFunctions"))
    first = raw.send_raw("GET", f"/v2/index.php?{query}").json()
    second = raw.send_raw("GET", f"/v2/index.php?{query}").json()
    assert_ok(first)
    assert_error(second, 4500, AUTH_FAILURE)


def test_replayed_post_body_is_refused(raw):
    params = raw.signed("ListFunctions", method="POST")
    assert_ok(raw.send("POST", params).json())
    assert_error(raw.send("POST", params).json(), 4500, AUTH_FAILURE)


def test_largest_nonce_is_accepted(raw):
    # qcloudapi-sdk-python draws nonces up to 2^63-1.
    params = raw.signed("ListFunctions", Nonce=2**63 - 1)
    assert_ok(raw.send("GET", params).json())


def test_post_value_starting_with_at_is_not_signed(server, api, raw):
    name = unique_name()
    code = "@" + b64(py_zip(ECHO))
    params = raw.common(
        "CreateFunction", functionName=name, handler="index.main_handler", code=code
    )
    params["Signature"] = sign_v1(params, raw.secret_key, "POST", raw.host)
    assert_ok(raw.send("POST", params).json())
    assert_ok(api.get(name))


def test_failed_authentication_changes_nothing(api, raw):
    name = unique_name()
    params = raw.signed(
        "CreateFunction",
        method="POST",
        key="wrong-key",
        functionName=name,
        handler="index.main_handler",
        code=b64(py_zip(ECHO)),
    )
    assert_error(raw.send("POST", params).json(), 4100, AUTH_FAILURE)
    assert_error(api.get(name), 5000, "ResourceNotFound")


def test_values_with_spaces_and_unicode_verify(api_get, api):
    # urlencode turns spaces into '+'; the signature covers the decoded value (UTF-8).
    name = unique_name()
    description = "a b+c&d=e %20 é 世界"
    assert_ok(api.create(name, py_zip(ECHO), description=description))
    got = assert_ok(api_get.get(name))
    assert got["data"]["description"] == description
