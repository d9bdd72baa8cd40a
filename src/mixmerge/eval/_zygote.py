"""The sandbox's warm launcher: a stdlib-only process that runs untrusted test programs.

Run as ``python -I _zygote.py`` by :mod:`mixmerge.eval.sandbox` with a scrubbed environment. It reads
jobs as JSON lines on stdin and answers one JSON line per job on stdout. Per job it forks a *monitor*
(trusted code only) which forks the *runner* that executes the program. The verdict is decided by the
monitor: "passed" needs the runner to exit with status 0 **and** to have written a per-job random token
on a private pipe after ``exec`` returned. Exiting early (``sys.exit``, ``os._exit``), raising, being
killed or timing out never yields the token, so it never passes.

Isolation, as far as the OS allows (reported back in the hello line):
- network: a new, empty network namespace for the whole launcher (else sockets blocked in-process);
- processes: a new PID namespace per job, so everything the program spawned dies with it (else the
  job's process group is killed);
- disk: a fresh size-capped tmpfs on /tmp, /var/tmp and /dev/shm per job, used as working dir (else a
  private temp dir), plus RLIMIT_FSIZE;
- user: the runner drops to ``nobody`` when started as root, so it cannot signal the harness or read
  its environment; rlimits on address space, CPU seconds, file size and process count.

This file must import nothing outside the standard library: it is the code every sample forks from.
"""

from __future__ import annotations

# Standard library only. The F401 imports are modules test programs often use, preloaded so every fork
# gets them for free.
import bisect  # noqa: F401
import builtins
import collections  # noqa: F401
import contextlib
import ctypes
import functools  # noqa: F401
import gc
import hashlib  # noqa: F401
import heapq  # noqa: F401
import itertools  # noqa: F401
import json
import math  # noqa: F401
import os
import random  # noqa: F401
import re  # noqa: F401
import resource
import select
import shutil
import signal
import string  # noqa: F401
import sys
import tempfile
import time
import typing  # noqa: F401

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x1, 0x20, 0x1000, 0x4000, 0x40000
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
NOBODY_ID = 65534
SHARED_TMP = ("/var/tmp", "/dev/shm")  # hidden once behind read-only (for nobody) empty tmpfs mounts
SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
MONITOR_GRACE_S = 10.0  # after this much past its timeout a monitor itself is killed

_libc = ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> bool:
    return _libc.unshare(flags) == 0


def _mount_tmpfs(target: str, size_mb: int) -> bool:
    opts = f"size={size_mb}m,mode=1777".encode()
    return _libc.mount(b"tmpfs", target.encode(), b"tmpfs", 0, opts) == 0


def _bind(src: str, dst: str, flags: int = 0) -> bool:
    return _libc.mount(src.encode(), dst.encode(), None, MS_BIND | flags, None) == 0


def _closed_ancestor(path: str) -> str | None:
    """The highest ancestor of ``path`` that other users cannot traverse (e.g. a 0700 /root)."""
    parts = os.path.abspath(path).split(os.sep)[1:]
    for i in range(1, len(parts) + 1):
        here = os.sep + os.path.join(*parts[:i])
        if not os.stat(here).st_mode & 0o001:
            return here
    return None


def _expose_python_only(prefix: str) -> bool:
    """In our own mount namespace, shadow a closed home (say /root) so ``nobody`` can use Python.

    The closed ancestor is covered by an empty tmpfs and only the interpreter's prefix is bound back,
    read-only: the runner can import the standard library but sees none of the home's other files
    (tokens, caches, keys).
    """
    closed = _closed_ancestor(prefix)
    if closed is None:
        return True
    stage = tempfile.mkdtemp(prefix="mixmerge-prefix-")
    ok = _bind(prefix, stage)
    ok = ok and _libc.mount(b"tmpfs", closed.encode(), b"tmpfs", 0, b"size=1m,mode=0755") == 0
    if ok:
        target = os.path.join(closed, os.path.relpath(prefix, closed))
        os.makedirs(target, exist_ok=True)
        ok = _bind(stage, target)
        if ok:  # read-only on top: best effort, the files are root's and 0644 anyway
            _bind(stage, target, MS_REMOUNT | MS_RDONLY)
    _libc.umount2(stage.encode(), MNT_DETACH)
    os.rmdir(stage)
    return ok


