"""Any lm-evaluation-harness task on a live model: the general-language retention check of every variant.

``evaluate_lm_eval`` wraps the model already in memory (an in-memory merge included) in lm-eval's
``HFLM`` and runs ``simple_evaluate`` once per configured task, so a trial never saves and reloads
weights. Results come back as ``lm_eval/<task>/<metric>`` with lm-eval's own standard errors
(``<metric>`` is lm-eval's name; a filter other than ``none`` stays attached, as in ``exact_match,strict-match``).

Config (``eval.lm_eval``)::

    tasks: [pydoc_next, {name: arc_easy, num_fewshot: 0, limit: 200, batch_size: 16}]
    include_path: null    # extra task folder(s); ours (lm_eval_local/, holding pydoc_next) is always searched
    num_fewshot: null     # defaults for entries that do not set their own
    limit: null           # examples per task (a float below 1 = a fraction); null = all
    batch_size: 8
    bootstrap_iters: 100000   # lm-eval's default; only non-mean metrics (BLEU, ...) are bootstrapped

Hub tasks (mmlu, arc_easy, hellaswag, ...) need their datasets online or in the local HF cache; the local
``pydoc_next`` task needs nothing.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixmerge.cache import write_json_atomic

log = logging.getLogger(__name__)

LOCAL_TASK_DIR = Path(__file__).with_name("lm_eval_local")
TASK_KEYS = frozenset({"name", "num_fewshot", "limit", "batch_size"})
CONFIG_KEYS = frozenset({"tasks", "include_path", "num_fewshot", "limit", "batch_size", "bootstrap_iters"})


@dataclass(frozen=True)
class LmEvalTask:
    """One configured lm-eval task or group, with its settings resolved."""

    name: str
    num_fewshot: int | None
    limit: int | float | None
    batch_size: int


def parse_tasks(lm_eval_cfg: Mapping[str, Any] | None) -> list[LmEvalTask]:
    """The configured tasks; a clear error naming the field for anything malformed (before any work)."""
    cfg = dict(lm_eval_cfg or {})
    unknown = set(cfg) - CONFIG_KEYS
    if unknown:
        raise ValueError(f"eval.lm_eval has unknown keys {sorted(unknown)}; allowed: {sorted(CONFIG_KEYS)}")
    entries = cfg.get("tasks") or []
    if isinstance(entries, str | Mapping):
        raise ValueError(f"eval.lm_eval.tasks must be a list (got {entries!r}); write eval.lm_eval.tasks=[{entries}]")
    tasks = []
    for i, entry in enumerate(entries):
        spec = {"name": entry} if isinstance(entry, str) else dict(entry) if isinstance(entry, Mapping) else None
        if spec is None or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise ValueError(f"eval.lm_eval.tasks[{i}]={entry!r}: give a task name or "
                             "{name: <task>, num_fewshot: ..., limit: ..., batch_size: ...}")
        extra = set(spec) - TASK_KEYS
        if extra:
            raise ValueError(f"eval.lm_eval.tasks[{i}] ({spec['name']}) has unknown keys {sorted(extra)}; "
                             f"allowed: {sorted(TASK_KEYS)}")
        fewshot = spec.get("num_fewshot", cfg.get("num_fewshot"))
        limit = spec.get("limit", cfg.get("limit"))
        batch_size = spec.get("batch_size", cfg.get("batch_size", 8))
        if fewshot is not None and (not isinstance(fewshot, int) or fewshot < 0):
            raise ValueError(f"eval.lm_eval.tasks[{i}] ({spec['name']}).num_fewshot={fewshot!r}: use an integer >= 0")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | float) or limit <= 0):
            raise ValueError(f"eval.lm_eval.tasks[{i}] ({spec['name']}).limit={limit!r}: use a count, a fraction "
                             "below 1, or null for all")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"eval.lm_eval.tasks[{i}] ({spec['name']}).batch_size={batch_size!r}: use an integer >= 1")
        tasks.append(LmEvalTask(spec["name"], fewshot, limit, batch_size))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"eval.lm_eval.tasks lists a task twice: {names}")
    return tasks


def include_paths(lm_eval_cfg: Mapping[str, Any] | None) -> list[str]:
    """Our local task folder plus ``eval.lm_eval.include_path`` (one folder or a list), each checked."""
    extra = (lm_eval_cfg or {}).get("include_path")
    extra = [] if extra is None else [extra] if isinstance(extra, str | Path) else list(extra)
    for path in extra:
        if not Path(path).expanduser().is_dir():
            raise FileNotFoundError(f"eval.lm_eval.include_path={str(path)!r} is not a folder; point it at a "
                                    "folder of lm-eval task YAMLs or set it to null")
    return [str(LOCAL_TASK_DIR), *(str(Path(p).expanduser().resolve()) for p in extra)]


def lm_eval_cache_key(lm_eval_cfg: Mapping[str, Any] | None) -> dict[str, str]:
    """What changes lm-eval results besides the config: lm-eval's version and the content of our task
    folder and every ``include_path`` folder (YAMLs, loaders, data), so an edited task is evaluated again."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    for folder in include_paths(lm_eval_cfg):
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return {"lm_eval": version("lm_eval"), "task_files": digest.hexdigest()[:16]}


