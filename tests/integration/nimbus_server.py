"""Runs the real `nimbus serve` binary on port 0 for the integration tests.

Every server gets its own data directory under a temporary root, which is removed at teardown
after the process has been stopped (SIGTERM, then SIGKILL of its process group if it does not
stop). The server's stderr goes to a file beside the data directory; the conftest attaches the
tail of every live server's log to the report of a failing test.
"""

import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import Legacy, RawClient

REPO_ROOT = Path(__file__).resolve().parents[2]
NIMBUS_BIN = Path(os.environ.get("NIMBUS_BIN", REPO_ROOT / "target" / "debug" / "nimbus"))
LISTENING_RE = re.compile(r"^nimbus listening on http://127\.0\.0\.1:(\d+)$")
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
TEST_SECRET_ID = "AKIDnimbustest"

LIVE_SERVERS = []


def nimbus_bin():
    if not NIMBUS_BIN.is_file():
        pytest.fail(f"nimbus binary not found at {NIMBUS_BIN} (build it or set NIMBUS_BIN)")
    return str(NIMBUS_BIN)


def clean_env(**extra):
    """The test process's environment without any NIMBUS_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


class NimbusServer:
    """One `nimbus serve` process on 127.0.0.1:0 with a given data directory."""

    def __init__(self, data_dir, log_path, secret_id=TEST_SECRET_ID, secret_key=None,
                 extra_args=()):
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.secret_id = secret_id
        self.secret_key = secret_key
        self.extra_args = list(extra_args)
        self.proc = None
        self.port = None
        self.stdout_lines = []
        self._lines = queue.Queue()
        self._reader = None
        self._log_file = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, env_credentials=True):
        """Starts the server; with `env_credentials` it passes NIMBUS_SECRET_ID/KEY."""
        self.stdout_lines = []
        self._lines = queue.Queue()
        self._log_file = open(self.log_path, "ab")
        env = clean_env()
        if env_credentials:
            env.update(NIMBUS_SECRET_ID=self.secret_id, NIMBUS_SECRET_KEY=self.secret_key)
        args = [nimbus_bin(), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(self.data_dir)]
        self.proc = subprocess.Popen(
            args + self.extra_args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=env,
            start_new_session=True,
        )
        LIVE_SERVERS.append(self)
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        self.port = self._wait_listening()
        return self

    def _read_stdout(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.stdout_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def _wait_listening(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                pytest.fail(f"nimbus did not print its listening line within {START_TIMEOUT_S}s")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = self.proc.wait(timeout=STOP_TIMEOUT_S)
                pytest.fail(f"nimbus exited with {code} before listening:\n{self.log_tail()}")
            match = LISTENING_RE.match(line)
            if match:
                return int(match.group(1))

    def stop(self):
        """SIGTERM, wait; SIGKILL the process group if needed. Answers the exit code."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        _kill_group(proc.pid)
        if self._reader is not None:
            self._reader.join(timeout=STOP_TIMEOUT_S)
        proc.stdout.close()
        self._log_file.close()
        return proc.returncode

    def discard(self):
        self.stop()
        if self in LIVE_SERVERS:
            LIVE_SERVERS.remove(self)

    # -- access -------------------------------------------------------------------------------

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint(self):
        return f"http://{self.host}"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def legacy(self, method="POST", signature_method="HmacSHA1", secret_id=None, secret_key=None):
        return Legacy(
            self.host,
            secret_id or self.secret_id,
            secret_key or self.secret_key,
            method=method,
            signature_method=signature_method,
        )

    def raw(self, secret_id=None, secret_key=None):
        return RawClient(self.host, secret_id or self.secret_id, secret_key or self.secret_key)

    def http_get(self, path):
        with urllib.request.urlopen(f"{self.endpoint}{path}", timeout=30) as resp:
            return resp.status, resp.read()

    def log_tail(self, lines=80):
        try:
            text = Path(self.log_path).read_text("utf-8", "replace")
        except (OSError, TypeError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _kill_group(pgid):
    """Kills what is left of the process group this fixture created for the server."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class ServerFactory:
    """Creates servers, each with its own data directory under one temporary root; tears
    everything down (processes, then the root) at the end."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="nimbus-it-"))
        self._servers = []
        self._dirs = 0

    def new_dir(self):
        self._dirs += 1
        data_dir = self.root / f"data-{self._dirs}"
        data_dir.mkdir()
        return data_dir

    def start(self, data_dir=None, secret_key=None, env_credentials=True, extra_args=()):
        server = NimbusServer(
            data_dir or self.new_dir(),
            self.root / f"server-{len(self._servers)}.stderr.log",
            secret_key=secret_key or "k" + secrets.token_urlsafe(24),  # never "-..." (CLIs take it for a flag)
            extra_args=extra_args,
        )
        self._servers.append(server)
        return server.start(env_credentials=env_credentials)

    def close(self):
        for server in self._servers:
            server.discard()
        shutil.rmtree(self.root, ignore_errors=True)
