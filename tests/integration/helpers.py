"""Helpers shared by the integration tests: the legacy SDK client, a raw v1 signer, zips, names.

The qcloudapi-sdk-python client (recipe A of SCF-API.md §5.1) is the main path. The raw signer
is a small independent implementation of signature v1 (§1.3), used only where a test needs to
send something the SDK cannot: a wrong signature, an old timestamp, a replayed URL, a missing
common parameter.
"""

import base64
import hashlib
import hmac
import http.client
import io
import json
import random
import re
import time
import urllib.parse
import uuid
import zipfile

import QcloudApi.common.request as qcloud_request
from QcloudApi.modules.scf import Scf
from QcloudApi.qcloudapi import QcloudApi

LEGACY_PATH = "/v2/index.php"
REGION = "ap-guangzhou"
DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


# --------------------------------------------------------------------------------------------
# qcloudapi-sdk-python, pointed at a plain-HTTP local endpoint (recipe A)
# --------------------------------------------------------------------------------------------


class _PlainConnection(http.client.HTTPConnection):
    """Stands in for the SDK's HTTPS connection class; keeps the attribute the SDK reads."""

    def __init__(self, host, port=None):
        super().__init__(host, port)
        self.request_length = 0


qcloud_request.MyHTTPSConnection = _PlainConnection


class Legacy:
    """A legacy API 2.0 client built on qcloudapi-sdk-python 2.0.15; answers parsed JSON."""

    def __init__(self, host, secret_id, secret_key, method="POST", signature_method="HmacSHA1"):
        self.host = host
        self.config = {
            "Region": REGION,
            "secretId": secret_id,
            "secretKey": secret_key,
            "method": method,
            "SignatureMethod": signature_method,
        }

    def call(self, action, params=None, **more):
        # `Scf.requestHost` is a class attribute that wins over config['endpoint'] (§5.1); set it
        # on every call because several servers may be alive in one session.
        Scf.requestHost = self.host
        all_params = dict(params or {})
        all_params.update(more)
        raw = QcloudApi("scf", dict(self.config)).call(action, all_params, req_timeout=120)
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8")
        return json.loads(raw)

    # Thin wrappers for the actions, so tests read like the API.

    def create(self, name, code_zip, handler="index.main_handler", at_prefix=True, **params):
        code = b64(code_zip)
        return self.call(
            "CreateFunction",
            params,
            functionName=name,
            code=("@" + code) if at_prefix else code,
            handler=handler,
        )

    def update(self, name, **params):
        if "code_zip" in params:
            params["code"] = "@" + b64(params.pop("code_zip"))
        return self.call("UpdateFunction", params, functionName=name)

    def get(self, name, **params):
        return self.call("GetFunction", params, functionName=name)

    def list(self, **params):
        return self.call("ListFunctions", params)

    def delete(self, name):
        return self.call("DeleteFunction", functionName=name)

    def invoke(self, name, event=None, **params):
        if event is not None:
            params["param"] = event if isinstance(event, str) else json.dumps(event)
        return self.call("InvokeFunction", params, functionName=name)

    def logs(self, name, **params):
        return self.call("GetFunctionLogs", params, functionName=name)


# --------------------------------------------------------------------------------------------
# Raw signature v1 (independent of the SDK)
# --------------------------------------------------------------------------------------------


def sign_v1(params, secret_key, method, host, path=LEGACY_PATH):
    """Signature v1 of SCF-API.md §1.3 over decoded `params` (the `Signature` entry is ignored)."""
    method = method.upper()
    signed = {}
    for name, value in params.items():
        value = str(value)
        if name == "Signature" or (method == "POST" and value.startswith("@")):
            continue
        signed[name.replace("_", ".")] = value
    joined = "&".join(f"{name}={signed[name]}" for name in sorted(signed))
    message = f"{method}{host}{path}?{joined}".encode("utf-8")
    digest = hashlib.sha256 if params.get("SignatureMethod") == "HmacSHA256" else hashlib.sha1
    mac = hmac.new(secret_key.encode("utf-8"), message, digest).digest()
    return base64.b64encode(mac).decode("ascii")


class RawResponse:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def content_type(self):
        return self.headers.get("content-type", "")

    def json(self):
        return json.loads(self.body.decode("utf-8"))


