"""The one story: resolve the base → specialists and mixture (cached) → merge → evaluate → report.

Every stage is an ``ensure_*`` function that returns a cached artifact when its config was seen before,
so a sweep trains each specialist once and spends its time on merges and evaluation.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixmerge.cache import ArtifactStore, content_key, write_json_atomic
from mixmerge.models import BaseModel, load_model, load_tokenizer, resolve_base_model
from mixmerge.report import format_table
from mixmerge.tracking import Tracker

log = logging.getLogger(__name__)

# Trainer fields that change the trained weights; the rest (logging, progress bars, threads) do not.
TRAINER_KEYS_THAT_MATTER = ("max_steps", "precision", "accelerator")


@dataclass(frozen=True)
class Variant:
    """One evaluated model: ``base``, ``specialist/<task>``, ``mixture`` or ``merged``.

    ``load`` builds the live model when there is no folder to load (an in-memory merge).
    """

    name: str
    path: Path | None
    key: str
    load: Callable[[], Any] | None = field(default=None, compare=False)
    tokenizer: Path | None = None  # defaults to ``path``


def training_config(cfg: Mapping[str, Any]) -> dict:
    """What determines a trained model besides its data: identical for every specialist and the mixture."""
    return {
        "finetune": cfg["finetune"],
        "trainer": {k: cfg["trainer"][k] for k in TRAINER_KEYS_THAT_MATTER},
        "seed": cfg["seed"],
        "packing": cfg["task"].get("packing", True),
        "prompt_style": cfg["model"]["prompt_style"],
        "dtype": cfg["model"]["dtype"],
    }


def _train(cfg, store: ArtifactStore, tracker: Tracker, base: BaseModel, *, kind: str, label: str,
           key_config: Mapping[str, Any], train: Sequence, val: Sequence) -> Variant:
    from mixmerge.train.sft import train_model

    def build(work: Path) -> dict:
        return train_model(base.path, train=train, val=val, finetune=cfg["finetune"], trainer_cfg=cfg["trainer"],
                           model_cfg=cfg["model"], out_dir=work, seed=cfg["seed"],
                           packing=cfg["task"].get("packing", True),
                           loggers=tracker.lightning_loggers(label), label=label)

    art = store.get_or_build(kind, key_config, build, inputs={"base": base.key}, resumable=True, label=label)
    return Variant(label, art.path, art.key)


def ensure_specialist(cfg, store, tracker, base: BaseModel, task: str, splits) -> Variant:
    key_config = {"task": task, "data": splits.key, **training_config(cfg)}
    return _train(cfg, store, tracker, base, kind="specialist", label=f"specialist/{task}",
                  key_config=key_config, train=splits.train, val=splits.valid)


def ensure_mixture(cfg, store, tracker, base: BaseModel, tasks: Mapping[str, Any]) -> Variant:
    from mixmerge.data import build_mixture

    mix = cfg["task"]["mixture"]
    # null weights = every training example of every task
    weights = None if mix.get("weights") is None else {t: float(w) for t, w in mix["weights"].items() if t in tasks}
    train = build_mixture(tasks, weights, by=mix["by"], seed=cfg["seed"], tokenizer=load_tokenizer(base.path))
    val = [ex for splits in tasks.values() for ex in splits.valid]
    key_config = {"data": {t: s.key for t, s in sorted(tasks.items())}, "mixture": {"weights": weights, "by": mix["by"]},
                  **training_config(cfg)}
    return _train(cfg, store, tracker, base, kind="mixture", label="mixture", key_config=key_config,
                  train=train, val=val)


def merge_config_for_key(merge_cfg: Mapping[str, Any]) -> dict:
    """The merge parameters that determine the merged weights (paths of a standalone merge excluded), and
    the version of the merge algorithm."""
    from mixmerge.merge.registry import ALGORITHM_VERSION

    params = {k: v for k, v in merge_cfg.items() if k not in ("base", "models", "output", "from_mergekit")}
    return {**params, "algorithm_version": ALGORITHM_VERSION}


def merge_inputs(base: BaseModel, specialists: Sequence[Variant]) -> dict[str, str]:
    """The keys a merge depends on besides its parameters: the base and every specialist."""
    return {"base": base.key, **{v.name: v.key for v in specialists}}


def ensure_merged(cfg, store, base: BaseModel, specialists: Sequence[Variant]) -> Variant:
    from mixmerge.merge import merge_folders

    merge_cfg = cfg["merge"]

    def build(work: Path) -> dict:
        report = merge_folders(merge_cfg, base.path, [v.path for v in specialists], work)
        return {"merge_seconds": report["time_s"]}

    art = store.get_or_build("merged", merge_config_for_key(merge_cfg), build, inputs=merge_inputs(base, specialists),
                             label=f"merged ({merge_cfg['method']})")
    return Variant("merged", art.path, art.key)


# Resident mergers, one per (base, specialists): Hydra runs the jobs of a multirun in one process (and joblib
# reuses its workers), so every trial after the first costs only the merge arithmetic.
_RESIDENT_MERGERS: dict[tuple[str, ...], Any] = {}


def merged_in_memory(cfg, store, base: BaseModel, specialists: Sequence[Variant]) -> Variant:
    """The merge as a live model built on demand (no folder), keyed like the on-disk merge so evaluations are
    shared; ``store`` is unused but keeps the signature of ``ensure_merged``."""
    from mixmerge.merge import InMemoryMerger, validate_merge_config

    merge_cfg = cfg["merge"]
    validate_merge_config(merge_cfg, n_models=len(specialists))
    key = content_key("merged", merge_config_for_key(merge_cfg), merge_inputs(base, specialists))
    resident = (str(base.path), *(str(v.path) for v in specialists))

    def load():
        if resident not in _RESIDENT_MERGERS:
            _RESIDENT_MERGERS.clear()  # keep one set of task vectors in memory
            _RESIDENT_MERGERS[resident] = InMemoryMerger(base.path, [v.path for v in specialists])
        model = load_model(base.path, dtype=cfg["model"]["dtype"])
        report = _RESIDENT_MERGERS[resident].merge_into(model, merge_cfg)
        log.info("merged %s in memory in %.2f s", merge_cfg["method"], report["time_s"])
        return model

    return Variant("merged", None, key, load=load, tokenizer=base.path)


def ensure_evaluation(cfg, store, variant: Variant, heldout: Mapping[str, Sequence]) -> dict[str, float]:
    """Evaluate ``variant`` (cached by the model's key, the eval config and the held-out data)."""
    from mixmerge.eval import aggregate, evaluate_model
    from mixmerge.eval.suite import eval_cache_config

    eval_cfg = cfg["eval"]
    data_keys = {t: getattr(h, "key", None) for t, h in heldout.items()}
    key_config = {"eval": eval_cache_config(eval_cfg), "prompt_style": cfg["model"]["prompt_style"],
                  "data": data_keys}

    def build(work: Path) -> dict:
        model = variant.load() if variant.load else load_model(variant.path, dtype=cfg["model"]["dtype"])
        model.eval()
        tokenizer = load_tokenizer(variant.tokenizer or variant.path)
        metrics = evaluate_model(model, tokenizer, eval_cfg=eval_cfg,
                                 heldout={t: h.test for t, h in heldout.items()},
                                 prompt_style=cfg["model"]["prompt_style"], out_dir=work)
        if metrics:
            metrics["aggregate"] = aggregate(metrics, eval_cfg)
        write_json_atomic(work / "metrics.json", metrics)
        return {"model_path": str(variant.path) if variant.path else "in-memory merge"}

    art = store.get_or_build("eval", key_config, build, inputs={"model": variant.key},
                             label=f"evaluation of {variant.name}", refresh=not eval_cfg.get("cache", True))
    return json.loads((art.path / "metrics.json").read_text())


def objective_value(cfg: Mapping[str, Any], results: Mapping[str, Mapping]) -> float | list[float] | None:
    """The number(s) a sweeper optimises: ``objective.variant`` / ``objective.metric`` (a list = multi-objective)."""
    obj = cfg["objective"]
    variant = results.get(obj["variant"])
    if variant is None:
        return None
    metric_names = obj["metric"] if isinstance(obj["metric"], list) else [obj["metric"]]
    values = [float(variant["metrics"].get(m, math.nan)) for m in metric_names]
    return values if isinstance(obj["metric"], list) else values[0]


def write_results(cfg, run_dir: Path, results: Mapping[str, Mapping], caption: str) -> float | list | None:
    objective = objective_value(cfg, results)
    write_json_atomic(run_dir / "metrics.json", {"variants": results, "objective": objective, "config": cfg})
    table = format_table({name: r["metrics"] for name, r in results.items()}, caption=caption)
    (run_dir / "metrics.md").write_text(table + "\n")
    print("\n" + table + "\n")
    return objective


def describe_check(check: Mapping[str, Any]) -> str:
    """One paragraph: what won on the aggregate, by how much, and what merging cost relative to the specialists."""
    verdict = {True: "the recommendation was right", False: "the recommendation was wrong"}.get(
        check.get("recommendation_correct"), "no verdict (a tie or a missing variant)")
    deg = (check.get("degradation") or {}).get("best_merge") or {}
    return (f"Measured: winner = {check.get('winner')} by {check.get('margin', float('nan')):.4f} aggregate "
            f"(mixture {check.get('mixture_aggregate', float('nan')):.4f} vs best merge "
            f"{check.get('best_merge')} {check.get('best_merge_aggregate', float('nan')):.4f}); {verdict}. "
            f"Best merge's mean degradation vs the specialists: {100 * deg.get('mean', float('nan')):.1f}%.")


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


def run_compare(cfg: Mapping[str, Any], *, store: ArtifactStore, run_dir: Path, tracker: Tracker):
    """base → specialists → mixture → merged → evaluate each → table and objective."""
    from mixmerge.data import load_tasks
    from mixmerge.eval import describe_subsets

    want = set(cfg["strategy"]["variants"])
    base = resolve_base_model(cfg["model"], store)
    log.info("base model %s from %s", base.name, base.origin)
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
        in_memory = cfg["strategy"].get("merge_in_memory", False)
        variants.append((merged_in_memory if in_memory else ensure_merged)(cfg, store, base, specialists))
    results = {}
    for v in variants:
        metrics = ensure_evaluation(cfg, store, v, tasks) if cfg["eval"].get("enabled", True) else {}
        results[v.name] = {"metrics": metrics, "artifact": str(v.path) if v.path else f"in-memory:{v.key}"}
        tracker.log_metrics({f"{v.name}/{k}": val for k, val in metrics.items()})
    objective = write_results(cfg, run_dir, results, describe_subsets(cfg["eval"]))
    from mixmerge.eval.forgetting import changes_vs_base, describe_forgetting  # issue 18: forgetting verdict

    if line := describe_forgetting(changes_vs_base({n: r["metrics"] for n, r in results.items()})):
        print(line)
    if cfg["analysis"].get("enabled", True):
        analyse_variants(cfg, run_dir, base, variants, results, tracker)
    columns = sorted({k for r in results.values() for k in r["metrics"]})
    tracker.log_table("results", ["variant", *columns],
                      [[n, *(r["metrics"].get(c) for c in columns)] for n, r in results.items()])
    tracker.log_summary({"objective": objective})
    return objective
