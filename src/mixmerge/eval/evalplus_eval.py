"""HumanEval+ / MBPP+ pass@1 of one model: base and plus side by side, under per-problem time limits.

For each enabled section (``eval.humaneval_plus``, ``eval.mbpp_plus``; data and tests: ``eval/evalplus.py``):
a seeded subset of the file's problems, one greedy completion per problem, executed in the sandbox on the
original inputs (base) and, when it passes those, on the original plus EvalPlus's inputs (plus). Each program
runs under EvalPlus's limit ``max(time_floor_s, time_factor x its ground truth's runtime)``, the ground truth
being timed here and now, in the same sandbox, so a slower machine gets proportionally longer limits
(``eval.timeout_s`` is not used). Metrics: ``<task>/<benchmark>_plus_base_pass@1`` and
``<task>/<benchmark>_plus_pass@1``, with each problem's 0/1 outcome for intervals and paired tests.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mixmerge.eval.evalplus import (
    DEFAULT_FACTOR,
    DEFAULT_FLOOR_S,
    EvalPlusDataError,
    PlusProblem,
    load_evalplus,
    resolve_path,
    time_limit_s,
)
from mixmerge.eval.generate import generate
from mixmerge.eval.limits import GENEROUS_TIMEOUT_S, sandbox_limits
from mixmerge.eval.problems import build_program, extract_solution, problem_prompt, seeded_subset
from mixmerge.eval.sandbox import Result, run_programs

log = logging.getLogger(__name__)

SECTIONS = {"humaneval_plus": "humaneval", "mbpp_plus": "mbpp"}  # eval.<section> -> EvalPlus benchmark
SETTINGS = ("enabled", "path", "limit", "max_new_tokens", "time_factor", "time_floor_s")


@dataclass(frozen=True)
class PlusSettings:
    """One enabled ``eval.<section>``, checked: where its file is and how it is run."""

    section: str  # humaneval_plus | mbpp_plus
    benchmark: str  # humaneval | mbpp
    path: Path
    limit: int | None  # seeded subset size; None = every problem
    max_new_tokens: int
    time_factor: float
    time_floor_s: float


@dataclass(frozen=True)
class EvalPlusPart:
    """One section's result, with the fields of ``suite.EvalPart`` (metrics, per-problem records, seconds) and
    ``samples``: per metric, ``{problem id: [passed (0/1), 1]}``."""

    metrics: dict[str, float]
    records: list[dict]
    seconds: float
    samples: dict[str, dict[str, list[int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """One solution judged: base and plus results (plus is None when base failed) and the limits used."""

    base: Result
    plus: Result | None
    base_limit_s: float
    plus_limit_s: float

    @property
    def plus_passed(self) -> bool:
        return self.base.passed and self.plus is not None and self.plus.passed


def _positive(section: str, name: str, value, kind: type) -> float | int:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok or (kind is int and value != int(value)):
        raise ValueError(f"eval.{section}.{name}={value!r} must be a positive {'integer' if kind is int else 'number'}")
    return kind(value)


def plus_settings(eval_cfg: Mapping) -> list[PlusSettings]:
    """The checked settings of every enabled EvalPlus section; an error names the field and the fix."""
    out = []
    for section, benchmark in SECTIONS.items():
        raw = eval_cfg.get(section)
        if raw is None:
            continue
        if not isinstance(raw, Mapping):
            raise ValueError(f"eval.{section} must be a mapping of {', '.join(SETTINGS)}, got {raw!r}")
        unknown = sorted(set(raw) - set(SETTINGS))
        if unknown:
            raise ValueError(f"eval.{section} has unknown settings {unknown}; known: {', '.join(SETTINGS)}")
        enabled = raw.get("enabled", False)
        if not isinstance(enabled, bool):
            raise ValueError(f"eval.{section}.enabled={enabled!r} must be true or false")
        if not enabled:
            continue
        limit = raw.get("limit")
        out.append(PlusSettings(
            section=section, benchmark=benchmark, path=resolve_path(benchmark, raw.get("path")),
            limit=None if limit is None else _positive(section, "limit", limit, int),
            max_new_tokens=_positive(section, "max_new_tokens", raw.get("max_new_tokens", 256), int),
            time_factor=_positive(section, "time_factor", raw.get("time_factor", DEFAULT_FACTOR), float),
            time_floor_s=_positive(section, "time_floor_s", raw.get("time_floor_s", DEFAULT_FLOOR_S), float),
        ))
    return out


def check_evalplus(eval_cfg: Mapping) -> None:
    """Preflight: every enabled section's settings are valid and its file loads, before any model work."""
    for settings in plus_settings(eval_cfg):
        problems = load_evalplus(settings.path, settings.benchmark)
        log.info("eval.%s: %d problems in %s, %s evaluated", settings.section, len(problems), settings.path,
                 "all" if settings.limit is None else min(settings.limit, len(problems)))


def data_fingerprints(eval_cfg: Mapping) -> dict[str, str]:
    """``{section: sha256 of its file}`` for every enabled section: what an evaluation cache key needs besides
    the config, since the file behind a path (or ``$HUMANEVAL_OVERRIDE_PATH``) can change."""
    return {s.section: hashlib.sha256(s.path.read_bytes()).hexdigest() for s in plus_settings(eval_cfg)}


