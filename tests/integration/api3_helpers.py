"""Helpers for the API 3.0 integration tests (SCF-API.md §2, §5.3-§5.5, §6).

* `Api3`: tencentcloud-sdk-python's real `ScfClient`, pointed at a local server, in each of the
  ways a user can configure it: TC3-HMAC-SHA256 over POST (the default) or GET, and signature v1
  (`ClientProfile(signMethod="HmacSHA256"|"HmacSHA1")`). Calls go through the SDK's own request
  and response models, so what the tests see is what an SDK user sees.
* `RawApi3`: an independent TC3 (and v1) signer, for requests the SDK will not send: an old
  timestamp, a malformed Authorization header, a tampered body, an unknown parameter...
* `Tccli`: runs the real `tccli` in a subprocess with its own temporary HOME.
* `NodeSdk`: runs tests/node/run.js (tencentcloud-sdk-nodejs-scf) in a subprocess.
"""

import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.scf.v20180416 import models, scf_client

from helpers import REGION, RawClient, b64, make_zip, sign_v1

VERSION = "2018-04-16"
SERVICE = "scf"
REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = REPO_ROOT / "tests" / "node"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
# ListAsyncEvents times are `%Y-%m-%d %H:%M:%S.%f` in SCF; accept them with or without fraction.
EVENT_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d+)?$")
ACTIVE_TIMEOUT_S = 30.0
ASYNC_TIMEOUT_S = 30.0

# The SDK honours HTTP_PROXY for plain-http endpoints unless the host is in NO_PROXY (§5.3).
for _var in ("NO_PROXY", "no_proxy"):
    _hosts = [h for h in os.environ.get(_var, "").split(",") if h]
    if "127.0.0.1" not in _hosts:
        os.environ[_var] = ",".join(_hosts + ["127.0.0.1", "localhost"])


# --------------------------------------------------------------------------------------------
# tencentcloud-sdk-python
# --------------------------------------------------------------------------------------------

# (id, reqMethod, signMethod): the configurations a test can ask for.
SDK_VARIANTS = {
    "tc3-post": ("POST", "TC3-HMAC-SHA256"),
    "tc3-get": ("GET", "TC3-HMAC-SHA256"),
    "v1-sha256-post": ("POST", "HmacSHA256"),
    "v1-sha1-get": ("GET", "HmacSHA1"),
}


