"""What a zygote would save: the proportional set size of Python instances forked from one
pre-initialised interpreter, next to a fresh interpreter's.

Issue 8 asks for an idle warm Python instance at no more than half the PSS of a fresh
`python3 -S`. Nimbus forks its Python spares from a zygote (the engine's zygote.rs: one
interpreter with the shim loaded, forking each spare into a sandbox the server built). This
script measures the same sharing without a sandbox, the server or the shim's protocol, so the
answer is a best case:

- a fresh `python3 -S` that sleeps (the benchmark's baseline);
- a zygote that imports what the shim imports, freezes its objects out of the garbage
  collector's reach (`gc.freeze`), and forks `--children` instances; each instance imports a
  no-op handler from a code directory and answers one JSON event, as a warm instance has,
  then sleeps.

Run it with the real interpreter (not a version manager's shim):

    /path/to/python3 scripts/experiments/zygote_pss.py --children 4

It prints the PSS of each process and of one instance relative to the fresh interpreter.
CPython (3.11 here) writes reference counts into every object it touches, so the pages a
forked instance uses become its own as soon as it runs: importing the handler and one
JSON round trip leave each instance with about 1.6 MiB of private memory, and its PSS near the
fresh interpreter's (see ARCHITECTURE.md, "Where the time and memory go").
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

HANDLER = "def main_handler(event, context):\n    return None\n"

# The zygote: the shim's imports and nothing else, then one fork per instance. Each instance
# imports the handler and answers one event, as a warm instance has, then idles. The zygote
# prints the instances' pids once all are ready.
ZYGOTE = """
import gc, importlib, json, os, resource, site, struct, sys, time, traceback
code_dir, count = sys.argv[1], int(sys.argv[2])
gc.freeze()
ready_read, ready_write = os.pipe()
children = []
for _ in range(count):
    pid = os.fork()
    if pid == 0:
        sys.path.insert(0, code_dir)
        handler = importlib.import_module("index").main_handler
        event = json.loads('{"key1": "value1", "key2": [1, 2, 3]}')
        reply = json.dumps(handler(event, {})).encode()
        struct.pack(">I", len(reply))
        os.write(ready_write, b".")
        time.sleep(3600)
        os._exit(0)
    children.append(pid)
for _ in children:
    os.read(ready_read, 1)
print(" ".join(map(str, children)), flush=True)
time.sleep(3600)
"""


def rollup(pid, field):
    with open("/proc/%d/smaps_rollup" % pid) as lines:
        for line in lines:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no %s line for %d" % (field, pid))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--children", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as code_dir:
        with open(os.path.join(code_dir, "index.py"), "w") as index:
            index.write(HANDLER)
        fresh = subprocess.Popen(
            [sys.executable, "-S", "-c", "import time; time.sleep(3600)"], env={}
        )
        zygote = subprocess.Popen(
            [sys.executable, "-S", "-c", ZYGOTE, code_dir, str(args.children)],
            env={},
            stdout=subprocess.PIPE,
            text=True,
        )
        children = []
        try:
            children = [int(pid) for pid in zygote.stdout.readline().split()]
            time.sleep(0.5)  # the fresh interpreter is up by now, too
            fresh_pss = rollup(fresh.pid, "Pss")
            print("fresh python3 -S   PSS %6d KiB" % fresh_pss)
            print("zygote             PSS %6d KiB" % rollup(zygote.pid, "Pss"))
            for pid in children:
                print(
                    "instance %-8d  PSS %6d KiB  (private dirty %d KiB)"
                    % (pid, rollup(pid, "Pss"), rollup(pid, "Private_Dirty"))
                )
            print(
                "one instance / fresh interpreter: %.2f"
                % (rollup(children[0], "Pss") / fresh_pss)
            )
        finally:
            for pid in children:
                os.kill(pid, 9)
            zygote.kill()
            zygote.wait()
            fresh.kill()
            fresh.wait()


if __name__ == "__main__":
    main()
