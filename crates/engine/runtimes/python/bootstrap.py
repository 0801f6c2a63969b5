"""Nimbus Python runtime shim.

Hosts one SCF Python handler inside one instance process and talks to the
Nimbus engine over the control socket it inherits as fd 0.

Protocol (every frame is a 4-byte big-endian length followed by JSON):

    shim -> engine  {"ready": true}                       once, at start
    engine -> shim  {"request_id", "event", "context",    one per invocation
                     "time_limit_ms"}
    shim -> engine  {"ok": true, "ret_msg": "<json>"}     or
                    {"ok": false, "status_code": N, "err_msg": "<json>"}

Before each reply the shim flushes stdout and stderr and writes an end
marker (a per-instance secret token plus the request id) to stdout, so the
engine can cut the shared log pipe exactly at the end of the invocation.

The handler module is imported before the shim says it is ready, so that
importing is bounded by the init timeout and not billed to an invocation. An
import failure is reported as the first invocation's result, and the import
is retried by the next invocation, never in a loop.

Out of memory: a MemoryError escaping the handler or the import (what Python
raises when RLIMIT_DATA refuses an allocation) is reported as status 434; the
engine then recycles the instance.

Stack traces (in the error reply and the log) start at the user's first
frame: the shim's own frames, and the import machinery it calls, lead every
traceback and are cut from it, as SCF shows no frame of its runtime.

The shim exits as soon as the control socket reaches end of file: the engine
is gone or wants it gone.

A spare (started with _NIMBUS_SPARE=1 before any function claimed it) first
sends {"spare": true} and waits for {"assign": {"env", "rlimits"}}; it then
lowers its limits, takes the function's environment and code directory, and
goes on as above, from importing the handler.

Start-up cost: the interpreter runs with -S, so no .pth file of the
interpreter's site-packages runs (some import whole packages at every start);
the shim puts those directories on sys.path itself, after the standard
library as site would, and defines exit() and quit(). It reads and writes the
control socket with os.read/os.write rather than importing socket, and
imports traceback after the first reply (or when something fails first); a
spare imports it while it waits, so that a claimed spare's first reply is not
followed by milliseconds of importing that compete with the engine reading it.
"""

import importlib
import json
import os
import site
import struct
import sys

_HEADER = struct.Struct(">I")
# Whether this process was forked from a zygote, which has set up what it shares.
_forked = False
_RECV_CHUNK = 1 << 20
_FIRST_READ = 1 << 16
# json.loads without what it adds around the scanner (encoding detection, two whitespace
# regex matches): enough for the engine's frames, compact JSON it wrote itself, and the
# first try at an event (see _loads).
_scan = json.JSONDecoder().scan_once
_quote = json.encoder.encode_basestring_ascii


def _loads(text):
    """json.loads(text) for a str, the same value or the same error: text that the scanner
    reads whole from its first character needs none of the checks json.loads wraps around
    it (leading and trailing whitespace, a byte order mark, extra data)."""
    try:
        value, end = _scan(text, 0)
        if end == len(text):
            return value
    except (StopIteration, ValueError):
        pass
    return json.loads(text)


def _new_result_encoder():
    # What json.dumps builds for each call with its defaults (circular check, NaN allowed,
    # ASCII output), built once.
    return json.encoder.c_make_encoder(
        {}, json.JSONEncoder().default, _quote, None, ": ", ", ", False, False, True
    )


_result_encoder = _new_result_encoder() if json.encoder.c_make_encoder else None


def _dumps(value):
    """json.dumps(value): the same text or the same error."""
    global _result_encoder
    if _result_encoder is not None:
        try:
            return "".join(_result_encoder(value, 0))
        except Exception:
            # The encoder keeps what it was visiting when it failed (and would take it for a
            # cycle next time): start afresh, and let json.dumps raise the error, with the
            # traceback, it would have raised.
            _result_encoder = _new_result_encoder()
    return json.dumps(value)


def _add_site_packages():
    """What site would do for sys.path and builtins, without running .pth files."""
    for path in site.getsitepackages():
        if path not in sys.path and os.path.isdir(path):
            sys.path.append(path)
    site.setquit()


def _take_control_socket():
    """Move the control socket off fd 0 and leave /dev/null there for user code."""
    control_fd = os.dup(0)  # os.dup makes a non-inheritable fd
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.close(null_fd)
    return control_fd