class Api3:
    """tencentcloud-sdk-python's ScfClient bound to one server; answers plain dicts (the
    response model serialised back to JSON: absent fields come back as None)."""

    def __init__(self, host, secret_id, secret_key, method="POST", sign_method="TC3-HMAC-SHA256",
                 region=REGION):
        self.host = host
        self.secret_id = secret_id
        self.secret_key = secret_key
        self.method = method
        self.sign_method = sign_method
        http_profile = HttpProfile(protocol="http", endpoint=host, reqMethod=method, reqTimeout=120)
        profile = ClientProfile(httpProfile=http_profile, signMethod=sign_method)
        self.client = scf_client.ScfClient(
            credential.Credential(secret_id, secret_key), region, profile
        )

    @classmethod
    def for_server(cls, server, variant="tc3-post", secret_id=None, secret_key=None):
        method, sign_method = SDK_VARIANTS[variant]
        return cls(server.host, secret_id or server.secret_id, secret_key or server.secret_key,
                   method=method, sign_method=sign_method)

    def call(self, action, **params):
        """Calls `action` through its request/response models, e.g. `call("GetFunction",
        FunctionName="f")`; raises TencentCloudSDKException on an error envelope."""
        request = getattr(models, action + "Request")()
        request.from_json_string(json.dumps(params))
        response = getattr(self.client, action)(request)
        return json.loads(response.to_json_string())

    def call_json(self, action, **params):
        """The raw `{"Response": ...}` through the SDK's generic `call_json` (any action, any
        parameter, still signed by the SDK)."""
        return self.client.call_json(action, params)

    def error(self, action, **params):
        """Calls `action`, which must fail; answers the SDK exception."""
        try:
            resp = self.call(action, **params)
        except TencentCloudSDKException as exc:
            return exc
        raise AssertionError(f"{action} {params!r} succeeded: {resp!r}")

    def error_json(self, action, **params):
        try:
            resp = self.call_json(action, **params)
        except TencentCloudSDKException as exc:
            return exc
        raise AssertionError(f"{action} {params!r} succeeded: {resp!r}")

    # -- functions ------------------------------------------------------------------------------

    def create(self, name, code_zip, handler="index.main_handler", runtime="Python3.9",
               wait=True, **params):
        resp = self.call(
            "CreateFunction",
            FunctionName=name,
            Code={"ZipFile": b64(code_zip)},
            Handler=handler,
            Runtime=runtime,
            **params,
        )
        if wait:
            self.wait_active(name, namespace=params.get("Namespace"))
        return resp

    def get(self, name, **params):
        return self.call("GetFunction", FunctionName=name, **params)

    def wait_active(self, name, namespace=None, timeout=ACTIVE_TIMEOUT_S):
        """Polls GetFunction until Status is Active (bounded); answers the last GetFunction."""
        extra = {"Namespace": namespace} if namespace else {}
        resp = poll_until(lambda: self.get(name, **extra), lambda r: r["Status"] != "Creating"
                          and r["Status"] != "Updating", timeout=timeout)
        assert resp["Status"] == "Active", f"function {name} is not Active: {resp!r}"
        return resp

    def list(self, **params):
        return self.call("ListFunctions", **params)

    def delete(self, name, **params):
        return self.call("DeleteFunction", FunctionName=name, **params)

    def update_code(self, name, code_zip, wait=True, **params):
        resp = self.call("UpdateFunctionCode", FunctionName=name, ZipFile=b64(code_zip), **params)
        if wait:
            self.wait_active(name, namespace=params.get("Namespace"))
        return resp

    def update_config(self, name, wait=True, **params):
        resp = self.call("UpdateFunctionConfiguration", FunctionName=name, **params)
        if wait:
            self.wait_active(name, namespace=params.get("Namespace"))
        return resp

    # -- invocations ----------------------------------------------------------------------------

    def invoke(self, name, event=None, **params):
        """Invoke; answers `Result`."""
        if event is not None:
            params["ClientContext"] = event if isinstance(event, str) else json.dumps(event)
        return self.call("Invoke", FunctionName=name, **params)["Result"]

    def invoke_function(self, name, event=None, **params):
        """InvokeFunction; answers `Result`."""
        if event is not None:
            params["Event"] = event if isinstance(event, str) else json.dumps(event)
        return self.call("InvokeFunction", FunctionName=name, **params)["Result"]

    def invoke_async(self, name, event=None, **params):
        """Invoke with InvocationType=Event; answers the invoke request id."""
        result = self.invoke(name, event, InvocationType="Event", **params)
        request_id = result["FunctionRequestId"]
        assert isinstance(request_id, str) and request_id, result
        return request_id

    def logs(self, name, **params):
        return self.call("GetFunctionLogs", FunctionName=name, **params)

    def async_status(self, request_id):
        return self.call("GetAsyncEventStatus", InvokeRequestId=request_id)["Result"]

    def wait_async(self, request_id, statuses=("FINISHED", "FAILED", "ABORTED"),
                   timeout=ASYNC_TIMEOUT_S):
        result = poll_until(lambda: self.async_status(request_id),
                            lambda r: r["Status"] in statuses, timeout=timeout)
        assert result["Status"] in statuses, f"async event still {result!r}"
        return result

    def finished_log(self, name, request_id, timeout=ASYNC_TIMEOUT_S, **params):
        """The GetFunctionLogs record of `request_id`, once it is finished (bounded wait)."""

        def done(resp):
            return resp["TotalCount"] >= 1 and resp["Data"][0]["InvokeFinished"] == 1

        resp = poll_until(lambda: self.logs(name, FunctionRequestId=request_id, **params), done,
                          timeout=timeout)
        assert resp["TotalCount"] == 1, resp
        entry = resp["Data"][0]
        assert entry["RequestId"] == request_id, entry
        assert entry["InvokeFinished"] == 1, entry
        return entry


