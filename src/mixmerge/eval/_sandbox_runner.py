"""The sandbox's runner: the only process that executes untrusted code (stdlib only).

Forked by a job's trusted monitor (``_zygote.py``). Before ``exec`` it sets rlimits, drops to an
unprivileged identity, scrubs the environment and installs an audit hook that refuses the ways a
program could reach the pass token held in the runner's trusted frames or rewrite the test:
frames (``sys._getframe``, ``tb_frame``/``gi_frame``, ``sys._current_frames``), the collector
(``gc.get_objects``/``get_referrers``), tracing and profiling, ``ctypes``, ``/proc/*/mem``, starting
new programs (which would shed the hook), swapping any function's code or the runner's own defaults.

``sys._getframe`` itself returns a stand-in that shows only the program's globals.
HumanEval-style programs end with ``check(entry_point)``: the runner makes that call itself, with a
``candidate`` that fails any result whose type the program could have defined (an ``__eq__`` that
always answers True), and only if ``check`` is still the function the test defined.
"""

from __future__ import annotations

import ast
import builtins
import collections
import ctypes
import functools
import os
import resource
import signal
import sys
import types

from _sandbox_isolation import NOBODY_ID, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG, prctl

SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
REFUSED_EVENTS = frozenset({
    "sys._getframe", "sys._current_frames", "sys._current_exceptions", "sys.settrace", "sys.setprofile",
    "sys.addaudithook", "gc.get_objects", "gc.get_referrers", "gc.get_referents", "code.__new__",
    "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.forkpty", "subprocess.Popen", "pty.spawn",
})
FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"})
GUARDED_SETATTR = frozenset({"__defaults__", "__kwdefaults__"})  # refused on the runner's own functions

REFUSED_MODULES = frozenset({"ctypes", "_ctypes", "_testcapi", "_testinternalcapi", "_xxsubinterpreters"})
# Exact types a candidate may return, checked element by element; any other type must be a static
# (non-heap) type, which a program cannot create.
PLAIN_TYPES = frozenset({int, float, complex, bool, str, bytes, type(None), list, tuple, dict, set, frozenset,
                         range, bytearray})
PLAIN_TYPE_IDS = frozenset(map(id, PLAIN_TYPES))  # by identity: a metaclass cannot fake equality
HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: classes made by a class statement (or type())


def _refuse(event: str, args: tuple, _refused=REFUSED_EVENTS, _frames=FRAME_ATTRIBUTES,
            _setattr=GUARDED_SETATTR, _modules=REFUSED_MODULES, _fspath=os.fsdecode,
            _str=str, _bytes=bytes, _isinstance=isinstance, _id=id, _protected=frozenset()) -> None:
    """The runner's audit hook: raise on everything a program needs to forge a verdict."""
    if event in _refused or event.startswith("ctypes.") or event.startswith("sys.monitoring"):
        raise PermissionError(f"{event} is refused in the mixmerge sandbox")
    if event == "object.__getattr__" and args[1] in _frames:
        raise PermissionError(f"reading {args[1]} is refused in the mixmerge sandbox")
    if event == "object.__setattr__" and (args[1] == "__code__" or args[1] in _setattr and _id(args[0]) in _protected):
        raise PermissionError(f"setting {args[1]} is refused in the mixmerge sandbox")
    if event == "import" and args[0].partition(".")[0] in _modules:
        raise PermissionError(f"importing {args[0]} is refused in the mixmerge sandbox")
    if event == "open" and _isinstance(args[0], (_str, _bytes)):
        path = _fspath(args[0])
        if path.startswith("/proc/") and (path.endswith("/mem") or "/mem/" in path or path == "/proc/kcore"):
            raise PermissionError(f"opening {path} is refused in the mixmerge sandbox")