def probe_capabilities() -> dict:
    """What isolation this machine grants us; called once at start-up."""
    caps = {"netns": _unshare(CLONE_NEWNET), "drop_uid": os.geteuid() == 0}
    if caps["drop_uid"]:
        private = _unshare(CLONE_NEWNS) and _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
        caps["drop_uid"] = private and _expose_python_only(sys.base_prefix)
        for target in SHARED_TMP if caps["drop_uid"] else ():
            if os.path.isdir(target):
                _libc.mount(b"tmpfs", target.encode(), b"tmpfs", 0, b"size=1m,mode=0755")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # try a private mount + pid namespace in a throwaway child
        ok = _unshare(CLONE_NEWPID | CLONE_NEWNS) and _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE,
                                                                   None) == 0
        ok = ok and _mount_tmpfs("/tmp", 1)
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    caps["pidns_tmpfs"] = os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(pid, 0)
    return caps


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


def _run_untrusted(job: dict, caps: dict, workdir: str, token: bytes, wfd: int,
                   _exit=os._exit, _write=os.write, _base=BaseException, _type=type, _str=str) -> None:
    """The runner (a grandchild of the launcher): set limits, then exec the program. Never returns."""
    try:
        os.chdir(workdir)
        if not caps["pidns_tmpfs"]:
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
        if caps["drop_uid"]:
            os.setgroups([])
            os.setgid(NOBODY_ID)
            os.setuid(NOBODY_ID)
            nproc = int(job["max_procs"])
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
        if not caps["netns"]:
            _block_sockets()
        os.environ.clear()
        os.environ.update(SAFE_ENV, HOME=workdir, TMPDIR=workdir)
        code = compile(job["program"], "<program>", "exec")
    except _base as exc:  # setup or syntax error: report and fail
        try:
            _write(wfd, b"E" + _str(exc).encode()[:500])
        finally:
            _exit(3)
    message = b""
    try:
        exec(code, {"__name__": "__main__", "__builtins__": builtins})
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


def _namespace_init(job: dict, caps: dict, workdir: str, token: bytes, wfd: int) -> None:
    """PID 1 of the job's pid namespace: trusted, it only runs the program as its child and relays
    the exit. The program must not be PID 1 itself, where default-fatal signals are ignored."""
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        pid = os.fork()
        if pid == 0:
            _run_untrusted(job, caps, workdir, token, wfd)
        os.close(wfd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        os._exit(code if code >= 0 else 128 - code)  # killed by signal s -> 128 + s, like a shell
    finally:
        os._exit(125)


def _monitor(job: dict, caps: dict, result_fd: int) -> None:
    """Trusted parent of one runner: isolates it, times it, decides its verdict. Never returns."""
    status, detail = "error", "monitor failed"
    started = time.perf_counter()
    workdir = None
    try:
        os.setsid()
        if caps["pidns_tmpfs"]:
            _unshare(CLONE_NEWPID | CLONE_NEWNS)
            if not caps["drop_uid"]:  # else the launcher's own mount namespace is already private
                _libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None)
            _mount_tmpfs("/tmp", int(job["file_mb"]))  # dies with this mount namespace
            workdir = tempfile.mkdtemp(prefix="job-", dir="/tmp")
        else:
            workdir = tempfile.mkdtemp(prefix="mixmerge-sandbox-")
        if caps["drop_uid"]:
            os.chown(workdir, NOBODY_ID, NOBODY_ID)
        token = os.urandom(16)
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            if caps["pidns_tmpfs"]:
                _namespace_init(job, caps, workdir, token, wfd)
            _run_untrusted(job, caps, workdir, token, wfd)
        os.close(wfd)
        pidfd = os.pidfd_open(pid)
        deadline = started + float(job["timeout_s"])
        data, exited, timed_out = b"", None, False
        while exited is None:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([pidfd] + ([rfd] if rfd != -1 else []), [], [], remaining)
            if rfd in ready:
                chunk = os.read(rfd, 4096)
                if not chunk:  # every writer closed; keep waiting for the exit itself
                    os.close(rfd)
                    rfd = -1
                elif len(data) < 4096:
                    data += chunk
            if pidfd in ready:  # peek at the exit without reaping, so the pid cannot be reused yet
                exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        # Kill the runner and everything it spawned (its pid namespace, else its process group),
        # while its pid is still held by the unreaped zombie.
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(OSError):
                kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if rfd != -1:  # anything written before the exit is still in the pipe
            os.set_blocking(rfd, False)
            try:
                while len(data) < 4096 and (chunk := os.read(rfd, 4096)):
                    data += chunk
            except BlockingIOError:
                pass
        clean_exit = exited is not None and exited.si_code == os.CLD_EXITED
        if timed_out:
            status, detail = "timed out", f"exceeded {job['timeout_s']} s"
        elif clean_exit and exited.si_status == 0 and data == token:
            status, detail = "passed", ""
        elif data[:1] in (b"F", b"E"):
            status = "failed"
            detail = data[1:].decode("utf-8", "replace")
        elif not clean_exit:
            status, detail = "failed", f"killed by signal {exited.si_status}"
        elif exited.si_status > 128 and caps["pidns_tmpfs"]:
            status, detail = "failed", f"killed by signal {exited.si_status - 128}"
        else:
            status = "failed"
            detail = f"exited with status {exited.si_status} without finishing the tests"
    except BaseException as exc:  # a bug here must still produce a verdict, never a pass
        status, detail = "error", f"monitor: {type(exc).__name__}: {exc}"
    finally:
        try:  # the verdict first (one line), the cleanup after, off the critical path
            elapsed = time.perf_counter() - started
            os.write(result_fd, json.dumps({"status": status, "detail": detail,
                                            "elapsed_s": round(elapsed, 4)}).encode() + b"\n")
            if workdir is not None and not caps["pidns_tmpfs"]:
                shutil.rmtree(workdir, ignore_errors=True)
        finally:
            os._exit(0)