def sdk_code(exc):
    """The error code carried by an SDK exception (both accessors must agree)."""
    assert isinstance(exc, TencentCloudSDKException), exc
    assert exc.code == exc.get_code()
    return exc.code


def poll_until(fetch, done, timeout=10.0, interval=0.1):
    """Calls `fetch()` until `done(result)` or the timeout; answers the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if done(result) or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


def assert_request_id(value):
    assert isinstance(value, str) and UUID_RE.match(value), f"not a uuid RequestId: {value!r}"


def assert_code_startswith(code, *prefixes):
    """`code` (an API 3.0 error code) starts with one of `prefixes`."""
    assert isinstance(code, str) and code, code
    assert code.startswith(prefixes), f"error code {code!r} does not start with any of {prefixes}"


# --------------------------------------------------------------------------------------------
# Raw TC3-HMAC-SHA256 and v1 (independent of the SDKs), for negative tests
# --------------------------------------------------------------------------------------------


def _hmac256(key, msg):
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def tc3_signature(secret_key, timestamp, service, canonical_request, date=None):
    """Steps 2-5 of SCF-API.md §2.3: the lowercase hex signature and the credential scope
    (whose date is the timestamp's unless given)."""
    date = date or datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d")
    scope = f"{date}/{service}/tc3_request"
    digest = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    string_to_sign = f"TC3-HMAC-SHA256\n{timestamp}\n{scope}\n{digest}"
    k_date = _hmac256(("TC3" + secret_key).encode("utf-8"), date)
    k_service = _hmac256(k_date, service)
    k_signing = _hmac256(k_service, "tc3_request")
    signature = hmac.new(k_signing, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    return signature, scope


def tc3_canonical_request(method, query, content_type, host, payload):
    payload_hash = hashlib.sha256(payload).hexdigest()
    headers = f"content-type:{content_type}\nhost:{host}\n"
    return f"{method}\n/\n{query}\n{headers}\ncontent-type;host\n{payload_hash}"


class RawApi3:
    """Hand-built API 3.0 requests: every part of the signature can be chosen or broken."""

    def __init__(self, host, secret_id, secret_key):
        self.host = host
        self.secret_id = secret_id
        self.secret_key = secret_key
        self._raw = RawClient(host, secret_id, secret_key)

    @classmethod
    def for_server(cls, server):
        return cls(server.host, server.secret_id, server.secret_key)

    def tc3(self, action, params=None, method="POST", body=None, query=None, timestamp=None,
            key=None, secret_id=None, service=SERVICE, sign_host=None, host_header=None,
            authorization=None, extra_headers=None, drop_headers=(), version=VERSION,
            region=REGION, sign_body=None, sign_query=None, scope_date=None):
        """Sends a TC3-signed request. `params` becomes the JSON body (POST) or the query (GET,
        in the given order); `body`/`query` give the exact bytes instead. `sign_body` signs other
        bytes than those sent (`sign_query`, another query); `authorization` replaces the header; `drop_headers` removes some."""
        method = method.upper()
        params = params or {}
        if method == "POST":
            content_type = "application/json"
            if body is None:
                body = json.dumps(params)
            body = body.encode("utf-8") if isinstance(body, str) else body
            query = ""
        else:
            content_type = "application/x-www-form-urlencoded"
            if query is None:
                from urllib.parse import urlencode
                query = urlencode(params)
            body = b""
        timestamp = int(time.time()) if timestamp is None else int(timestamp)
        host_header = host_header or self.host
        signed_payload = body if sign_body is None else sign_body
        canonical = tc3_canonical_request(method, query if sign_query is None else sign_query,
                                          content_type, sign_host or host_header, signed_payload)
        signature, scope = tc3_signature(key or self.secret_key, timestamp, service, canonical,
                                         date=scope_date)
        headers = {
            "Host": host_header,
            "Content-Type": content_type,
            "X-TC-Action": action,
            "X-TC-Version": version,
            "X-TC-Timestamp": str(timestamp),
            "X-TC-Region": region,
            "Authorization": authorization if authorization is not None else (
                f"TC3-HMAC-SHA256 Credential={secret_id or self.secret_id}/{scope}, "
                f"SignedHeaders=content-type;host, Signature={signature}"
            ),
        }
        headers.update(extra_headers or {})
        for name in drop_headers:
            headers.pop(name, None)
        target = "/" + (f"?{query}" if query else "")
        return self._raw.send_raw(method, target, body if method == "POST" else None, headers)

    def v1(self, action, params=None, method="GET", timestamp=None, key=None, secret_id=None,
           signature_method="HmacSHA256"):
        """Sends a signature-v1 request to `/` (SCF-API.md §2.4)."""
        all_params = {
            "Action": action,
            "Version": VERSION,
            "Region": REGION,
            "SecretId": secret_id or self.secret_id,
            "Nonce": int.from_bytes(os.urandom(4), "big") + 1,
            "Timestamp": int(time.time()) if timestamp is None else int(timestamp),
            "SignatureMethod": signature_method,
        }
        all_params.update(params or {})
        all_params["Signature"] = sign_v1(all_params, key or self.secret_key, method, self.host,
                                          path="/")
        return self._raw.send(method, all_params, path="/")


def envelope(resp):
    """Checks the transport rules of every API 3.0 answer (HTTP 200, Content-Type exactly
    application/json, a `Response` object with a uuid RequestId) and answers `Response`."""
    assert resp.status == 200, (resp.status, resp.body[:500])
    assert resp.headers.get("content-type") == "application/json", resp.headers
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"Response"}, body
    inner = body["Response"]
    assert_request_id(inner.get("RequestId"))
    return inner


def raw_error_code(resp):
    """The Error.Code of an error envelope (checking its shape)."""
    inner = envelope(resp)
    assert "Error" in inner, f"expected an error, got {inner!r}"
    error = inner["Error"]
    assert isinstance(error.get("Code"), str) and error["Code"], error
    assert isinstance(error.get("Message"), str) and error["Message"], error
    return error["Code"]


def raw_ok(resp):
    inner = envelope(resp)
    assert "Error" not in inner, f"expected success, got {inner!r}"
    return inner


# --------------------------------------------------------------------------------------------
# tccli
# --------------------------------------------------------------------------------------------


def tccli_bin():
    found = Path(sys.executable).parent / "tccli"
    if found.exists():
        return str(found)
    which = shutil.which("tccli")
    assert which, "tccli is not installed (pip install -r tests/requirements.txt)"
    return which


class TccliResult:
    def __init__(self, proc):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def json(self):
        assert self.returncode == 0, f"tccli failed ({self.returncode}): {self.stderr}{self.stdout}"
        return json.loads(self.stdout)

    @property
    def error_code(self):
        """The code tccli reports for a TencentCloudSDKException (exit status 255)."""
        assert self.returncode != 0, f"tccli succeeded: {self.stdout}"
        match = re.search(r"code:(\S+)", self.stderr)
        assert match, f"no error code in tccli's output: {self.stderr!r}"
        return match.group(1)


class Tccli:
    """Runs `tccli scf <Action> ...` against a server, with HOME in a temporary directory
    (tccli writes ~/.tccli on every run). `close()` removes that directory."""

    def __init__(self, server, secret_id=None, secret_key=None):
        self.server = server
        self.secret_id = secret_id or server.secret_id
        self.secret_key = secret_key or server.secret_key
        self.home = tempfile.mkdtemp(prefix="nimbus-tccli-home-")

    def close(self):
        shutil.rmtree(self.home, ignore_errors=True)

    def args_for(self, params):
        args = []
        for key, value in params.items():
            if isinstance(value, (dict, list)):
                value = json.dumps(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            args += [f"--{key}", str(value)]
        return args

    def run(self, action, params=None, extra_args=(), secret_key=None, secret_id=None,
            endpoint=None, timeout=120):
        cmd = [
            tccli_bin(), "scf", action, *self.args_for(params or {}), *extra_args,
            "--endpoint", endpoint or self.server.endpoint,
            "--secretId", secret_id or self.secret_id,
            "--secretKey", secret_key or self.secret_key,
            "--region", REGION,
        ]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TENCENTCLOUD_", "NIMBUS_")) and k.lower() not in (
                   "http_proxy", "https_proxy", "all_proxy")}
        env["HOME"] = self.home
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        return TccliResult(proc)

    def call(self, action, **params):
        return self.run(action, params).json()