def _recv_chunks(fd, size, chunks):
    """Appends the next `size` bytes to `chunks`; False at end of stream."""
    while size:
        chunk = os.read(fd, min(size, _RECV_CHUNK))
        if not chunk:
            return False
        chunks.append(chunk)
        size -= len(chunk)
    return True


class _Frames:
    """Frames from the control socket. A read asks for more than a header, so that a whole
    small frame takes one system call; bytes past the frame wait for the next call. A large
    frame's bytes are joined once, as they would be without the first read."""

    def __init__(self, fd):
        self._fd = fd
        self._pending = b""

    def next(self):
        """The next frame's message, or None at end of stream."""
        while len(self._pending) < _HEADER.size:
            chunk = os.read(self._fd, _FIRST_READ)
            if not chunk:
                return None
            self._pending += chunk
        end = _HEADER.size + _HEADER.unpack_from(self._pending)[0]
        if len(self._pending) >= end:
            payload, self._pending = self._pending[_HEADER.size : end], self._pending[end:]
        else:
            chunks = [self._pending[_HEADER.size :]]
            if not _recv_chunks(self._fd, end - len(self._pending), chunks):
                return None
            payload, self._pending = b"".join(chunks), b""
        return _scan(payload.decode("utf-8"), 0)[0]


def _write_all(fd, data):
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


def _send_frame(fd, message):
    _send_payload(fd, json.dumps(message).encode("utf-8"))


def _send_payload(fd, payload):
    _write_all(fd, _HEADER.pack(len(payload)) + payload)


def _send_reply(fd, reply):
    """A reply frame; a successful one is written without the generic encoder (its one
    field is a string, which `_quote` escapes as json.dumps would)."""
    if reply["ok"]:
        _send_payload(fd, ('{"ok":true,"ret_msg":%s}' % _quote(reply["ret_msg"])).encode())
    else:
        _send_frame(fd, reply)


def _flush_output():
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:  # a user may have replaced or closed a stream
            pass


def _error(status_code, request_id, message, stack_trace=None):
    """An error reply. Its body is SCF's, to the byte: compact JSON, keys in SCF's order, the
    stack trace without the log's final newline."""
    body = {"errorCode": -1, "errorMessage": message, "requestId": request_id}
    if stack_trace is not None:
        body["stackTrace"] = stack_trace.rstrip("\n")
    body["statusCode"] = status_code
    err_msg = json.dumps(body, separators=(",", ":"))
    return {"ok": False, "status_code": status_code, "err_msg": err_msg}


class _HandlerError(Exception):
    """The handler could not be loaded; carries the SCF status code to report."""

    def __init__(self, status_code, message, stack_trace=None):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.stack_trace = stack_trace


class _Runner:
    def __init__(self, handler_spec):
        self._spec = handler_spec
        self._handler = None
        self._start_failure = None

    def load_at_start(self):
        """Imports the handler now; a failure waits for the first invocation."""
        try:
            self._handler = self._load()
        except _HandlerError as exc:
            self._start_failure = exc

    def _loaded_handler(self):
        if self._handler is None:
            if self._start_failure is not None:
                failure, self._start_failure = self._start_failure, None
                raise failure
            self._handler = self._load()
        return self._handler

    def _load(self):
        module_name, _, function_name = self._spec.rpartition(".")
        module_name = module_name.replace("/", ".")
        if not module_name or not function_name:
            raise _HandlerError(
                437, "invalid handler '%s': expected <file>.<function>" % self._spec
            )
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing and (module_name == missing or module_name.startswith(missing + ".")):
                raise _HandlerError(
                    437,
                    "Handler not found: No module named '%s' (file %s.py is missing)"
                    % (module_name, module_name.replace(".", "/")),
                ) from None
            raise _import_failure(exc) from None
        except BaseException as exc:  # SyntaxError, SystemExit, anything at import
            raise _import_failure(exc) from None
        handler = getattr(module, function_name, None)
        if handler is None:
            raise _HandlerError(
                437,
                "Handler not found: module '%s' has no attribute '%s'"
                % (module_name, function_name),
            )
        if not callable(handler):
            raise _HandlerError(
                437,
                "Handler not found: '%s.%s' is not callable" % (module_name, function_name),
            )
        return handler

    def invoke(self, frame):
        request_id = frame.get("request_id", "")
        try:
            handler = self._loaded_handler()
        except _HandlerError as exc:
            print(exc.stack_trace or exc.message, file=sys.stderr)
            return _error(exc.status_code, request_id, exc.message, exc.stack_trace)

        context = frame.get("context") or {}
        try:
            event = _loads(frame["event"])
            result = handler(event, context)
        except BaseException as exc:  # SystemExit too: the handler failed, the instance lives on
            stack_trace = _format_exception(exc)
            print(stack_trace, file=sys.stderr, end="")
            status_code = 434 if isinstance(exc, MemoryError) else 430
            return _error(status_code, request_id, "user code exception caught", stack_trace)

        try:
            ret_msg = _dumps(result)
        except Exception as exc:
            stack_trace = _format_exception(exc)
            print(stack_trace, file=sys.stderr, end="")
            message = "return value is not JSON serializable: %s" % exc
            return _error(430, request_id, message, stack_trace)
        return {"ok": True, "ret_msg": ret_msg}


