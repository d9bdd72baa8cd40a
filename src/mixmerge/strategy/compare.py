"""`strategy=compare` (the default), and its presets `strategy=specialist` and `strategy=mixture`.

base → specialists → mixture → merged, each evaluated on every task's held-out data; one table
(``metrics.md``), ``metrics.json`` with the objective a sweeper reads, and the weight analysis with the
mix-or-merge recommendation checked against the measured results. ``strategy.variants`` picks the rows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mixmerge.cache import ArtifactStore
from mixmerge.eval.forgetting import changes_vs_base, describe_forgetting
from mixmerge.files import write_json_atomic, write_text_atomic
from mixmerge.models import BaseModel
from mixmerge.report import format_table
from mixmerge.stages import (
    Variant,
    ensure_base,
    ensure_evaluation,
    ensure_merged,
    ensure_mixture,
    ensure_specialist,
)
from mixmerge.tracking import Tracker

log = logging.getLogger(__name__)


def objective_value(cfg: Mapping[str, Any], results: Mapping[str, Mapping]) -> float | list[float] | None:
    """The number(s) a sweeper optimises: ``objective.variant`` / ``objective.metric`` (a list = multi-objective)
    under ``objective.statistic`` (mean: the metric; lcb: the worse end of its ci95, see sweep/objective.py)."""
    from mixmerge.sweep.objective import objective_values

    obj = cfg["objective"]
    variant = results.get(obj["variant"])
    if variant is None:
        return None
    values = objective_values(obj, variant)
    return values if isinstance(obj["metric"], list) else values[0]


def write_results(cfg, run_dir: Path, results: Mapping[str, Mapping], caption: str) -> float | list | None:
    """``metrics.json`` (variants, objective, resolved config) and ``metrics.md`` (the table); the objective."""
    objective = objective_value(cfg, results)
    write_json_atomic(run_dir / "metrics.json", {"variants": results, "objective": objective, "config": cfg})
    table = format_table({name: r["metrics"] for name, r in results.items()}, caption=caption)
    write_text_atomic(run_dir / "metrics.md", table + "\n")
    print("\n" + table + "\n")
    return objective


def describe_check(check: Mapping[str, Any]) -> str:
    """One paragraph on this run's merge(s): what won on the aggregate, by how much, what merging cost
    relative to the specialists, and which of those figures could not be computed."""
    verdict = {True: "the recommendation was right", False: "the recommendation was wrong"}.get(
        check.get("recommendation_correct"), "no verdict (a tie or a missing variant)")
    deg = (check.get("degradation") or {}).get("best_merge") or {}
    missing = [m["metric"] for m in deg.get("not_computed", [])]
    cost = [f"Best merge's mean degradation vs the specialists: {100 * deg['mean']:.1f}%."] if deg.get("per_task") else []
    if missing:
        cost.append(f"Not computed: degradation on {', '.join(missing)} (not evaluated in this run).")

    def num(key: str) -> str:  # None when a variant is missing (e.g. strategy=specialist has no mixture)
        return "n/a" if check.get(key) is None else f"{check[key]:.4f}"

    return " ".join([f"Measured on this run's merge: winner = {check.get('winner')} by {num('margin')} aggregate "
                     f"(mixture {num('mixture_aggregate')} vs best merge {check.get('best_merge')} "
                     f"{num('best_merge_aggregate')}); {verdict}.", *cost])


def analyse_variants(cfg, run_dir: Path, base: BaseModel, variants: Sequence[Variant],
                     results: Mapping[str, Mapping], tracker: Tracker):
    """Weight deltas, task-vector correlation and the mix-or-merge recommendation, checked against results."""
    from mixmerge.analysis.stage import run_analysis

    wanted = set(cfg["analysis"].get("models") or [])
    models = {v.name: v.path for v in variants
              if v.name != "base" and v.path is not None and (not wanted or v.name in wanted)}
    if not models:
        return None
    outputs = run_analysis(base.path, models, cfg["analysis"], run_dir / "analysis", variant_metrics=results,
                           run=tracker.wandb_run)
    if outputs.recommendation is not None:
        print(f"Recommendation: {outputs.recommendation.choice} ({outputs.recommendation.reason})")
    if outputs.check:
        print(describe_check(outputs.check))
    return outputs


def run(cfg: Mapping[str, Any], *, store: ArtifactStore, run_dir: Path, tracker: Tracker):
    """base → specialists → mixture → merged → evaluate each → table and objective."""
    from mixmerge.data import load_tasks
    from mixmerge.eval import describe_subsets

    want = set(cfg["strategy"]["variants"])
    base = ensure_base(cfg, store)
    tasks = load_tasks(cfg["task"], store=store, seed=cfg["seed"])
    variants: list[Variant] = [Variant("base", base.path, base.key)] if "base" in want else []
    specialists = []
    if want & {"specialists", "merged"}:
        specialists = [ensure_specialist(cfg, store, tracker, base, t, s) for t, s in tasks.items()]
        if "specialists" in want:
            variants += specialists
    if "mixture" in want:
        variants.append(ensure_mixture(cfg, store, tracker, base, tasks))
    if "merged" in want:
        variants.append(ensure_merged(cfg, store, base, specialists,
                                      in_memory=cfg["strategy"].get("merge_in_memory", False)))
    results = {}
    for v in variants:
        metrics = ensure_evaluation(cfg, store, v, tasks) if cfg["eval"].get("enabled", True) else {}
        results[v.name] = {"metrics": metrics, "artifact": str(v.path) if v.path else f"in-memory:{v.key}"}
        tracker.log_metrics({f"{v.name}/{k}": val for k, val in metrics.items()})
    objective = write_results(cfg, run_dir, results, describe_subsets(cfg["eval"]))
    if line := describe_forgetting(changes_vs_base({n: r["metrics"] for n, r in results.items()})):
        print(line)
    if cfg["analysis"].get("enabled", True):
        analyse_variants(cfg, run_dir, base, variants, results, tracker)
    columns = sorted({k for r in results.values() for k in r["metrics"]})
    tracker.log_table("results", ["variant", *columns],
                      [[n, *(r["metrics"].get(c) for c in columns)] for n, r in results.items()])
    tracker.log_summary({"objective": objective})
    return objective