def serve() -> None:
    """Read jobs on stdin, keep ``workers`` monitors in flight, answer results on stdout."""
    gc.freeze()  # forks share the launcher's objects without copy-on-write from the collector
    stdin_fd = sys.stdin.fileno()  # read raw: a buffered reader would hide input from select()
    buffer = b""
    while b"\n" not in buffer:
        chunk = os.read(stdin_fd, 1 << 16)
        if not chunk:
            return
        buffer += chunk
    header_line, buffer = buffer.split(b"\n", 1)
    header = json.loads(header_line)
    workers = max(1, int(header["workers"]))
    if header.get("namespaces", True):
        caps = probe_capabilities()
    else:  # rlimits, scrubbed env, process groups and in-process socket blocking only
        caps = {"netns": False, "drop_uid": False, "pidns_tmpfs": False}
    out = sys.stdout
    out.write(json.dumps({"hello": caps}) + "\n")
    out.flush()
    os.set_blocking(stdin_fd, False)
    *lines, buffer = buffer.split(b"\n")
    pending: list[dict] = [json.loads(line) for line in lines if line.strip()]
    stdin_open = True
    running: dict[int, dict] = {}  # result read fd -> {pid, id, data, deadline}
    exiting: list[int] = []  # monitors that gave their verdict and are tearing down
    while stdin_open or pending or running:
        while pending and len(running) < workers:
            job = pending.pop(0)
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(rfd)
                try:
                    _monitor(job, caps, wfd)
                finally:
                    os._exit(0)
            os.close(wfd)
            hard_deadline = time.monotonic() + float(job["timeout_s"]) + MONITOR_GRACE_S
            running[rfd] = {"pid": pid, "id": job["id"], "data": b"", "deadline": hard_deadline}
        watch = list(running) + ([stdin_fd] if stdin_open else [])
        next_deadline = min((r["deadline"] for r in running.values()), default=time.monotonic() + 1.0)
        ready, _, _ = select.select(watch, [], [], max(0.0, next_deadline - time.monotonic()))
        for fd in ready:
            if fd == stdin_fd:
                try:
                    chunk = os.read(stdin_fd, 1 << 20)
                except BlockingIOError:
                    continue
                if not chunk:
                    stdin_open = False
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                pending.extend(json.loads(line) for line in lines if line.strip())
                continue
            chunk = os.read(fd, 1 << 16)
            running[fd]["data"] += chunk
            if chunk and not chunk.endswith(b"\n"):
                continue
            job = running.pop(fd)  # a complete verdict line, or EOF: the monitor is done either way
            os.close(fd)
            exiting.append(job["pid"])
            try:
                result = json.loads(job["data"])
            except ValueError:
                result = {"status": "error", "detail": "monitor died without a verdict", "elapsed_s": 0.0}
            out.write(json.dumps({"id": job["id"], **result}) + "\n")
            out.flush()
        exiting[:] = [pid for pid in exiting if os.waitpid(pid, os.WNOHANG)[0] == 0]
        now = time.monotonic()
        for fd, job in list(running.items()):
            if now > job["deadline"]:  # a stuck monitor: kill it; its runner dies by PDEATHSIG
                os.kill(job["pid"], signal.SIGKILL)
                os.waitpid(job["pid"], 0)
                os.close(fd)
                running.pop(fd)
                out.write(json.dumps({"id": job["id"], "status": "timed out", "detail": "monitor killed",
                                      "elapsed_s": 0.0}) + "\n")
                out.flush()
    for pid in exiting:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    serve()