def _format_exception(exc):
    """The traceback of `exc`, as Python prints it, from the user's first frame on."""
    try:
        import traceback
    except BaseException:  # no memory left to import it
        return "%s: %s\n" % (type(exc).__name__, exc)
    tb = exc.__traceback__
    while tb is not None and _is_plumbing(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _is_plumbing(filename):
    """Whether a frame in `filename` belongs to the shim or to the import machinery it calls.

    Such frames only ever lead a traceback (they are what called the user's code), so they are
    cut from its top: the user sees the trace start at their own file, as on SCF."""
    return (
        filename == _format_exception.__code__.co_filename
        or filename == importlib.__file__
        or filename.startswith("<frozen importlib.")
    )


def _import_failure(exc):
    stack_trace = _format_exception(exc)
    try:
        import traceback

        message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    except BaseException:  # no memory left to import it
        message = "%s: %s" % (type(exc).__name__, exc)
    status_code = 434 if isinstance(exc, MemoryError) else 443
    return _HandlerError(status_code, message, stack_trace)


def _refine_runtime_name():
    """The function's runtime as created (`Python3.10`) stays; the bare family name the
    engine gives when it knows none becomes the host interpreter's version."""
    if os.environ.get("SCF_RUNTIME", "Python3") == "Python3":
        os.environ["SCF_RUNTIME"] = "Python%d.%d" % sys.version_info[:2]


def _warm_compiler():
    compile("def handler(event, context):\n    return {'ok': event}\n", "<spare>", "exec")


def _await_assignment(sock, frames):
    """A spare: started before its function was known, with the largest limits and an empty
    code directory. Says so, then waits until a function claims it: by then the engine has
    mounted the function's code; the shim lowers its limits to the function's, takes the
    function's environment and goes on as if it had just started for that function."""
    import resource
    import traceback  # noqa: F401  (what main imports after the first reply, paid for here)

    if not _forked:
        # The interpreter's first compile costs a millisecond or two of one-time set-up: pay
        # it now rather than when the handler module is imported (a zygote paid it already).
        _warm_compiler()
    _send_frame(sock, {"spare": True})
    frame = frames.next()
    if frame is None:
        return False
    assignment = frame["assign"]
    for name, (soft, hard) in assignment.get("rlimits", {}).items():
        limit = getattr(resource, name)
        _, current = resource.getrlimit(limit)
        if current != resource.RLIM_INFINITY:
            hard = min(hard, current)  # lowering only: raising needs a privilege it lacks
        resource.setrlimit(limit, (min(soft, hard), hard))
    os.environ.clear()
    os.environ.update(assignment["env"])
    os.environ.pop("_NIMBUS_LOG_TOKEN", None)
    _take_function_paths()
    return True


def _take_function_paths():
    """For an interpreter that started before its function's environment was known (a
    spare, a zygote's fork): the working directory and sys.path one started for the function
    would have."""
    code_root = os.environ.get("USER_CODE_ROOT", os.getcwd())
    os.chdir(code_root)  # the directory the code was mounted over
    sys.path[0] = code_root
    # What a PYTHONPATH of the function's would have put on sys.path at start-up.
    extra = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    sys.path[1:1] = [p for p in dict.fromkeys(extra) if p and p not in sys.path]
    importlib.invalidate_caches()


def main():
    token = os.environ.pop("_NIMBUS_LOG_TOKEN", "")
    spare = os.environ.pop("_NIMBUS_SPARE", "") == "1"
    code_root = os.environ.get("USER_CODE_ROOT", os.getcwd())
    sys.path[0] = code_root  # replace this shim's own directory
    if not _forked:
        _add_site_packages()
    sock = _take_control_socket()
    frames = _Frames(sock)
    if spare and not _await_assignment(sock, frames):
        os._exit(0)
    _refine_runtime_name()
    runner = _Runner(os.environ.get("_HANDLER", ""))
    runner.load_at_start()
    _flush_output()
    try:
        _send_frame(sock, {"ready": True})
        while True:
            frame = frames.next()
            if frame is None:
                break
            reply = runner.invoke(frame)
            _flush_output()
            marker = "\0nimbus-end %s %s\n" % (token, frame.get("request_id", ""))
            _write_all(1, marker.encode("utf-8"))
            _send_reply(sock, reply)
            if "traceback" not in sys.modules:
                import traceback  # noqa: F401  (off the cold path, before memory runs short)
    except OSError:
        pass  # the engine closed the socket or went away
    _flush_output()
    # os._exit: do not wait for threads the user left running.
    os._exit(0)


# ---------------------------------------------------------------------------------------
# Zygote: one interpreter, started by the engine as root outside any sandbox with this
# module loaded, that forks instances (spares, and instances started for a function when
# no spare was ready) into sandboxes the engine has built (see the sandbox
# crate's adopt.rs and the engine's zygote.rs). Its children share its memory until they
# write to it, so a child does as little as it can before it waits for a function.
# ---------------------------------------------------------------------------------------

_PR_SET_DUMPABLE = 4
_PR_SET_SECCOMP = 22
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_SECCOMP_MODE_FILTER = 2
_CLONE_NEWPID = 0x20000000
_EINVAL = 22
_EXIT_JOIN_FAILED = 125
# Request descriptors: control, log, then the namespaces in the engine's JOIN_ORDER, then
# cgroup.procs when the request says "cgroup".
_NAMESPACES = ("ipc", "uts", "net", "cgroup", "pid", "mnt")
_PID = 2 + _NAMESPACES.index("pid")


def _zygote():
    """Serves fork requests on fd 0 (a SOCK_SEQPACKET socket) until end of file.

    A request is one message: JSON {"env", "uid", "gid", "workdir", "rlimits", "filters",
    "cgroup"} and the descriptors [control, log, the namespaces of _NAMESPACES,
    cgroup.procs if "cgroup"]. The answer is {"pid": host pid of the instance} or
    {"error": why}. The instance then runs as one started with the request's environment
    would ({"spare": true} or {"ready": true} on its control socket), or, if it could not
    enter the sandbox, writes why to its log and exits with 125.
    """
    import ctypes
    import gc
    import resource  # noqa: F401  (imported here so that every child shares it)
    import signal
    import socket
    import traceback  # noqa: F401  (what an instance imports after its first reply)

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    sys.path[0] = os.environ.get("USER_CODE_ROOT", "/var/user")
    _add_site_packages()
    _warm_compiler()
    _rehearse()
    own_pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    signal.signal(signal.SIGCHLD, _reap_children)
    control = socket.socket(fileno=_take_control_socket())
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 1 << 20, 16)
        except OSError as exc:  # the engine sees the socket close and stops using the zygote
            os.write(2, ("nimbus-zygote: cannot read a request: %s\n" % exc).encode())
            break
        if not message:
            break
        try:
            request = json.loads(message)
            expected = 2 + len(_NAMESPACES) + (1 if request["cgroup"] else 0)
            if len(fds) != expected:
                raise ValueError("%d descriptors, expected %d" % (len(fds), expected))
            # The collector of a child would write to every object it tracks, copying the
            # page of each: the zygote's objects are left out of its collections for good.
            gc.freeze()
            reply = {"pid": _fork_instance(libc, SockFprog, own_pid_namespace, request, fds)}
        except Exception as exc:  # the engine starts this instance the usual way
            reply = {"error": "%s: %s" % (type(exc).__name__, exc)}
        finally:
            for fd in fds:
                os.close(fd)
        control.send(json.dumps(reply).encode("utf-8"))
    os._exit(0)


