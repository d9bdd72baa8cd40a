"""Run untrusted test programs (model completions + their tests), each isolated, many at once.

The work happens in a small stdlib-only launcher process (``_zygote.py``) started with a scrubbed
environment: it forks a trusted monitor per program, which forks the runner that executes it with
rlimits, a private working dir, no network and (as root) the ``nobody`` user. See ``_zygote.py`` for
the verdict protocol and the isolation it applies; this module only feeds jobs and collects verdicts.
"""

from __future__ import annotations

import json
import logging
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


def _log_capabilities(caps: dict) -> None:
    key = json.dumps(caps, sort_keys=True)
    if key in _reported_caps:
        return
    _reported_caps.add(key)
    if not caps.get("netns"):
        log.warning("sandbox: no network namespace available; sockets are blocked in-process instead")
    if not caps.get("pidns_tmpfs"):
        log.warning("sandbox: no pid/mount namespace; leftovers are killed by process group, "
                    "and disk use is capped per file only (RLIMIT_FSIZE)")
    if not caps.get("drop_uid"):
        log.warning("sandbox: not root, so programs run as the harness's own user")
    log.info("sandbox isolation: %s", caps)


def run_programs(
    programs: Sequence[str],
    *,
    timeout_s: float = 3.0,
    memory_mb: int = 1024,
    workers: int | None = None,
    file_mb: int = 32,
    max_procs: int = 128,
    namespaces: bool = True,
) -> list[Result]:
    """Execute each program in its own isolated process; return one verdict per program, in order.

    ``timeout_s`` is wall-clock per program, ``memory_mb`` its address-space limit, ``file_mb`` the
    largest file (and tmpfs) it may write, ``workers`` how many run at once (default: usable cores).
    ``namespaces=False`` forces the fallback isolation used where the OS grants no namespaces.
    """
    if not programs:
        return []
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError(f"eval.timeout_s={timeout_s} and eval.memory_mb={memory_mb} must be positive")
    workers = workers or default_workers()
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    proc = subprocess.Popen(
        [sys.executable, "-I", str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env=env, cwd="/", close_fds=True, start_new_session=True,
    )

    def feed() -> None:
        try:
            proc.stdin.write((json.dumps({"workers": workers, "namespaces": namespaces}) + "\n").encode())
            for i, program in enumerate(programs):
                job = {"id": i, "program": program, "timeout_s": timeout_s, "memory_mb": memory_mb,
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
            if "hello" in msg:
                _log_capabilities(msg["hello"])
                continue
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
