"""The evaluation stage for one model: every configured metric, per-problem records, cached.

``evaluate_model`` runs, for each task in ``heldout``: held-out loss (``<task>/loss``), then the task's
evaluator from its row in ``mixmerge.tasks`` (codegen: HumanEval and optionally MBPP pass@1 from greedy
completions and pass@k from ``n`` samples, executed in the sandbox; codesum: the smoothed BLEU-4 of generated
summaries; repair: exact match of greedy repairs, ``eval/repair.py``). The stages cache the whole result
(``stages.ensure_evaluation``) under the variant's key, ``eval_cache_config(eval)``, the prompt style
and the held-out data, so a rerun or a sweep never generates or executes twice for the same model.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mixmerge.data.example import Example, render_prompt
from mixmerge.eval.evalplus_eval import check_evalplus, data_fingerprints, evaluate_evalplus
from mixmerge.eval.generate import generate
from mixmerge.eval.limits import check_limits, sandbox_limits
from mixmerge.eval.lm_eval_tasks import evaluate_lm_eval, lm_eval_cache_key
from mixmerge.eval.loss import heldout_nll_sums, loss_of
from mixmerge.eval.metrics import pass_at_k, sentence_bleu, smoothed_bleu4
from mixmerge.eval.postprocess import SUMMARY_STOP, first_sentence
from mixmerge.eval.problems import (
    CodeProblem,
    build_program,
    extract_solution,
    load_humaneval,
    load_mbpp,
    problem_prompt,
    seeded_subset,
)
from mixmerge.eval.sandbox import run_programs
from mixmerge.eval.uncertainty import Sample, samples_from_json, samples_to_json, unique_ids
from mixmerge.files import write_json_atomic, write_jsonl_atomic
from mixmerge.tasks import TASKS, task_spec

log = logging.getLogger(__name__)

# Keys that do not change what is computed (only how fast, whether to cache, or strategy=score's inputs).
_NOT_IN_KEY = ("workers", "cache", "samples", "bleu", "allow_unsafe_sandbox", "bootstrap")
# What an evaluation artifact holds; 2 = with ``samples.json`` (per-example observations behind each metric).
EVAL_FORMAT = 2
SAMPLES_FILE = "samples.json"


@dataclass(frozen=True)
class EvalPart:
    """One part of a task's evaluation: its metrics, per-problem records (``<part>.jsonl``), seconds, and
    per metric the per-example observations it is the mean (or ratio of sums) of, for intervals and
    paired tests (``eval/uncertainty.py``)."""

    metrics: dict[str, float]
    records: list[dict]
    seconds: float
    samples: dict[str, Sample] = field(default_factory=dict)


# A task's evaluator (``TaskSpec.evaluator``): (model, tokenizer, held-out examples, *, task, eval_cfg, style)
# -> {part name: EvalPart}; {} when its ``eval`` sections are disabled.
Evaluator = Callable[..., dict[str, EvalPart]]


def _imported(target: str | None):
    """The function a task row names as ``"module:function"``, imported on first use (None stays None)."""
    if target is None:
        return None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def evaluator_of(task: str) -> Evaluator | None:
    """The evaluator function named by ``task``'s row (None: held-out loss only)."""
    return _imported(task_spec(task).evaluator)


def preflight_of(task: str) -> Callable[[Mapping], None] | None:
    """The check ``task``'s row runs on the eval config before any model work (None: nothing to check)."""
    return _imported(task_spec(task).preflight)


def execute_solutions(
    problems: Sequence[CodeProblem], solutions: Sequence[str], *, style: str, eval_cfg: Mapping
) -> list:
    """Sandbox verdicts for ``solutions[i]`` against ``problems[i]``."""
    programs = [build_program(p, s, style) for p, s in zip(problems, solutions, strict=True)]
    return run_programs(programs, **sandbox_limits(eval_cfg))


def pass_at_k_table(correct: Mapping[str, list[bool]], ks: Sequence[int]) -> dict[int, float]:
    """Mean unbiased pass@k over problems, for every k not above the samples per problem."""
    out = {}
    for k in ks:
        if all(len(v) >= k for v in correct.values()):
            out[k] = sum(pass_at_k(len(v), sum(v), k) for v in correct.values()) / len(correct)
    return out


