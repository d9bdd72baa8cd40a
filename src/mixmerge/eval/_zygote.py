"""The sandbox's warm launcher: a stdlib-only process that runs untrusted test programs.

Run as ``python -I _zygote.py`` by :mod:`mixmerge.eval.sandbox` with a scrubbed environment. It reads
jobs as JSON lines on stdin and answers one JSON line per job on stdout. Per job it forks a *monitor*
(trusted code only) which forks the *runner* (``_sandbox_runner.py``) that executes the program.

Verdict protocol: the monitor decides. "passed" needs the runner to exit with status 0 **and** to
have written the job's random token on a private pipe after the program and the test's ``check``
returned. The token exists only in trusted frames, which the runner's audit hook keeps out of the
program's reach (no frames, ``gc``, tracing, ``ctypes`` or ``/proc/self/mem``); exiting early, raising,
being killed or timing out never yields it. Verdicts and results are written by the monitor only
after every process of the job is gone (its pid namespace died, its cgroup could be removed).

Isolation (``_sandbox_isolation.py``), reported in the hello line with what is ``missing``:
- a user namespace when not root with CAP_SYS_ADMIN, to get the rest without privileges;
- network: a new, empty network namespace for the whole launcher;
- per job: new PID (with its own /proc), mount and IPC namespaces; the whole file system read-only,
  a fresh size-capped tmpfs on /tmp; the harness's home hidden behind an empty tmpfs;
- a cgroup per job for memory and process count where one is writable, else the job's total resident
  memory is polled and capped by the monitor;
- the runner drops to ``nobody`` when root (or, as an ordinary user, the user namespace's
  capabilities), is not dumpable, has no new privileges, rlimits on memory, CPU, file size, processes.

This file must import nothing outside the standard library: it is the code every sample forks from.
"""

from __future__ import annotations

# Standard library only. The F401 imports are modules test programs often use, preloaded so every fork
# gets them for free (and so ``nobody`` needs no access to the interpreter's files for them).
import bisect  # noqa: F401
import collections  # noqa: F401
import contextlib
import copy  # noqa: F401
import fractions  # noqa: F401
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
import select
import shutil
import signal
import statistics  # noqa: F401
import string  # noqa: F401
import sys
import tempfile
import time
import typing  # noqa: F401

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves our own folder out

from _sandbox_isolation import (  # noqa: E402
    NOBODY_ID,
    PR_SET_PDEATHSIG,
    JobCgroup,
    enter_job_namespaces,
    mount_job_proc,
    prctl,
    prepare_launcher,
)
from _sandbox_runner import run_untrusted  # noqa: E402

MONITOR_GRACE_S = 10.0  # after this much past its timeout a monitor itself is killed
POLL_S = 0.05  # how often a monitor without a cgroup measures its job's total memory


def _namespace_init(job: dict, caps: dict, workdir: str, token: bytes, wfd: int) -> None:
    """PID 1 of the job's pid namespace: trusted, it mounts the job's /proc, runs the program as its
    child and relays the exit. The program must not be PID 1 itself (default-fatal signals ignored)."""
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if caps["proc"] and not mount_job_proc():
            raise OSError("mount /proc in the job's pid namespace failed")
        pid = os.fork()
        if pid == 0:
            run_untrusted(job, caps, workdir, token, wfd)
        os.close(wfd)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        os._exit(code if code >= 0 else 128 - code)  # killed by signal s -> 128 + s, like a shell
    finally:
        os._exit(125)


def _job_memory_mb(caps: dict, pid: int) -> float:
    """Total resident memory of the job's processes (fallback when no cgroup): in a job pid namespace
    this monitor's /proc is the job's own; else the runner's process group."""
    page_mb = os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    total = 0.0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if not caps["proc"]:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[2]) != pid:
                        continue
            with open(f"/proc/{name}/statm") as f:
                total += int(f.read().split()[1]) * page_mb
        except (OSError, ValueError, IndexError):
            continue
    return total


def _monitor(job: dict, caps: dict, result_fd: int) -> None:
    """Trusted parent of one runner: isolates it, times it, decides its verdict. Never returns."""
    status, detail = "error", "monitor failed"
    started = time.perf_counter()
    workdir, cgroup = None, None
    try:
        os.setsid()
        memory_mb = int(job["memory_mb"])
        if caps["cgroup"]:
            cgroup = JobCgroup(caps["cgroup"], f"mixmerge-{os.getppid()}-{job['id']}", memory_mb,
                               int(job["max_procs"]))
        if caps["jobns"]:
            err = enter_job_namespaces(int(job["file_mb"]))
            if err:
                raise OSError(err)
            workdir = tempfile.mkdtemp(prefix="job-", dir="/tmp")
        else:
            workdir = tempfile.mkdtemp(prefix="mixmerge-sandbox-")
        if os.geteuid() == 0:
            os.chown(workdir, NOBODY_ID, NOBODY_ID)
        token = os.urandom(16)
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            if cgroup is not None:
                cgroup.join()
            if caps["jobns"]:
                _namespace_init(job, caps, workdir, token, wfd)
            run_untrusted(job, caps, workdir, token, wfd)
        os.close(wfd)
        if cgroup is not None:
            cgroup.close_fds()
        pidfd = os.pidfd_open(pid)
        deadline = started + float(job["timeout_s"])
        data, exited, timed_out, over_memory = b"", None, False, False
        while exited is None:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                timed_out = True
                break
            wait_s = remaining if cgroup is not None else min(remaining, POLL_S)
            ready, _, _ = select.select([pidfd] + ([rfd] if rfd != -1 else []), [], [], wait_s)
            if rfd in ready:
                chunk = os.read(rfd, 4096)
                if not chunk:  # every writer closed; keep waiting for the exit itself
                    os.close(rfd)
                    rfd = -1
                elif len(data) < 4096:
                    data += chunk
            if pidfd in ready:  # peek at the exit without reaping, so the pid cannot be reused yet
                exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            elif cgroup is None and _job_memory_mb(caps, pid) > memory_mb:
                over_memory = True
                break
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
        elif over_memory:
            status, detail = "failed", f"its processes used more than eval.memory_mb={memory_mb} MB in total"
        elif clean_exit and exited.si_status == 0 and data == token:
            status, detail = "passed", ""
        elif data[:1] in (b"F", b"E"):
            status = "failed"
            detail = data[1:].decode("utf-8", "replace")
        elif not clean_exit:
            status, detail = "failed", f"killed by signal {exited.si_status}"
        elif exited.si_status > 128 and caps["jobns"]:
            status, detail = "failed", f"killed by signal {exited.si_status - 128}"
        else:
            status = "failed"
            detail = f"exited with status {exited.si_status} without finishing the tests"
        if cgroup is not None and not cgroup.remove():
            status, detail = "error", "processes of the job outlived it (its cgroup could not be removed)"
    except BaseException as exc:  # a bug here must still produce a verdict, never a pass
        status, detail = "error", f"monitor: {type(exc).__name__}: {exc}"
    finally:
        try:  # the verdict first (one line), the cleanup after, off the critical path
            elapsed = time.perf_counter() - started
            os.write(result_fd, json.dumps({"status": status, "detail": detail,
                                            "elapsed_s": round(elapsed, 4)}).encode() + b"\n")
            if workdir is not None and not caps["jobns"]:
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
    caps = prepare_launcher(header)
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