# Indexing lm-eval's ~15k bundled task YAMLs takes tens of seconds, so managers are built once per process
# (a multirun's trials share them) and the bundled tasks are only indexed when a configured task needs them.
_MANAGERS: dict[tuple[tuple[str, ...], bool], Any] = {}


def task_manager(lm_eval_cfg: Mapping[str, Any] | None, tasks: Sequence[LmEvalTask]):
    """An lm-eval TaskManager that knows every configured task, or a clear error naming the field.

    Searches our folder and ``include_path`` first; lm-eval's bundled tasks are added only when a
    name is not found there. Unknown names fail here, before any model is touched.
    """
    from lm_eval.tasks import TaskManager

    paths = tuple(include_paths(lm_eval_cfg))
    for with_bundled in (False, True):
        key = (paths, with_bundled)
        if key not in _MANAGERS:
            _MANAGERS[key] = TaskManager(include_path=list(paths), include_defaults=with_bundled)
        manager = _MANAGERS[key]
        missing = [t.name for t in tasks if t.name not in set(manager.all_tasks)]
        if not missing:
            return manager
    raise ValueError(f"eval.lm_eval.tasks: lm-eval knows no task or group {missing}; check the name "
                     "(`lm_eval ls tasks`) or add its YAML folder with eval.lm_eval.include_path=<dir>")


def validate_lm_eval(lm_eval_cfg: Mapping[str, Any] | None) -> None:
    """Every configured task parses and exists (run at config validation, before any training)."""
    tasks = parse_tasks(lm_eval_cfg)
    if tasks:
        task_manager(lm_eval_cfg, tasks)