def _eval_benchmark(model, tokenizer, name: str, problems: list[CodeProblem], eval_cfg: Mapping,
                    style: str, task: str) -> tuple[dict[str, float], list[dict]]:
    """pass@1 (greedy) and pass@k (sampled) on one benchmark, plus its per-sample records."""
    bench_cfg = dict(eval_cfg.get(name) or {})
    prompts = [problem_prompt(p, tokenizer, style, task) for p in problems]
    stop = problems[0].stop if style == "completion" else ()
    runs = [("greedy", 1, 0.0)]
    n = int(eval_cfg.get("n", 1))
    if n > 1:
        runs.append(("sampled", n, float(eval_cfg.get("temperature", 0.8))))
    metrics, records, samples = {}, [], {}
    ids = unique_ids([p.task_id for p in problems])
    for mode, n_samples, temperature in runs:
        seconds: list[float] = []
        outputs = generate(model, tokenizer, prompts, max_new_tokens=int(bench_cfg.get("max_new_tokens", 256)),
                           batch_size=int(eval_cfg.get("batch_size", 8)), n=n_samples, temperature=temperature,
                           top_p=float(eval_cfg.get("top_p", 1.0)), stop=stop, seed=int(eval_cfg.get("seed", 0)),
                           desc=f"{name} {mode}", seconds_out=seconds)
        flat = [(i, j, out) for i, outs in enumerate(outputs) for j, out in enumerate(outs)]
        solutions = [extract_solution(problems[i], out, style) for i, _, out in flat]
        results = execute_solutions([problems[i] for i, _, _ in flat], solutions, style=style, eval_cfg=eval_cfg)
        correct: dict[str, list[bool]] = {p.task_id: [] for p in problems}
        for (i, j, out), solution, result in zip(flat, solutions, results, strict=True):
            correct[problems[i].task_id].append(result.passed)
            records.append({"task_id": problems[i].task_id, "mode": mode, "sample": j, "prompt": prompts[i],
                            "completion": out, "solution": solution, "passed": result.passed,
                            "result": result.describe(), "gen_time_s": round(seconds[i] / n_samples, 4),
                            "exec_time_s": result.elapsed_s})
        table = pass_at_k_table(correct, [1] if mode == "greedy" else [k for k in eval_cfg.get("k", [1]) if k > 1])
        metrics.update({f"{task}/{name}_pass@{k}": v for k, v in table.items()})
        for k in table:  # pass@k is the mean over problems of each problem's unbiased pass@k
            outcomes = [correct[p.task_id] for p in problems]
            samples[f"{task}/{name}_pass@{k}"] = Sample.of_scores(
                {i: pass_at_k(len(v), sum(v), k) for i, v in zip(ids, outcomes, strict=True)})
    return metrics, records, samples


def evaluate_code_benchmarks(model, tokenizer, examples: Sequence[Example], *, task: str, eval_cfg: Mapping,
                             style: str) -> dict[str, EvalPart]:
    """The code-generation evaluator: HumanEval and MBPP (each when enabled in ``eval``), executed in the
    sandbox; the benchmarks are fixed problem sets, so the task's own held-out ``examples`` are not used."""
    parts = {}
    for name, problems in _benchmark_problems(eval_cfg, int(eval_cfg.get("seed", 0))).items():
        started = time.perf_counter()
        metrics, records, samples = _eval_benchmark(model, tokenizer, name, problems, eval_cfg, style, task)
        parts[name] = EvalPart(metrics, records, time.perf_counter() - started, samples)
    parts.update(evaluate_evalplus(model, tokenizer, task=task, eval_cfg=eval_cfg, style=style))  # HumanEval+/MBPP+
    return parts


def check_code_benchmark_limits(eval_cfg: Mapping) -> None:
    """Preflight of the code-generation row: limits that fail a canonical solution would fail every sample."""
    check_evalplus(eval_cfg)  # HumanEval+/MBPP+ settings and files
    benchmarks = _benchmark_problems(eval_cfg, int(eval_cfg.get("seed", 0)))
    if benchmarks:
        check_limits([p for problems in benchmarks.values() for p in problems], eval_cfg)


