"""Run untrusted test programs (model completions + their tests), each isolated, many at once.

The work happens in a small stdlib-only launcher process (``_zygote.py``) started with a scrubbed
environment: it forks a trusted monitor per program, which forks the runner that executes it with
rlimits, a private working dir, no network and an unprivileged identity. See ``_zygote.py`` for
the verdict protocol and the isolation it applies; this module only feeds jobs and collects verdicts,
and refuses to run anything when the launcher reports that real isolation is missing (unless the
caller opts in with ``allow_unsafe=True``, i.e. ``eval.allow_unsafe_sandbox=true``).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ZYGOTE = Path(__file__).with_name("_zygote.py")
# The only variables the launcher inherits; secrets (W&B, HF tokens, cloud keys) never reach it.
_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ")
_reported_caps: set[str] = set()


class UnsafeSandboxError(RuntimeError):
    """Real isolation is not available here and the caller did not opt into running without it."""


@dataclass(frozen=True)
class Result:
    """The verdict on one program: ``status`` is passed, failed, timed out or error."""

    status: str
    detail: str
    elapsed_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def describe(self) -> str:
        return self.status if not self.detail else f"{self.status}: {self.detail}"


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def describe_identity(caps: dict) -> str:
    """Who samples run as, in words (what the launcher actually set up, not what was hoped for)."""
    if caps["runner_uid"] == 65534 and caps["launcher_uid"] == 0:
        return "nobody (uid 65534)"
    if caps["userns"]:
        return f"the harness's uid {caps['runner_uid']} inside a user namespace, with no capabilities"
    return f"the harness's own uid {caps['runner_uid']}"


def _check_capabilities(caps: dict, allow_unsafe: bool) -> None:
    missing = caps["missing"]
    key = json.dumps(caps, sort_keys=True)
    if missing and not allow_unsafe:
        raise UnsafeSandboxError(
            "eval.allow_unsafe_sandbox=false: refusing to execute untrusted code without real isolation. "
            f"Missing: {'; '.join(missing)}. Samples would run as {describe_identity(caps)}. Fix: run as "
            "root with CAP_SYS_ADMIN, or allow unprivileged user namespaces (sysctl "
            "user.max_user_namespaces>0, kernel.unprivileged_userns_clone=1, no seccomp/AppArmor block on "
            "unshare(CLONE_NEWUSER)); or set eval.allow_unsafe_sandbox=true to run with what remains "
            "(see README, Security)")
    if key in _reported_caps:
        return
    _reported_caps.add(key)
    for what in missing:
        log.warning("sandbox (eval.allow_unsafe_sandbox=true): running WITHOUT %s", what)
    log.info("sandbox: samples run as %s; user namespace %s, network namespace %s, per-job pid/mount/IPC "
             "namespaces %s, private /proc %s, read-only file system %s, job cgroup %s", describe_identity(caps),
             caps["userns"], caps["netns"], caps["jobns"], caps["proc"], caps["readonly"],
             f"v{caps['cgroup']['version']}" if caps["cgroup"] else "none (memory polled)")


def _per_program(timeout_s: float | Sequence[float], count: int) -> list[float]:
    """One wall-clock limit per program, from a shared limit or a sequence of exactly ``count`` limits."""
    if isinstance(timeout_s, numbers.Real):
        return [float(timeout_s)] * count
    limits = [float(t) for t in timeout_s]
    if len(limits) != count:
        raise ValueError(f"timeout_s has {len(limits)} limits for {count} programs; give one per program")
    return limits


def run_programs(
    programs: Sequence[str],
    *,
    timeout_s: float | Sequence[float] = 3.0,
    memory_mb: int = 1024,
    workers: int | None = None,
    file_mb: int = 32,
    max_procs: int = 64,
    namespaces: bool = True,
    allow_unsafe: bool = False,
) -> list[Result]:
    """Execute each program in its own isolated process; return one verdict per program, in order.

    ``timeout_s`` is wall-clock per program: one limit for all, or one per program (EvalPlus's
    per-problem limits, ``eval/evalplus.py``); ``memory_mb`` its address-space limit, ``file_mb`` the
    largest file (and tmpfs) it may write, ``workers`` how many run at once (default: usable cores).
    ``max_procs`` caps the processes of one program (its cgroup, else RLIMIT_NPROC).
    ``namespaces=False`` forces the fallback isolation used where the OS grants no namespaces.
    Raises :class:`UnsafeSandboxError` before running anything when real isolation is missing here,
    unless ``allow_unsafe`` (``eval.allow_unsafe_sandbox``).
    """
    if not programs:
        return []
    timeouts_s = _per_program(timeout_s, len(programs))
    if not all(0 < t < math.inf for t in timeouts_s) or memory_mb <= 0:
        raise ValueError(f"eval.timeout_s={timeout_s} and eval.memory_mb={memory_mb} must be positive (and finite)")
    workers = workers or default_workers()
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    proc = subprocess.Popen(
        [sys.executable, "-I", str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env=env, cwd="/", close_fds=True, start_new_session=True,
    )

    header = {"workers": workers, "namespaces": namespaces, "hide": [str(Path.home())],
              "prefix": sys.prefix, "base_prefix": sys.base_prefix}
    try:
        proc.stdin.write((json.dumps(header) + "\n").encode())
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"sandbox launcher {ZYGOTE} exited before reporting its isolation "
                               f"(code {proc.wait()})")
        hello = json.loads(line)["hello"]
        _check_capabilities(hello, allow_unsafe)
    except BaseException:
        proc.kill()
        proc.wait()
        raise

    def feed() -> None:
        try:
            for i, program in enumerate(programs):
                job = {"id": i, "program": program, "timeout_s": timeouts_s[i], "memory_mb": memory_mb,
                       "file_mb": file_mb, "max_procs": max_procs}
                proc.stdin.write((json.dumps(job) + "\n").encode())
            proc.stdin.close()
        except (BrokenPipeError, OSError):  # the launcher died; the reader reports it
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    results: list[Result | None] = [None] * len(programs)
    try:
        for line in proc.stdout:
            msg = json.loads(line)
            results[msg["id"]] = Result(msg["status"], msg["detail"], float(msg["elapsed_s"]))
    finally:
        writer.join(timeout=5)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise RuntimeError(f"sandbox launcher exited (code {proc.returncode}) without verdicts for "
                           f"{len(missing)} programs")
    return results  # type: ignore[return-value]