class RawClient:
    """Builds and sends hand-signed legacy requests with full control over every parameter."""

    def __init__(self, host, secret_id, secret_key):
        self.host = host
        self.secret_id = secret_id
        self.secret_key = secret_key

    def common(self, action, **params):
        """Action params plus the common ones (no Signature yet)."""
        base = {
            "Action": action,
            "Region": REGION,
            "SecretId": self.secret_id,
            "Nonce": random.randint(1, 2**63 - 1),
            "Timestamp": int(time.time()),
        }
        base.update(params)
        return base

    def signed(self, action, method="GET", key=None, sign_host=None, **params):
        """Common + action params, signed for `method` (optionally with another key or host)."""
        all_params = self.common(action, **params)
        all_params["Signature"] = sign_v1(
            all_params, key or self.secret_key, method, sign_host or self.host
        )
        return all_params

    def send(self, method, params, path=LEGACY_PATH):
        body = urllib.parse.urlencode(params)
        if method.upper() == "GET":
            return self.send_raw("GET", f"{path}?{body}")
        return self.send_raw(
            "POST", path, body, {"Content-Type": "application/x-www-form-urlencoded"}
        )

    def send_raw(self, method, target, body=None, headers=None):
        hostname, port = self.host.rsplit(":", 1)
        conn = http.client.HTTPConnection(hostname, int(port), timeout=60)
        try:
            conn.request(method, target, body, headers or {})
            resp = conn.getresponse()
            data = resp.read()
            found = {k.lower(): v for k, v in resp.getheaders()}
            return RawResponse(resp.status, found, data)
        finally:
            conn.close()

    def call(self, action, method="GET", **params):
        """Sign correctly, send, and parse: for requests that should pass authentication."""
        resp = self.send(method, self.signed(action, method=method, **params))
        assert resp.status == 200, resp.body
        return resp.json()


# --------------------------------------------------------------------------------------------
# Assertions on envelopes
# --------------------------------------------------------------------------------------------


def assert_ok(resp):
    assert isinstance(resp, dict), resp
    assert resp.get("code") == 0, f"expected success, got {resp!r}"
    return resp


def assert_error(resp, code, *desc_prefixes):
    """Asserts the envelope's code and that codeDesc starts with one of the given prefixes."""
    assert isinstance(resp, dict), resp
    assert resp.get("code") == code, f"expected code {code}, got {resp!r}"
    assert "message" in resp, resp
    desc = resp.get("codeDesc", "")
    assert isinstance(desc, str), resp
    if desc_prefixes:
        assert desc.startswith(tuple(desc_prefixes)), (
            f"codeDesc {desc!r} does not start with any of {desc_prefixes}: {resp!r}"
        )
    return resp


def invoke_data(resp):
    """The `data` of a successful-at-API-level InvokeFunction answer."""
    assert_ok(resp)
    data = resp.get("data")
    assert isinstance(data, dict), resp
    return data


# --------------------------------------------------------------------------------------------
# Code packages and names
# --------------------------------------------------------------------------------------------


def make_zip(files, compression=zipfile.ZIP_DEFLATED):
    """A zip (bytes) holding `files`: {archive name: str or bytes}."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, content in files.items():
            if isinstance(content, str):
                content = content.encode("utf-8")
            zf.writestr(name, content)
    return buf.getvalue()


def py_zip(source, filename="index.py", extra=None):
    files = {filename: source}
    files.update(extra or {})
    return make_zip(files)


def b64(data):
    return base64.b64encode(data).decode("ascii")


def unique_name(prefix="fn"):
    """A valid, unique function name (letter first, 2-60 chars, no trailing - or _)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def poll(fetch, done, timeout=10.0, interval=0.1):
    """Calls `fetch()` until `done(result)` or the timeout; answers the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if done(result) or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


UNFINISHED_STATUSES = {"RUNNING", "PENDING", "QUEUED", "WAITING", "ACCEPTED"}


def finished_log(api, name, request_id, timeout=15.0):
    """Polls GetFunctionLogs for `request_id` until its record exists and is no longer in
    progress (a record may show up while the run is still going, with a RUNNING status)."""

    def done(resp):
        return resp["total"] >= 1 and resp["data"][0].get("status") not in UNFINISHED_STATUSES

    resp = poll(lambda: assert_ok(api.logs(name, requestId=request_id)), done, timeout=timeout)
    assert resp["total"] == 1, resp
    entry = resp["data"][0]
    assert entry.get("status") not in UNFINISHED_STATUSES, f"still unfinished: {entry!r}"
    return entry


# --------------------------------------------------------------------------------------------
# Handlers used across test files
# --------------------------------------------------------------------------------------------

ECHO = """
def main_handler(event, context):
    return event
"""

# One handler with behaviours selected by the event, so one function serves several checks.
TOOLBOX = r"""
import json
import os
import sys
import time

COUNT = 0


def main_handler(event, context):
    global COUNT
    COUNT += 1
    if "print" in event:
        print(event["print"])
        sys.stdout.flush()
    for i in range(event.get("print_lines", 0)):
        print("line-%05d %s" % (i, "x" * 60))
    if "sleep" in event:
        time.sleep(event["sleep"])
    if "raise" in event:
        raise ValueError(event["raise"])
    what = event.get("return", "event")
    if what == "count":
        return {"count": COUNT, "version": VERSION}
    if what == "context":
        keys = ["request_id", "function_name", "namespace", "memory_limit_in_mb",
                "time_limit_in_ms", "function_version", "environment", "environ"]
        names = event.get("env", [])
        return {
            "context": {k: context.get(k) for k in keys},
            "context_keys": sorted(context.keys()),
            "env": {k: os.environ.get(k) for k in names},
        }
    if what == "string":
        return event.get("value", "hi")
    if what == "len":
        return len(event.get("s", ""))
    return event


VERSION = 1
"""


def toolbox_zip(version=1):
    return py_zip(TOOLBOX.replace("VERSION = 1", f"VERSION = {version}"))