# Completion-style summaries often start with a newline after "# Summary:", so a "\n" stop string would
# end them before their first word; they run to EOS or max_new_tokens and ``first_sentence`` cuts them.
def evaluate_summaries(model, tokenizer, examples: Sequence[Example], *, task: str, eval_cfg: Mapping,
                       style: str) -> dict[str, EvalPart]:
    """The summarization evaluator: smoothed BLEU-4 of generated one-sentence summaries on a seeded subset of
    the held-out ``examples``, when ``eval.codesum.enabled``."""
    cfg = dict(eval_cfg.get("codesum") or {})
    if not cfg.get("enabled", False):
        return {}
    started = time.perf_counter()
    examples = seeded_subset(list(examples), cfg.get("limit"), int(eval_cfg.get("seed", 0)))
    prompts = [render_prompt(ex, tokenizer, style) for ex in examples]
    seconds: list[float] = []
    outputs = generate(model, tokenizer, prompts, max_new_tokens=int(cfg.get("max_new_tokens", 32)),
                       batch_size=int(eval_cfg.get("batch_size", 8)), stop=SUMMARY_STOP if style == "chat" else (),
                       seed=int(eval_cfg.get("seed", 0)), desc=f"{task} generate", seconds_out=seconds)
    predictions = [first_sentence(outs[0]) for outs in outputs]
    references = [ex.target.strip() for ex in examples]
    scores = [100 * sentence_bleu([ref], pred) for ref, pred in zip(references, predictions, strict=True)]
    records = [{"id": ex.id, "prompt": p, "completion": outs[0], "prediction": pred, "reference": ref,
                "bleu4": round(score, 4), "gen_time_s": round(s, 4)}
               for ex, p, outs, pred, ref, score, s in zip(examples, prompts, outputs, predictions, references,
                                                           scores, seconds, strict=True)]
    metrics = {f"{task}/bleu4": smoothed_bleu4(references, predictions)}
    # CodeXGLUE's smoothed BLEU-4 is the mean of these per-example scores, so they are its sample
    samples = {f"{task}/bleu4": Sample.of_scores(dict(zip(unique_ids([ex.id for ex in examples]), scores,
                                                          strict=True)))}
    return {task: EvalPart(metrics, records, time.perf_counter() - started, samples)}


def _benchmark_problems(eval_cfg: Mapping, seed: int) -> dict[str, list[CodeProblem]]:
    """The seeded problem subset of every enabled code benchmark (humaneval, mbpp), by name."""
    out = {}
    for name in ("humaneval", "mbpp"):
        bench_cfg = dict(eval_cfg.get(name) or {})
        if not bench_cfg.get("enabled", False):
            continue
        if name == "mbpp":
            problems = load_mbpp(str(bench_cfg.get("source", "hub")), variant=str(bench_cfg.get("variant", "full")))
        else:
            problems = load_humaneval()
        out[name] = seeded_subset(problems, bench_cfg.get("limit"), seed)
    return out


def _evaluate(model, tokenizer, eval_cfg: Mapping, heldout: Mapping[str, Sequence[Example]], style: str,
              out_dir: Path) -> dict[str, float]:
    """Compute everything; write the per-problem JSONL files, ``eval_summary.json`` (metrics, seconds
    per part, subset caption) and ``samples.json`` (each metric's per-example observations) into ``out_dir``."""
    seed = int(eval_cfg.get("seed", 0))
    metrics: dict[str, float] = {}
    samples: dict[str, Sample] = {}
    timings: dict[str, float] = {}
    for task in heldout:  # before any work: a config an evaluator cannot honour stops the run here
        check = preflight_of(task)
        if check is not None:
            check(eval_cfg)
    loss_cfg = dict(eval_cfg.get("loss") or {})
    if loss_cfg.get("enabled", True):
        for task, examples in heldout.items():
            started = time.perf_counter()
            subset = seeded_subset(list(examples), loss_cfg.get("limit"), seed)
            sums = heldout_nll_sums(
                model, tokenizer, subset, prompt_style=style, batch_size=int(loss_cfg.get("batch_size", 8)),
                max_tokens=int(loss_cfg.get("max_tokens", 1024)), desc=f"{task} loss")
            metrics[f"{task}/loss"] = loss_of(sums)
            samples[f"{task}/loss"] = Sample.of_ratios(dict(zip(unique_ids([ex.id for ex in subset]), sums,
                                                                strict=True)))
            timings[f"{task}/loss"] = time.perf_counter() - started
    for task, examples in heldout.items():
        evaluator = evaluator_of(task)
        if evaluator is None:
            continue
        for part, result in evaluator(model, tokenizer, list(examples), task=task, eval_cfg=eval_cfg,
                                      style=style).items():
            metrics.update(result.metrics)
            samples.update({name: _as_sample(obs) for name, obs in result.samples.items()})
            write_jsonl_atomic(out_dir / f"{part}.jsonl", result.records)
            timings[part] = result.seconds
    # General-language tasks through lm-eval (not a task row: they check what every variant kept, not a task
    # it was trained on; see eval/lm_eval_tasks.py)
    if (eval_cfg.get("lm_eval") or {}).get("tasks"):
        started = time.perf_counter()
        lm_metrics, lm_stderr, lm_samples = evaluate_lm_eval(model, tokenizer, eval_cfg["lm_eval"], out_dir=out_dir)
        metrics.update(lm_metrics)
        samples.update(lm_samples)
        metrics.update({f"{name}_stderr": se for name, se in lm_stderr.items()})
        timings["lm_eval"] = time.perf_counter() - started
    write_json_atomic(out_dir / "eval_summary.json",
                      {"metrics": metrics, "seconds": timings, "caption": describe_subsets(eval_cfg)})
    write_json_atomic(out_dir / SAMPLES_FILE, samples_to_json(samples))
    log.info("evaluation took %s", {k: round(v, 1) for k, v in timings.items()})
    return metrics