def _rehearse():
    """Runs the paths a spare takes, a few times, before the zygote forks anything: the
    interpreter specialises code it has run often (writing into the code objects) and
    fills caches on first use, and a child that did either would copy those pages."""
    saved = dict(os.environ)
    read_end, write_end = os.pipe()
    try:
        frames = _Frames(read_end)
        for _ in range(16):
            os.environ.clear()
            os.environ.update(saved)
            _send_frame(write_end, {"spare": True})
            frames.next()
            _send_payload(write_end, b'{"request_id":"r","event":{"a":[1,2.5,null,"x"]}}')
            event = frames.next()["event"]
            _loads(_dumps(event))
            _send_reply(write_end, {"ok": True, "ret_msg": _dumps(event)})
            frames.next()
    finally:
        os.close(read_end)
        os.close(write_end)


def _reap_children(signum, frame):
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _check(result, what):
    """Raises OSError with ctypes' errno for a libc call that returned non-zero."""
    if result != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, "cannot %s: %s" % (what, os.strerror(errno)))


def _fork_instance(libc, fprog_type, own_pid_namespace, request, fds):
    """Forks the instance straight into the sandbox's PID namespace (entered for children
    only, and left again at once); returns its host pid. The instance enters the other
    namespaces itself, then runs main() with the environment of the request."""
    _check(libc.setns(fds[_PID], _CLONE_NEWPID), "enter the sandbox's PID namespace")
    pid = -1
    try:
        pid = os.fork()
    finally:
        if pid != 0 and libc.setns(own_pid_namespace, _CLONE_NEWPID) != 0:
            # Every later instance would be forked into this sandbox: stop serving.
            os.write(2, b"nimbus-zygote: cannot leave a sandbox's PID namespace\n")
            os._exit(1)
    if pid:
        return pid
    try:
        _enter_sandbox(libc, fprog_type, request, fds)
    except BaseException as exc:
        try:
            message = ("nimbus-zygote: %s: %s\n" % (type(exc).__name__, exc)).encode()
            try:
                os.write(fds[1], message)  # the log, unless it was already moved to 1 and 2
            except OSError:
                os.write(2, message)
        finally:
            os._exit(_EXIT_JOIN_FAILED)
    global _forked
    _forked = True
    try:
        main()
    finally:
        os._exit(0)


