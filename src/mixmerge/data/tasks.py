"""Task data as the pipeline sees it: every source becomes train/valid/test lists of ``Example``.

``load_tasks(task_cfg, ...)`` is the one entry point: it reads ``task.tasks`` (task name -> source
config), loads each task through its source (``stdlib``, ``hub``, ``local``, ``repair``), caps the splits with
``task.max_train_examples`` / ``task.max_eval_examples``, and checks that the embedded tasks are disjoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mixmerge.data.example import Example
from mixmerge.data.text import stable_hash, unit_interval

log = logging.getLogger(__name__)

SOURCES = ("stdlib", "hub", "local", "repair")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class TaskSplits:
    """One task's data: the three splits, a content key for caches, and counts/provenance."""

    task: str
    train: list[Example]
    valid: list[Example]
    test: list[Example]
    key: str
    info: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[Example]:
        if name not in SPLITS:
            raise ValueError(f"split {name!r} is not one of {SPLITS}")
        return getattr(self, name)

    def counts(self) -> dict[str, int]:
        return {s: len(self.split(s)) for s in SPLITS}


def splits_key(task: str, splits: Mapping[str, list[Example]]) -> str:
    """Content hash of exactly the examples a run will use (changes when any text, id or cap changes)."""
    payload = json.dumps(
        {"task": task, **{s: [e.to_dict() for e in splits[s]] for s in SPLITS}}, sort_keys=True
    )
    return stable_hash(payload, 20)


def cap(examples: list[Example], limit: int | None, *, seed: int) -> list[Example]:
    """At most ``limit`` examples, a subset drawn by ``seed`` (order fixed by seed and id, not by input order).

    Every caller with the same seed gets the same subset, which is what makes specialists and the mixture
    see exactly the same examples of each task.
    """
    ordered = sorted(examples, key=lambda e: (unit_interval(f"{seed}:{e.task}:{e.id}"), e.id))
    return ordered if limit is None or limit < 0 else ordered[: int(limit)]


def _load_source(task_name: str, source_cfg: Mapping[str, Any], store) -> tuple[dict[str, list[Example]], dict]:
    source = source_cfg.get("source")
    if source == "stdlib":
        from mixmerge.data.stdlib import load_stdlib_task

        return load_stdlib_task(task_name, source_cfg, store)
    if source == "hub":
        from mixmerge.data.hub import load_hub_task

        return load_hub_task(task_name, source_cfg)
    if source == "local":
        from mixmerge.data.local import load_local_task

        return load_local_task(task_name, source_cfg)
    if source == "repair":  # the code-repair task (data/repair_task.py): stdlib mutants or (buggy, fixed) tables
        from mixmerge.data.repair_task import load_repair_task

        return load_repair_task(task_name, source_cfg, store)
    raise ValueError(f"task.tasks.{task_name}.source={source!r} is not one of {SOURCES}")


def load_task_splits(
    task_name: str, source_cfg: Mapping[str, Any], *, store, seed: int, limits: Mapping[str, Any]
) -> TaskSplits:
    """Load one task from its source and cap its splits (``limits``: max_train_examples, max_eval_examples)."""
    full, info = _load_source(task_name, source_cfg, store)
    for s in SPLITS:
        if s not in full:
            raise ValueError(f"task.tasks.{task_name}: the source gave no {s!r} split")
        for ex in full[s]:
            if ex.task != task_name:
                raise ValueError(f"task.tasks.{task_name}: source returned an example of task {ex.task!r}")
    limited = {
        "train": cap(full["train"], limits.get("max_train_examples"), seed=seed),
        "valid": cap(full["valid"], limits.get("max_eval_examples"), seed=seed),
        "test": cap(full["test"], limits.get("max_eval_examples"), seed=seed),
    }
    info = {**info, "available": {s: len(full[s]) for s in SPLITS}, "counts": {s: len(limited[s]) for s in SPLITS}}
    splits = TaskSplits(task_name, limited["train"], limited["valid"], limited["test"],
                        splits_key(task_name, limited), info)
    log.info("task %s (%s): %s of %s available", task_name, info.get("source"), info["counts"], info["available"])
    return splits


def _function_hash(example: Example) -> str | None:
    """The normalised-body hash that stdlib ids end with (``stdlib:<module>:<qualname>:<hash>``)."""
    return example.id.rsplit(":", 1)[-1] if example.id.startswith("stdlib:") else None


def check_disjoint(tasks: Mapping[str, TaskSplits]) -> None:
    """Fail if any function appears in two tasks or if a prompt is shared between tasks."""
    owner: dict[str, str] = {}
    for name, ts in tasks.items():
        for s in SPLITS:
            for ex in ts.split(s):
                for mark in filter(None, (_function_hash(ex), "prompt:" + stable_hash(ex.prompt))):
                    other = owner.setdefault(mark, name)
                    if other != name:
                        raise ValueError(f"tasks {other!r} and {name!r} share an example ({ex.id}); "
                                         "give their stdlib sources the same codegen_share")


def load_tasks(task_cfg: Mapping[str, Any], *, store, seed: int) -> dict[str, TaskSplits]:
    """Every task of ``task_cfg`` (``task.tasks``), capped by the task config's limits, checked disjoint."""
    tasks_cfg = task_cfg.get("tasks")
    if not tasks_cfg:
        raise ValueError("task.tasks is empty; name at least one task, e.g. tasks: {codegen: {source: stdlib}}")
    limits = {k: task_cfg.get(k) for k in ("max_train_examples", "max_eval_examples")}
    shares = {
        name: (cfg.get("codegen_share", 0.5))
        for name, cfg in tasks_cfg.items()
        if cfg.get("source") == "stdlib"
    }
    if len(set(shares.values())) > 1:
        raise ValueError(f"task.tasks.*.codegen_share differ ({shares}); the stdlib pools are only disjoint "
                         "when every stdlib task uses the same codegen_share")
    out = {name: load_task_splits(name, dict(cfg), store=store, seed=seed, limits=limits)
           for name, cfg in tasks_cfg.items()}
    check_disjoint(out)
    return out