def _as_sample(observations: Sample | Mapping[str, Sequence[float]]) -> Sample:
    """An evaluator's per-example observations: a ``Sample``, or ``{example id: [numerator, denominator]}``."""
    if isinstance(observations, Sample):
        return observations
    return Sample.of_ratios({i: (float(v[0]), float(v[1])) for i, v in observations.items()})


def load_samples(eval_dir: Path) -> dict[str, Sample]:
    """The per-example observations an evaluation wrote (``{}`` for an evaluation that computed nothing)."""
    path = Path(eval_dir) / SAMPLES_FILE
    return samples_from_json(json.loads(path.read_text())) if path.exists() else {}


def describe_subsets(eval_cfg: Mapping) -> str:
    """A caption for result tables saying which fixed subsets the metrics come from."""
    cfg = dict(eval_cfg or {})
    if not cfg.get("enabled", True):
        return "No evaluation (eval=none)."
    seed, parts = cfg.get("seed", 0), []
    sizes = {section: what for spec in TASKS.values() for section, what in spec.eval_sections.items()}
    for name, what in sizes.items():
        sub = dict(cfg.get(name) or {})
        if sub.get("enabled", False):
            limit = sub.get("limit")
            parts.append(f"{'all' if limit is None else f'a seeded subset of {limit}'} {what}")
    loss = dict(cfg.get("loss") or {})
    if loss.get("enabled", True):
        limit = loss.get("limit")
        parts.append(f"held-out loss on {'all' if limit is None else limit} examples per task")
    n = int(cfg.get("n", 1))
    sampling = f"; pass@k from {n} samples at T={cfg.get('temperature')}" if n > 1 else ""
    full = "" if all(dict(cfg.get(k) or {}).get("limit") is None for k in sizes) else " `eval=full` evaluates everything."
    return f"Evaluated on {', '.join(parts)} (seed {seed}); pass@1 greedy{sampling}.{full}"


def eval_cache_config(eval_cfg: Mapping) -> dict:
    """The part of an eval config that can change its results: the evaluation cache key (how many
    sandbox workers run, whether to cache, and the ``strategy=score`` inputs are left out)."""
    key = {k: v for k, v in dict(eval_cfg).items() if k not in _NOT_IN_KEY}
    key["_format"] = EVAL_FORMAT
    if (key.get("lm_eval") or {}).get("tasks"):  # lm-eval's version and the task files change results too
        key["lm_eval"] = {**dict(key["lm_eval"]), "_versions": lm_eval_cache_key(key["lm_eval"])}
    plus_data = data_fingerprints(key) if key.get("enabled", True) else {}
    if plus_data:  # the EvalPlus files themselves: the same path (or $HUMANEVAL_OVERRIDE_PATH) may hold new data
        key["_evalplus_data"] = plus_data
    return key


def evaluate_model(
    model,
    tokenizer,
    *,
    eval_cfg: Mapping,
    heldout: Mapping[str, Sequence[Example]],
    prompt_style: str,
    out_dir: Path | None,
) -> dict[str, float]:
    """Every configured metric for one model; ``{}`` when evaluation is disabled (``eval=none``).

    Per-problem JSONL and ``eval_summary.json`` go into ``out_dir`` when given (the pipeline caches
    around this call, by the variant's artifact key: see ``stages.ensure_evaluation``).
    """
    eval_cfg = dict(eval_cfg or {})
    if not eval_cfg.get("enabled", True):
        return {}
    if out_dir is None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return _evaluate(model, tokenizer, eval_cfg, heldout, prompt_style, Path(tmp))
    return _evaluate(model, tokenizer, eval_cfg, heldout, prompt_style, Path(out_dir))
