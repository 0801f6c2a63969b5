"""What moving a process into a cgroup costs, and why a zygote's fork sometimes waits.

A process forked by the Python zygote joins its instance's cgroup by writing to
`cgroup.procs`. Instances the server starts itself are created inside theirs with clone3's
CLONE_INTO_CGROUP instead. The write takes the kernel's cgroup threadgroup lock for writing,
and the first writer after a quiet spell waits for an RCU grace period; writes close
together do not. This script shows it: it makes a cgroup of its own under the cgroup v2
mount (and removes it), forks a sleeping child into a fresh child cgroup after various
pauses, and times each write.

Run it as root, with the real interpreter:

    /path/to/python3 scripts/experiments/cgroup_move.py

On the development host: 5–20 ms after a pause of a second or more, 0.3–1 ms back to back.
"""

import os
import time


def cgroup2_mount():
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[2] == "cgroup2":
                return fields[1]
    raise SystemExit("no cgroup v2 mount")


def main():
    base = os.path.join(cgroup2_mount(), "nimbus-experiment-%d" % os.getpid())
    os.mkdir(base)
    try:
        for pause in (1.0, 0.0, 0.0, 1.0, 0.0, 2.0):
            time.sleep(pause)
            group = os.path.join(base, "child-%d" % time.monotonic_ns())
            os.mkdir(group)
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            started = time.perf_counter()
            with open(os.path.join(group, "cgroup.procs"), "w") as procs:
                procs.write(str(pid))
            took = (time.perf_counter() - started) * 1000
            print("after a pause of %.1f s: the write took %.2f ms" % (pause, took))
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.rmdir(group)
    finally:
        os.rmdir(base)


if __name__ == "__main__":
    main()