def _enter_sandbox(libc, fprog_type, request, fds):
    """Joins the sandbox, then does what the sandbox's init does for a runtime it starts
    (the sandbox crate's child.rs, become_function): the same limits, identity and filters."""
    import ctypes
    import resource
    import signal

    if request["cgroup"]:
        os.write(fds[-1], b"0")
    for index, name in enumerate(_NAMESPACES):
        if name != "pid":
            _check(libc.setns(fds[2 + index], 0), "join the sandbox's %s namespace" % name)
    os.dup2(fds[0], 0)
    os.dup2(fds[1], 1)
    os.dup2(fds[1], 2)
    os.closerange(3, 1 << 20)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.chdir(request["workdir"])
    os.umask(0o022)
    infinite = (1 << 64) - 1
    for limit, soft, hard in request["rlimits"]:
        soft = resource.RLIM_INFINITY if soft == infinite else soft
        hard = resource.RLIM_INFINITY if hard == infinite else hard
        resource.setrlimit(limit, (soft, hard))
    for capability in range(64):
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            if ctypes.get_errno() == _EINVAL:  # past the last capability
                break
            _check(-1, "empty the capability bounding set")
    os.setgroups([])
    os.setresgid(request["gid"], request["gid"], request["gid"])
    os.setresuid(request["uid"], request["uid"], request["uid"])
    # An exec'ed runtime is dumpable again after the uid change: its /proc files are its own.
    _check(libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0), "set the dumpable flag")
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")
    for program in request["filters"]:
        code = bytes.fromhex(program)
        buffer = ctypes.create_string_buffer(code, len(code))
        fprog = fprog_type(len(code) // 8, ctypes.addressof(buffer))
        _check(
            libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0),
            "install the seccomp filter",
        )
    os.environ.clear()
    os.environ.update(request["env"])


if __name__ == "__main__":
    if os.environ.pop("_NIMBUS_ZYGOTE", "") == "1":
        _zygote()
    else:
        main()