def split_metrics(task: str, row: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """lm-eval's result row for one task → ``({lm_eval/<task>/<metric>: value}, {same key: stderr})``.

    lm-eval writes ``"acc,none"`` and ``"acc_stderr,none"``; the ``none`` filter is dropped from the name.
    A stderr lm-eval could not compute (``"N/A"``) is left out rather than invented.
    """
    values, errors = {}, {}
    for key, value in row.items():
        if "," not in key or isinstance(value, str) or value is None:
            continue
        metric, filt = key.split(",", 1)
        if metric.endswith("_stderr"):
            continue
        name = f"lm_eval/{task}/{metric if filt == 'none' else f'{metric},{filt}'}"
        values[name] = float(value)
        se = row.get(f"{metric}_stderr,{filt}")
        if isinstance(se, int | float) and math.isfinite(se):
            errors[name] = float(se)
    return values, errors


def _rows_for(name: str, results: Mapping[str, Mapping]) -> dict[str, Mapping]:
    """The row of the requested task or group; a group without aggregated metrics reports its subtasks."""
    row = results.get(name) or {}
    if any("," in k and not isinstance(v, str) for k, v in row.items()):
        return {name: row}
    return {task: r for task, r in results.items() if task != name}


def per_example_records(samples: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict]:
    """lm-eval's logged samples as one small record per example: task, doc id, target, the filtered
    responses (per-choice loglikelihoods for multiple choice) and the example's metric values."""
    skip = {"doc", "arguments", "resps", "doc_hash", "prompt_hash", "target_hash", "filter", "metrics"}
    return [{"task": task, **{k: v for k, v in row.items() if k not in skip}}
            for task, rows in samples.items() for row in rows]


def per_example_samples(task: str, rows: Sequence[Mapping[str, Any]], values: Mapping[str, float]) -> dict:
    """``{lm_eval/<task>/<metric>: Sample}`` for each reported metric that is the mean of its per-document
    values in lm-eval's logged samples (acc, acc_norm, exact_match, ...): what intervals and paired tests
    resample. A metric lm-eval aggregates otherwise (BLEU, perplexity) gets none: it keeps lm-eval's stderr.
    """
    from mixmerge.eval.uncertainty import Sample, unique_ids

    out = {}
    ids = unique_ids([str(row.get("doc_id", i)) for i, row in enumerate(rows)])
    for name, value in values.items():
        metric = name.removeprefix(f"lm_eval/{task}/")
        per_doc = [row.get(metric) for row in rows]
        if not rows or not all(isinstance(v, int | float) for v in per_doc):
            continue
        scores = [float(v) for v in per_doc]
        if abs(sum(scores) / len(scores) - value) > 1e-9:
            continue
        out[name] = Sample.of_scores(dict(zip(ids, scores, strict=True)))
    return out


@contextmanager
def _global_rng_kept() -> Iterator[None]:
    """Restore Python's, numpy's and torch's global random state afterwards, so evaluating general tasks
    does not change what later sampling in the same process draws."""
    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def evaluate_lm_eval(model, tokenizer, lm_eval_cfg: Mapping[str, Any] | None, *,
                     out_dir: Path | None) -> tuple[dict[str, float], dict[str, float], dict]:
    """Run every ``eval.lm_eval.tasks`` entry on the live ``model``;
    ``({metric: value}, {metric: stderr}, {metric: per-example Sample})``.

    Writes ``lm_eval/<task>.json`` under ``out_dir`` when given: lm-eval's results, task config, settings,
    seconds, and one record per example (for audits and paired comparisons).
    Returns empty dicts when no task is configured (lm-eval is not even imported).
    """
    tasks = parse_tasks(lm_eval_cfg)
    if not tasks:
        return {}, {}, {}
    manager = task_manager(lm_eval_cfg, tasks)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    bootstrap_iters = int((lm_eval_cfg or {}).get("bootstrap_iters", 100000))
    was_training = model.training
    model.eval()
    metrics: dict[str, float] = {}
    stderr: dict[str, float] = {}
    samples: dict = {}
    try:
        for task in tasks:
            started = time.perf_counter()
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=task.batch_size)
            with _global_rng_kept():  # simple_evaluate reseeds random, numpy and torch for its own runs
                out = simple_evaluate(model=lm, tasks=[task.name], num_fewshot=task.num_fewshot, limit=task.limit,
                                      task_manager=manager, bootstrap_iters=bootstrap_iters, log_samples=True)
            seconds = time.perf_counter() - started
            for name, row in _rows_for(task.name, out["results"]).items():
                values, errors = split_metrics(name, row)
                metrics.update(values)
                samples.update(per_example_samples(name, (out.get("samples") or {}).get(name) or [], values))
                stderr.update(errors)
            log.info("lm-eval %s: %s in %.1f s", task.name,
                     {k: round(v, 4) for k, v in metrics.items() if k.startswith(f"lm_eval/{task.name}/")}, seconds)
            if out_dir is not None:
                write_json_atomic(Path(out_dir) / "lm_eval" / f"{task.name}.json",
                                  {"results": out["results"], "n_samples": out.get("n-samples"),
                                   "configs": out.get("configs"), "versions": out.get("versions"),
                                   "settings": {"num_fewshot": task.num_fewshot, "limit": task.limit,
                                                "batch_size": task.batch_size, "bootstrap_iters": bootstrap_iters},
                                   "seconds": seconds, "examples": per_example_records(out.get("samples") or {})})
    finally:
        model.train(was_training)
    return metrics, stderr, samples
