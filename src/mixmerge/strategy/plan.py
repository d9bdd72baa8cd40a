"""``strategy=plan``: what a run (or each job of a sweep) would train, merge and evaluate, what the cache
already holds, and how long the rest should take, without training, merging or evaluating anything.

It walks the same stages as ``compare`` with a store that records instead of building (``PlanningStore``),
so the keys are exactly the ones a real run computes. Task data is read (and extracted once, if the cache
lacks it) because the keys hash the examples. Estimates come from the cache's own measurements: each
artifact's manifest records ``build_seconds`` (and trained models their ``steps``), so a planned build
costs the median of its kind on the same base, per step for training.

    python run.py strategy=plan model=tiny merge=dare
    python run.py -m strategy=plan merge=ties,dare merge.weight=0.3,0.7   # the last job prints the sweep total
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mixmerge.cache import MANIFEST, Artifact, ArtifactStore, content_key, write_json_atomic

log = logging.getLogger(__name__)

VERBS = {"base": "prepare base", "specialist": "train", "mixture": "train", "merged": "merge", "eval": "evaluate"}
# Every item planned by the jobs of this process (a sweep under the basic launcher runs its jobs here).
_SWEEP: dict[tuple[str, str], PlannedItem] = {}
_SWEEP_JOBS: list[str] = []


@dataclass
class PlannedItem:
    kind: str
    key: str
    label: str
    cached: bool
    estimate_s: float | None = None
    basis: str = ""


class NotBuilt(Exception):
    """Raised for a planned evaluation: nothing downstream of it needs its files."""


class PlanningStore(ArtifactStore):
    """An ArtifactStore that never builds: a hit is returned as usual, a miss is recorded and handed back
    as the folder it would occupy. ``dataset`` artifacts (task data) are built, since keys hash the data."""

    def __init__(self, root):
        super().__init__(root)
        self.items: list[PlannedItem] = []

    def get_or_build(self, kind, config, build, *, inputs=None, resumable=False, label=None, refresh=False):
        if kind == "dataset":
            return super().get_or_build(kind, config, build, inputs=inputs, resumable=resumable, label=label,
                                        refresh=refresh)
        key = content_key(kind, config, inputs)
        found = None if refresh else self.lookup(kind, key)
        item = PlannedItem(kind, key, label or kind, found is not None)
        if found is None:
            item.estimate_s, item.basis = estimate_seconds(self, kind, config, inputs or {})
        self.items.append(item)
        if found is not None:
            return found
        if kind == "eval":
            raise NotBuilt(label)
        return Artifact(kind, key, self.path_for(kind, key), {}, reused=False)


def _manifests(store: ArtifactStore, kind: str) -> list[dict]:
    folder = store.root / kind
    out = []
    for path in folder.glob(f"*/{MANIFEST}") if folder.is_dir() else []:
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return out


def estimate_seconds(store: ArtifactStore, kind: str, config: Mapping[str, Any],
                     inputs: Mapping[str, str]) -> tuple[float | None, str]:
    """Median measured build time of this kind in the cache, preferring artifacts on the same base (same
    evaluation settings for evaluations); for trained models, seconds per step times the planned steps."""
    measured = [m for m in _manifests(store, kind) if m.get("build_seconds") is not None]
    if kind == "eval":
        same = [m for m in measured if m.get("config") == json.loads(json.dumps(config, default=str))]
    else:
        same = [m for m in measured if inputs.get("base") and (m.get("inputs") or {}).get("base") == inputs["base"]]
    pool, where = (same, "same base" if kind != "eval" else "same eval settings") if same else (measured, "any")
    if not pool:
        return None, "no measurement in the cache"
    if kind in ("specialist", "mixture"):
        rates = [m["build_seconds"] / m["steps"] for m in pool if m.get("steps")]
        steps = (config.get("trainer") or {}).get("max_steps")
        if rates and steps and steps > 0:
            rate = statistics.median(rates)
            return rate * steps, f"{rate:.2f} s/step x {steps} steps ({len(rates)} measured, {where})"
    return statistics.median(m["build_seconds"] for m in pool), f"median of {len(pool)} measured ({where})"


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def format_plan(items: list[PlannedItem], title: str) -> str:
    lines = [title]
    for it in items:
        state = "cached" if it.cached else "TO DO "
        est = "" if it.cached else f"  ~{_fmt_s(it.estimate_s)}  ({it.basis})"
        lines.append(f"  {state}  {VERBS.get(it.kind, it.kind):<13} {it.label:<34} {it.key}{est}")
    todo = [it for it in items if not it.cached]
    known = [it.estimate_s for it in todo if it.estimate_s is not None]
    unknown = len(todo) - len(known)
    verbs = [VERBS.get(it.kind, it.kind) for it in todo]
    counts = ", ".join(f"{verbs.count(v)} {v}" for v in dict.fromkeys(VERBS.values()) if v in verbs)
    lines.append(f"  To run: {len(todo)} of {len(items)} ({counts or 'nothing'}); estimated {_fmt_s(sum(known))}"
                 + (f" plus {unknown} without a measurement" if unknown else "") + " (sequential, one device)")
    return "\n".join(lines)


def plan_compare(cfg: Mapping[str, Any], store: PlanningStore, tracker) -> list[PlannedItem]:
    """The compare strategy's stages with ``store`` recording; returns the planned items in order."""
    from mixmerge.data import load_tasks
    from mixmerge.models import resolve_base_model
    from mixmerge.stages import Variant, ensure_evaluation, ensure_merged, ensure_mixture, ensure_specialist

    want = set(cfg["strategy"]["variants"])
    base = resolve_base_model(cfg["model"], store)
    tasks = load_tasks(cfg["task"], store=ArtifactStore(store.root), seed=cfg["seed"])
    variants = [Variant("base", base.path, base.key)] if "base" in want else []
    specialists = []
    if want & {"specialists", "merged"}:
        specialists = [ensure_specialist(cfg, store, tracker, base, t, s) for t, s in tasks.items()]
        variants += specialists if "specialists" in want else []
    if "mixture" in want:
        if (base.path / "config.json").is_file():
            variants.append(ensure_mixture(cfg, store, tracker, base, tasks))
        else:  # the mixture's data is drawn with the base's tokenizer
            for kind, label in (("mixture", "mixture"), ("eval", "evaluation of mixture")):
                store.items.append(PlannedItem(kind, "(after the base)", label, False, None,
                                               "key known once the base exists"))
    if "merged" in want:
        in_memory = cfg["strategy"].get("merge_in_memory", False)
        variants.append(ensure_merged(cfg, store, base, specialists, in_memory=in_memory, task_data=tasks))
    if cfg["eval"].get("enabled", True):
        for v in variants:
            with contextlib.suppress(NotBuilt):
                ensure_evaluation(cfg, store, v, tasks)
    return store.items


def run(cfg: Mapping[str, Any], *, store: ArtifactStore, run_dir: Path, tracker) -> None:
    planner = PlanningStore(store.root)
    items = plan_compare(cfg, planner, tracker)
    overrides = _job_overrides()
    print(format_plan(items, f"Plan for {overrides or 'this run'} (nothing was run; cache {store.root}):"))
    write_json_atomic(run_dir / "plan.json", {"items": [asdict(i) for i in items]})
    for item in items:
        _SWEEP.setdefault((item.kind, item.key), item)
    _SWEEP_JOBS.append(overrides)
    if len(_SWEEP_JOBS) > 1:
        print(format_plan(list(_SWEEP.values()),
                          f"Sweep so far ({len(_SWEEP_JOBS)} jobs; shared artifacts counted once):"))
    return None


def _job_overrides() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return " ".join(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return ""