def ground_truth_seconds(problems: Sequence[PlusProblem], eval_cfg: Mapping) -> list[tuple[float, float]]:
    """``(base, plus)`` runtime of each problem's ground truth in the sandbox, under a generous time limit
    and the eval's memory limit; a ground truth that fails its own test is a broken row or a too small
    ``eval.memory_mb``, and stops the evaluation (its limits would be meaningless)."""
    programs = [build_program(test, test.canonical_solution) for p in problems for test in (p.base, p.plus)]
    results = run_programs(programs, **{**sandbox_limits(eval_cfg), "timeout_s": GENEROUS_TIMEOUT_S})
    for i, result in enumerate(results):
        if not result.passed:
            problem, which = problems[i // 2], ("base", "plus")[i % 2]
            raise EvalPlusDataError(
                f"the ground truth of {problem.base.task_id} fails its own {which} test ({result.describe()}) "
                f"under eval.memory_mb={sandbox_limits(eval_cfg)['memory_mb']} and {GENEROUS_TIMEOUT_S} s: "
                "a corrupt EvalPlus file, or raise eval.memory_mb")
    return [(results[2 * i].elapsed_s, results[2 * i + 1].elapsed_s) for i in range(len(problems))]


def measured_limits(problems: Sequence[PlusProblem], *, settings: PlusSettings,
                    eval_cfg: Mapping) -> list[tuple[float, float]]:
    """``(base, plus)`` time limit of each problem: EvalPlus's ``max(floor, factor x ground truth)``."""
    return [(time_limit_s(base, factor=settings.time_factor, floor_s=settings.time_floor_s),
             time_limit_s(plus, factor=settings.time_factor, floor_s=settings.time_floor_s))
            for base, plus in ground_truth_seconds(problems, eval_cfg)]


def judge_solutions(problems: Sequence[PlusProblem], solutions: Sequence[str], *,
                    limits: Sequence[tuple[float, float]], eval_cfg: Mapping, style: str) -> list[Verdict]:
    """Base and plus verdicts of ``solutions[i]`` on ``problems[i]``, under its ``(base, plus)`` limits."""
    sandbox = sandbox_limits(eval_cfg)
    base = run_programs([build_program(p.base, s, style) for p, s in zip(problems, solutions, strict=True)],
                        **{**sandbox, "timeout_s": [b for b, _ in limits]})
    # plus inputs include the base ones: a solution that failed base cannot pass plus, so it is not run again
    again = [i for i, r in enumerate(base) if r.passed]
    plus = dict(zip(again, run_programs([build_program(problems[i].plus, solutions[i], style) for i in again],
                                        **{**sandbox, "timeout_s": [limits[i][1] for i in again]}), strict=True))
    return [Verdict(base[i], plus.get(i), *limits[i]) for i in range(len(problems))]


def pass_at_1(task: str, section: str, ids: Sequence[str], verdicts: Sequence[Verdict]):
    """Base and plus pass@1 (greedy: the share of problems passed) and each problem's 0/1 outcome."""
    outcomes = {f"{task}/{section}_base_pass@1": [v.base.passed for v in verdicts],
                f"{task}/{section}_pass@1": [v.plus_passed for v in verdicts]}
    metrics = {name: sum(passed) / len(passed) for name, passed in outcomes.items()}
    samples = {name: {i: [int(p), 1] for i, p in zip(ids, passed, strict=True)} for name, passed in outcomes.items()}
    return metrics, samples


def evaluate_evalplus(model, tokenizer, *, task: str, eval_cfg: Mapping, style: str) -> dict[str, EvalPlusPart]:
    """Every enabled EvalPlus section of one model, by section name (``{}`` when none is enabled)."""
    parts = {}
    seed = int(eval_cfg.get("seed", 0))
    for settings in plus_settings(eval_cfg):
        started = time.perf_counter()
        problems = seeded_subset(load_evalplus(settings.path, settings.benchmark), settings.limit, seed)
        limits = measured_limits(problems, settings=settings, eval_cfg=eval_cfg)  # before generating: fails fast
        tests = [p.base for p in problems]
        prompts = [problem_prompt(t, tokenizer, style, task) for t in tests]
        seconds: list[float] = []
        outputs = generate(model, tokenizer, prompts, max_new_tokens=settings.max_new_tokens,
                           batch_size=int(eval_cfg.get("batch_size", 8)),
                           stop=tests[0].stop if style == "completion" else (), seed=seed,
                           desc=f"{settings.section} greedy", seconds_out=seconds)
        solutions = [extract_solution(t, outs[0], style) for t, outs in zip(tests, outputs, strict=True)]
        verdicts = judge_solutions(problems, solutions, limits=limits, eval_cfg=eval_cfg, style=style)
        ids = [t.task_id for t in tests]
        metrics, samples = pass_at_1(task, settings.section, ids, verdicts)
        records = [{"task_id": t.task_id, "prompt": prompt, "completion": outs[0], "solution": solution,
                    "base_passed": v.base.passed, "plus_passed": v.plus_passed, "base_result": v.base.describe(),
                    "plus_result": "not run (failed base)" if v.plus is None else v.plus.describe(),
                    "base_limit_s": round(v.base_limit_s, 4), "plus_limit_s": round(v.plus_limit_s, 4),
                    "base_exec_time_s": v.base.elapsed_s, "plus_exec_time_s": v.plus and v.plus.elapsed_s,
                    "gen_time_s": round(s, 4)}
                   for t, prompt, outs, solution, v, s in zip(tests, prompts, outputs, solutions, verdicts, seconds,
                                                             strict=True)]
        log.info("%s: %s (per-problem limits %.2f-%.2f s)", settings.section,
                 {k: round(v, 4) for k, v in metrics.items()}, min(min(v.base_limit_s, v.plus_limit_s) for v in verdicts),
                 max(max(v.base_limit_s, v.plus_limit_s) for v in verdicts))
        parts[settings.section] = EvalPlusPart(metrics, records, time.perf_counter() - started, samples)
    return parts