# --------------------------------------------------------------------------------------------
# tencentcloud-sdk-nodejs-scf (tests/node/run.js)
# --------------------------------------------------------------------------------------------


class NodeSdk:
    """Runs `node tests/node/run.js <port> <secretId> <secretKey> <scenario>` with a JSON input
    on stdin; answers the JSON the script prints (its last stdout line)."""

    def __init__(self, server, secret_id=None, secret_key=None):
        self.server = server
        self.secret_id = secret_id or server.secret_id
        self.secret_key = secret_key or server.secret_key

    @staticmethod
    def check_installed():
        node = shutil.which("node")
        assert node, "node is not on PATH"
        if not (NODE_DIR / "node_modules" / "tencentcloud-sdk-nodejs-scf").is_dir():
            raise AssertionError(
                "tencentcloud-sdk-nodejs-scf is not installed: run `npm ci --prefix tests/node`"
            )
        return node

    def run(self, scenario, payload=None, secret_key=None, secret_id=None, timeout=180):
        node = self.check_installed()
        cmd = [node, str(NODE_DIR / "run.js"), str(self.server.port),
               secret_id or self.secret_id, secret_key or self.secret_key, scenario]
        env = {k: v for k, v in os.environ.items() if k.lower() not in (
            "http_proxy", "https_proxy", "all_proxy")}
        proc = subprocess.run(cmd, input=json.dumps(payload or {}), capture_output=True,
                              text=True, timeout=timeout, cwd=str(NODE_DIR), env=env)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        assert proc.returncode == 0 and lines, (
            f"run.js {scenario} exited {proc.returncode}\nstdout: {proc.stdout}\n"
            f"stderr: {proc.stderr}"
        )
        return json.loads(lines[-1])

    def call(self, action, params=None, profile=None, secret_key=None, secret_id=None):
        """One SDK call; answers {"ok": true, "response": {...}} or {"ok": false, "code", ...}."""
        return self.run("call", {"action": action, "params": params or {},
                                 "profile": profile or {}},
                        secret_key=secret_key, secret_id=secret_id)


# --------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------

NODE_HANDLER = r"""
exports.main_handler = async (event, context) => {
  console.log("node-marker " + (event.marker || ""));
  if (event.raise) {
    throw new Error(event.raise);
  }
  if (event.sleep) {
    await new Promise((resolve) => setTimeout(resolve, event.sleep * 1000));
  }
  return {
    got: event,
    function_name: context.function_name,
    namespace: context.namespace,
    memory_limit_in_mb: context.memory_limit_in_mb,
    greeting: process.env.GREETING || null,
    node: process.version,
  };
};
"""


def node_zip(source=NODE_HANDLER, filename="index.js"):
    return make_zip({filename: source})
