"""CPU time the Python shim spends per warm no-op invocation, with no server around it.

Starts a shim (`crates/engine/runtimes/python/bootstrap.py` by default) as the engine does:
its control socket on fd 0, stdout and stderr on one pipe, a no-op handler. Sends it frames
shaped like the engine's, reads each reply and drains the log pipe, and prints the shim's CPU
time per invocation from /proc (user and system), measured after a warm-up.

    /path/to/python3 scripts/experiments/shim_cpu.py [--shim PATH] [--calls N]

Use the real interpreter, not a version manager's shim. Compare two shims by alternating
runs: the figures move by a few microseconds from run to run on a shared machine.
"""

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile

HANDLER = "def main_handler(event, context):\n    return None\n"
CONTEXT = {
    "request_id": "",
    "memory_limit_in_mb": 128,
    "time_limit_in_ms": 3000,
    "function_name": "bench-noop-python",
    "function_version": "$LATEST",
    "namespace": "default",
    "tencentcloud_region": "ap-guangzhou",
    "tencentcloud_appid": "1250000000",
    "tencentcloud_uin": "100000000001",
}


def cpu_ticks(pid):
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # utime, stime


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_shim = os.path.join(here, "../../crates/engine/runtimes/python/bootstrap.py")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shim", default=os.path.normpath(default_shim))
    parser.add_argument("--calls", type=int, default=30000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as code:
        with open(os.path.join(code, "index.py"), "w") as index:
            index.write(HANDLER)
        engine_end, shim_end = socket.socketpair()
        log_read, log_write = os.pipe()
        env = {"_HANDLER": "index.main_handler", "USER_CODE_ROOT": code}
        shim = subprocess.Popen(
            [sys.executable, "-S", args.shim],
            stdin=shim_end,
            stdout=log_write,
            stderr=log_write,
            env=env,
            cwd=code,
        )
        shim_end.close()
        os.close(log_write)
        os.set_blocking(log_read, False)

        def receive():
            header = b""
            while len(header) < 4:
                header += engine_end.recv(4 - len(header))
            (length,) = struct.unpack(">I", header)
            payload = b""
            while len(payload) < length:
                payload += engine_end.recv(length - len(payload))
            return json.loads(payload)

        def invoke(i):
            frame = json.dumps(
                {
                    "request_id": "0193a1b2-c3d4-7e5f-8a9b-%012d" % i,
                    "event": "{}",
                    "context": CONTEXT,
                    "time_limit_ms": 3000,
                },
                separators=(",", ":"),
            ).encode()
            engine_end.sendall(struct.pack(">I", len(frame)) + frame)
            reply = receive()
            try:
                while os.read(log_read, 65536):
                    pass
            except BlockingIOError:
                pass
            return reply

        try:
            if receive() != {"ready": True}:
                raise SystemExit("the shim did not say it was ready")
            for i in range(500):
                reply = invoke(i)
            if reply != {"ok": True, "ret_msg": "null"}:
                raise SystemExit("unexpected reply: %r" % (reply,))
            user0, system0 = cpu_ticks(shim.pid)
            for i in range(args.calls):
                invoke(i)
            user1, system1 = cpu_ticks(shim.pid)
        finally:
            engine_end.close()
            shim.wait()
            os.close(log_read)
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
        user = (user1 - user0) * tick_us / args.calls
        system = (system1 - system0) * tick_us / args.calls
        print(
            "shim CPU per invocation: %.1f µs (user %.1f, system %.1f), %d calls"
            % (user + system, user, system, args.calls)
        )


if __name__ == "__main__":
    main()