def verify_plain(value, _plain=PLAIN_TYPE_IDS, _heap=HEAP_TYPE, _type=type, _id=id, _isinstance=isinstance,
                 _flags=type.__dict__["__flags__"].__get__, _dict=dict,
                 _iter=(list, tuple, set, frozenset, collections.deque)) -> None:
    """Raise AssertionError unless ``value`` is made of builtin types only (walked iteratively)."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        kind = _type(item)
        if _id(kind) not in _plain and _flags(kind) & _heap:
            raise AssertionError(f"candidate returned an object of type {kind.__qualname__!r}, defined by the "
                                 "program; only builtin types are compared")
        if _isinstance(item, _dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif _isinstance(item, _iter):
            stack.extend(item)
        seen += 1
        if seen > 1_000_000:
            raise AssertionError("candidate returned a value too large to verify")


def final_check_call(tree: ast.Module) -> str | None:
    """The entry point's name if the program ends with ``check(<name>)`` (HumanEval's form); that
    statement is removed so the runner can make the call itself."""
    if not tree.body:
        return None
    last = tree.body[-1]
    if (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call) and not last.value.keywords
            and isinstance(last.value.func, ast.Name) and last.value.func.id == "check"
            and len(last.value.args) == 1 and isinstance(last.value.args[0], ast.Name)):
        tree.body.pop()
        return last.value.args[0].id
    return None


def _code_named(code: types.CodeType, name: str) -> types.CodeType | None:
    found = None
    for const in code.co_consts:
        if isinstance(const, types.CodeType) and const.co_name == name:
            found = const
    return found


class StandInFrame:
    """What ``sys._getframe`` returns inside the sandbox: the program's globals and nothing above.

    Libraries ask their caller's frame for ``__name__`` (``collections.namedtuple``, ``typing.TypeVar``,
    ``enum``'s functional API, ``logging``); they keep working, while the real frames, whose parents
    hold the runner's token, stay refused by the audit hook.
    """

    f_back = None
    f_trace = None
    f_lineno = f_lasti = 0
    f_code = compile("", "<program>", "exec")

    def __init__(self, namespace: dict):
        self.f_globals = namespace
        self.f_locals = {}
        self.f_builtins = builtins.__dict__


def _drop_identity(caps: dict) -> None:
    """As root (also root of our user namespace): become ``nobody``. Else, in a user namespace, drop
    the capabilities it granted. Either way no new privileges and no ptrace of this process."""
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(NOBODY_ID, NOBODY_ID, NOBODY_ID)
        os.setresuid(NOBODY_ID, NOBODY_ID, NOBODY_ID)
    elif caps["userns"]:
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (ctypes.c_uint32 * 6)()
        if ctypes.CDLL(None, use_errno=True).capset(header, data) != 0:
            raise OSError(ctypes.get_errno(), "capset: cannot drop the user namespace's capabilities")
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_DUMPABLE, 0)  # also makes /proc/self/mem root's, out of reach of the dropped identity


def _block_sockets() -> None:
    """Fallback when no network namespace: make socket creation fail in this process."""
    import _socket
    import socket

    def refuse(*_a, **_k):
        raise PermissionError("network access is disabled in the mixmerge sandbox")

    class NoSocket:
        def __new__(cls, *a, **k):
            refuse()

    socket.socket = _socket.socket = NoSocket  # type: ignore[misc]
    socket.create_connection = socket.socketpair = refuse  # type: ignore[assignment]


def _prepare(job: dict, caps: dict, workdir: str, wfd: int):
    """Everything before the program runs; returns its code, its entry point and the test's check."""
    os.chdir(workdir)
    if not caps["jobns"]:
        os.setpgid(0, 0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, wfd)
    os.closerange(wfd + 1, 1 << 16)
    timeout_s, memory_mb = float(job["timeout_s"]), int(job["memory_mb"])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    cpu_s = int(timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    fsize = int(job["file_mb"]) << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    nproc = int(job["max_procs"])
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    if not caps["netns"]:
        _block_sockets()  # before the identity change: nobody may not be able to read the stdlib
    _drop_identity(caps)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the identity change, which clears it
    os.environ.clear()
    os.environ.update(SAFE_ENV, HOME=workdir, TMPDIR=workdir)
    tree = ast.parse(job["program"], "<program>")
    entry = final_check_call(tree)
    code = compile(tree, "<program>", "exec", dont_inherit=True, optimize=0)
    check_code = _code_named(code, "check") if entry else None
    for name in [m for m in sys.modules if m.partition(".")[0] in REFUSED_MODULES]:
        del sys.modules[name]  # a fresh import must pass the audit hook
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    stand_in = StandInFrame(namespace)
    sys._getframe = lambda depth=0: stand_in  # the real one is refused by the hook below
    # bound in a partial that nothing can reach (hooks are not listed, gc is refused)
    protected = frozenset(map(id, (_refuse, verify_plain, run_untrusted)))
    sys.addaudithook(functools.partial(_refuse, _protected=protected))
    return code, namespace, entry, check_code


def run_untrusted(job: dict, caps: dict, workdir: str, token: bytes, wfd: int,
                  _exit=os._exit, _write=os.write, _base=BaseException, _type=type, _str=str,
                  _function=types.FunctionType, _verify=verify_plain) -> None:
    """Set up, run the program, write the token only if it ran to its end. Never returns.

    The token lives only in this frame (and the monitor's, forked with it); the audit hook keeps
    frames out of the program's reach, and the dropped identity keeps /proc/self/mem and ptrace out.
    """
    try:
        code, namespace, entry, check_code = _prepare(job, caps, workdir, wfd)
    except _base as exc:  # setup or syntax error: report and fail
        try:
            _write(wfd, b"E" + _str(exc).encode()[:500])
        finally:
            _exit(3)
    message = b""
    try:
        exec(code, namespace)
        if entry is not None:
            check, candidate = namespace.get("check"), namespace.get(entry)
            if _type(check) is not _function or check.__code__ is not check_code:
                raise AssertionError("check() is not the test's own function")

            def guarded(*args, **kwargs):
                result = candidate(*args, **kwargs)
                _verify(result)
                return result

            check(guarded)
        passed = True
    except _base as exc:
        passed = False
        try:
            message = (_type(exc).__name__ + ": " + _str(exc)).encode()[:500]
        except _base:
            message = b"exception"
    if passed:
        _write(wfd, token)
        _exit(0)
    try:
        _write(wfd, b"F" + message)
    finally:
        _exit(1)
