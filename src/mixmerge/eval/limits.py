"""The sandbox limits of an eval config, and a check that they let the canonical solutions pass.

Limits so tight that even a benchmark's own reference solution fails (``eval.timeout_s=0.001``) make every
sample fail as well: pass@k would read 0 and be cached as if the model were at fault. So before any sample
runs, the canonical solutions of a few of the evaluated problems run under the same limits. One that fails
there but passes under generous limits proves the limits wrong, and the evaluation stops naming the
field, the canonical runtime measured and the fix (an error, not a warning: the numbers would be
meaningless, and cached). One that fails even under generous limits says nothing about the limits (a
broken benchmark row or sandbox) and is only warned about.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from mixmerge.eval.problems import CodeProblem, build_program
from mixmerge.eval.sandbox import run_programs

log = logging.getLogger(__name__)

CALIBRATION_PROBLEMS = 3  # canonical solutions run before the samples: enough to catch wrong limits, cheap
GENEROUS_TIMEOUT_S = 30.0
GENEROUS_MEMORY_MB = 4096


class LimitsTooTightError(ValueError):
    """eval.timeout_s / eval.memory_mb leave no room for even a canonical solution."""


def sandbox_limits(eval_cfg: Mapping) -> dict:
    """``run_programs`` keyword arguments from an eval config: per-program wall clock, memory, workers, and
    whether the user accepted a sandbox without real isolation."""
    return {"timeout_s": float(eval_cfg.get("timeout_s", 3.0)), "memory_mb": int(eval_cfg.get("memory_mb", 1024)),
            "workers": eval_cfg.get("workers"), "allow_unsafe": bool(eval_cfg.get("allow_unsafe_sandbox", False))}


def check_limits(problems: Sequence[CodeProblem], eval_cfg: Mapping) -> float | None:
    """Run the canonical solutions of the first few ``problems`` under the eval limits; return the slowest
    canonical runtime in seconds (None when no problem has a canonical solution).

    Raises LimitsTooTightError when one fails under the limits (twice) but passes under generous ones.
    """
    limits = sandbox_limits(eval_cfg)
    chosen = list({p.task_id: p for p in problems if p.canonical_solution}.values())[:CALIBRATION_PROBLEMS]
    if not chosen:
        log.info("limits check: no canonical solution among the evaluated problems; skipped")
        return None
    programs = [build_program(p, p.canonical_solution) for p in chosen]
    results = run_programs(programs, **limits)
    failed = [i for i, r in enumerate(results) if not r.passed]
    if failed:  # once more under the same limits, so a momentarily loaded machine is not blamed on them
        for i, again in zip(failed, run_programs([programs[i] for i in failed], **limits), strict=True):
            results[i] = again
        failed = [i for i in failed if not results[i].passed]
    if not failed:
        slowest = max(r.elapsed_s for r in results)
        log.info("limits check: %d canonical solutions pass under eval.timeout_s=%s eval.memory_mb=%s "
                 "(slowest %.3f s)", len(chosen), limits["timeout_s"], limits["memory_mb"], slowest)
        return slowest
    generous = {**limits, "timeout_s": max(GENEROUS_TIMEOUT_S, limits["timeout_s"]),
                "memory_mb": max(GENEROUS_MEMORY_MB, limits["memory_mb"])}
    reference = run_programs([programs[i] for i in failed], **generous)
    blamed = [(chosen[i], results[i], ref) for i, ref in zip(failed, reference, strict=True) if ref.passed]
    for i, ref in zip(failed, reference, strict=True):
        if not ref.passed:
            log.warning("limits check: the canonical solution of %s fails even under generous limits (%s); "
                        "it says nothing about eval.timeout_s / eval.memory_mb", chosen[i].task_id, ref.describe())
    if not blamed:
        return None
    problem, tight, ref = max(blamed, key=lambda b: b[2].elapsed_s)
    if tight.status == "timed out":
        fix = f"eval.timeout_s={max(3.0, round(10 * ref.elapsed_s, 1))}"
    else:  # killed or erroring under the memory cap
        fix = f"eval.memory_mb={1024 if limits['memory_mb'] < 1024 else generous['memory_mb']}"
    raise LimitsTooTightError(
        f"{fix.split('=')[0]}: under eval.timeout_s={limits['timeout_s']} and eval.memory_mb={limits['memory_mb']} "
        f"even the canonical solution of {problem.task_id} fails ({tight.describe()}), while it passes in "
        f"{ref.elapsed_s:.3f} s under timeout_s={generous['timeout_s']} memory_mb={generous['memory_mb']} "
        f"({len(blamed)} of {len(chosen)} canonical solutions checked fail so). Every sample would fail the same "
        f"way and pass@k would read 0. Raise the limit, e.g. {fix}.")
