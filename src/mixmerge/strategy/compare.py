"""`strategy=compare` (the default), and its presets `strategy=specialist` and `strategy=mixture`.

base → specialists → mixture → merged, each evaluated on every task's held-out data; one table
(``metrics.md``) with 95% intervals, ``metrics.json`` with the intervals, the paired comparisons, the
verdict and the objective a sweeper reads, and the weight analysis with the mix-or-merge recommendation
checked against the verdict. ``strategy.variants`` picks the rows; ``replicates`` trains every specialist,
the mixture (and so the merge) under several seeds and reports the mean with the spread.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mixmerge.cache import ArtifactStore
from mixmerge.eval import evidence as ev
from mixmerge.eval.evidence import Measured
from mixmerge.eval.forgetting import changes_from_comparisons, describe_forgetting
from mixmerge.eval.uncertainty import mean_over_replicates
from mixmerge.files import json_safe, write_json_atomic, write_text_atomic
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


def write_results(cfg, run_dir: Path, results: Mapping[str, Mapping], caption: str, *,
                  comparisons: list | None = None, verdict: Mapping | None = None,
                  seeds: list[int] | None = None) -> float | list | None:
    """``metrics.json`` (variants with intervals, comparisons, verdict, objective, resolved config) and
    ``metrics.md`` (the table); the objective."""
    record = {"variants": results, "comparisons": comparisons or [], "verdict": verdict or {},
              "seeds": seeds, "objective": None, "config": cfg}
    try:
        objective = objective_value(cfg, results)
    except Exception:  # e.g. objective.statistic=lcb without an interval: keep the evaluation, then fail
        write_json_atomic(run_dir / "metrics.json", json_safe(record))
        raise
    write_json_atomic(run_dir / "metrics.json", json_safe({**record, "objective": objective}))
    if seeds and len(seeds) > 1:
        caption += (f" Trained under {len(seeds)} seeds ({', '.join(map(str, seeds))}): each value is the mean over"
                    " seeds, its interval resamples the examples (seeds fixed), sd is the spread over seeds.")
    caption += " [lo, hi]: 95% bootstrap interval over the evaluated examples."
    table = format_table({name: r["metrics"] for name, r in results.items()}, caption=caption,
                         intervals={name: r.get("ci95") or {} for name, r in results.items()},
                         spreads={name: r.get("spread") or {} for name, r in results.items()})
    write_text_atomic(run_dir / "metrics.md", table + "\n")
    print("\n" + table + "\n")
    return objective




def describe_verdict(verdict: Mapping[str, Any]) -> str | None:
    """The mix-or-merge verdict in one line, with the interval and p-value it rests on."""
    if not verdict:
        return None
    if verdict.get("winner") is None:
        return f"Verdict: none ({verdict.get('reason', 'nothing to compare')})."
    lo, hi = verdict["ci95"]
    said = {"mix": "mixing wins", "merge": "merging wins",
            "not separable": "not separable: the interval contains 0, so this evaluation cannot tell them apart"}
    return (f"Verdict: {said[verdict['winner']]} (mixture − {verdict['best_merge']} on the aggregate: "
            f"{verdict['difference']:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}], p = {verdict['p_value']:.3g}, "
            f"paired over {verdict.get('n')} examples).")


def forgetting_changes(comparisons: list, measured: Mapping[str, Measured]):
    """The forgetting check's changes against the base from the paired comparisons."""
    return changes_from_comparisons(comparisons, {n: m.metrics for n, m in measured.items()})


def describe_check(check: Mapping[str, Any]) -> str:
    """One paragraph on this run's merge(s): what won on the aggregate, by how much, what merging cost
    relative to the specialists (with intervals), and which of those figures are undefined and why."""
    verdict = {"right": "the recommendation was right", "wrong": "the recommendation was wrong",
               "undecided": "the recommendation is undecided (mixture and merge not separable)"}.get(
        check.get("recommendation_check"), "no check (the recommendation was uncertain, or a variant is missing)")
    deg = (check.get("degradation") or {}).get("best_merge") or {}
    cost = []
    if deg.get("per_task"):
        ci = deg.get("mean_ci95")
        shown = f" [{100 * ci[0]:.1f}%, {100 * ci[1]:.1f}%]" if ci else ""
        cost.append(f"Best merge's mean degradation vs the specialists: {100 * deg['mean']:.1f}%{shown} "
                    f"(on {', '.join(deg['per_task'])}).")
    for u in deg.get("undefined", []):
        cost.append(f"Degradation on {u['task']} undefined: {u['reason']}.")
    missing = [m["metric"] for m in deg.get("not_computed", [])]
    if missing:
        cost.append(f"Not computed: degradation on {', '.join(map(str, missing))} (not evaluated in this run).")

    def num(key: str) -> str:  # None when a variant is missing (e.g. strategy=specialist has no mixture)
        return "n/a" if check.get(key) is None else f"{check[key]:.4f}"

    return " ".join([f"Measured on this run's merge: winner = {check.get('winner')} by {num('margin')} aggregate "
                     f"(mixture {num('mixture_aggregate')} vs best merge {check.get('best_merge')} "
                     f"{num('best_merge_aggregate')}); {verdict}.", *cost])


def analyse_variants(cfg, run_dir: Path, base: BaseModel, variants: Sequence[Variant],
                     results: Mapping[str, Mapping], tracker: Tracker, *, evidence_blocks: Mapping | None = None,
                     out_dir: Path | None = None, quiet: bool = False):
    """Weight deltas, task-vector correlation and the mix-or-merge recommendation, checked against results."""
    from mixmerge.analysis.stage import run_analysis

    wanted = set(cfg["analysis"].get("models") or [])
    models = {v.name: v.path for v in variants
              if v.name != "base" and v.path is not None and (not wanted or v.name in wanted)}
    if not models:
        return None
    outputs = run_analysis(base.path, models, cfg["analysis"], out_dir or run_dir / "analysis",
                           variant_metrics=results, evidence=evidence_blocks, run=tracker.wandb_run)
    if not quiet:  # how far training moved each model: a task vector of 1e-3 of the weights says little
        moved = ", ".join(f"{m} {outputs.result.norm(m, stat='rel_l2'):.2e}" for m in outputs.result.models)
        print(f"Weights moved (‖Δθ‖/‖θ‖ against the base): {moved}.")
    if outputs.recommendation is not None and not quiet:
        print(f"Recommendation: {outputs.recommendation.choice} ({outputs.recommendation.reason})")
    if outputs.check and not quiet:
        print(describe_check(outputs.check))
    return outputs


def analyse_replicates(cfg, run_dir: Path, base: BaseModel, by_seed: Mapping[int, Sequence[Variant]],
                       results: Mapping[str, Mapping], tracker: Tracker, *, evidence_blocks: Mapping):
    """The analysis of each seed's models; with several seeds, the task-vector correlation per seed, its
    spread, and whether the recommendation is the same under every seed (``analysis/replicates.json``)."""
    if len(by_seed) == 1:
        return analyse_variants(cfg, run_dir, base, next(iter(by_seed.values())), results, tracker,
                                evidence_blocks=evidence_blocks)
    outputs = {seed: analyse_variants(cfg, run_dir, base, variants, results, tracker, evidence_blocks=evidence_blocks,
                                      out_dir=run_dir / "analysis" / f"seed_{seed}", quiet=True)
               for seed, variants in by_seed.items()}
    recs = {seed: o.recommendation for seed, o in outputs.items() if o is not None and o.recommendation}
    if not recs:
        return outputs
    r = {seed: rec.r_mean for seed, rec in recs.items()}
    finite = [x for x in r.values() if math.isfinite(x)]
    choices = sorted({rec.choice for rec in recs.values()})
    stable = len(choices) == 1
    summary = {"r_mean_per_seed": {str(s): x for s, x in r.items()},
               "r_mean": float(np.mean(finite)) if finite else None,
               "r_sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
               "choice_per_seed": {str(s): rec.choice for s, rec in recs.items()}, "stable": stable}
    write_json_atomic(run_dir / "analysis" / "replicates.json", json_safe(summary))
    per = ", ".join(f"seed {s}: {x:.3f}" for s, x in r.items())
    spread = f" ± {summary['r_sd']:.3f} (sd)" if summary["r_sd"] is not None else ""
    print(f"Task-vector correlation over {len(r)} seeds: r = {summary['r_mean']:.3f}{spread} ({per}). "
          + (f"Recommendation stable across seeds: {choices[0]}." if stable
             else f"Recommendation NOT stable across seeds: {summary['choice_per_seed']}."))
    first = outputs[next(iter(outputs))]
    if first is not None and first.check:
        print(describe_check(first.check))
    return outputs


def replicate_seeds(cfg: Mapping[str, Any]) -> list[int]:
    """The training seeds: ``replicates`` null = [seed], N = seed, seed+1, ..., a list = those seeds."""
    rep = cfg.get("replicates")
    if rep is None:
        return [int(cfg["seed"])]
    if isinstance(rep, int) and not isinstance(rep, bool):
        return [int(cfg["seed"]) + i for i in range(rep)]
    return [int(s) for s in rep]


def _combine_seeds(per_seed: Mapping[int, Measured]) -> tuple[Measured, dict | None]:
    """One variant's evaluations under several training seeds → the mean over seeds (metrics, and the
    per-example observations averaged over seeds, so intervals and paired tests keep working), plus the
    ``seeds`` / ``spread`` blocks. A single seed is returned as is."""
    if len(per_seed) == 1:
        return next(iter(per_seed.values())), None
    runs = list(per_seed.values())
    names = [m for m in runs[0].metrics if all(m in r.metrics for r in runs)]
    metrics = {m: float(np.mean([r.metrics[m] for r in runs])) for m in names}
    samples = {m: mean_over_replicates([r.samples[m] for r in runs]) for m in names
               if all(m in r.samples for r in runs)}
    extra = {"seeds": {str(s): dict(r.metrics) for s, r in per_seed.items()},
             "spread": {m: float(np.std([r.metrics[m] for r in runs], ddof=1)) for m in names}}
    return Measured(metrics, samples), extra


def evidence(cfg: Mapping[str, Any], measured: Mapping[str, Measured]) -> tuple[dict, list[dict], dict, dict]:
    """Intervals per variant, the paired comparisons, the verdict and the degradation (eval/evidence.py)."""
    from mixmerge.tasks import headline_metrics

    ev_cfg = cfg["eval"]
    ck = dict(cfg["analysis"].get("check") or {})
    task_metrics = {**headline_metrics(), **dict(ck.get("task_metrics") or {})}
    seed = int(ev_cfg.get("seed", 0))
    resamples = int((ev_cfg.get("bootstrap") or {}).get("resamples", 2000))
    intervals = {name: ev.intervals(m, ev_cfg, seed=seed, n_resamples=resamples) for name, m in measured.items()}
    comparisons = ev.paired_comparisons(measured, task_metrics, ev_cfg, seed=seed, n_resamples=resamples)
    verdict = ev.verdict(measured, comparisons)
    specialists = {v.removeprefix("specialist/"): v for v in measured if v.startswith("specialist/")}
    degradation = {}
    for label, variant in (("best_merge", verdict.get("best_merge")), ("mixture", "mixture")):
        if variant in measured and specialists:
            degradation[label] = ev.degradation(measured, variant, specialists, task_metrics, comparisons,
                                                seed=seed, n_resamples=resamples)
    return intervals, comparisons, verdict, degradation


def run(cfg: Mapping[str, Any], *, store: ArtifactStore, run_dir: Path, tracker: Tracker):
    """base → specialists → mixture → merged (per training seed) → evaluate each → table and objective."""
    from mixmerge.data import load_tasks
    from mixmerge.eval import describe_subsets

    want = set(cfg["strategy"]["variants"])
    seeds = replicate_seeds(cfg)
    base = ensure_base(cfg, store)
    tasks = load_tasks(cfg["task"], store=store, seed=cfg["seed"])
    by_seed: dict[int, list[Variant]] = {}
    for seed in seeds:
        train_seed = None if seed == cfg["seed"] else seed
        variants: list[Variant] = []
        specialists = []
        if want & {"specialists", "merged"}:
            specialists = [ensure_specialist(cfg, store, tracker, base, t, s, train_seed=train_seed)
                           for t, s in tasks.items()]
            if "specialists" in want:
                variants += specialists
        if "mixture" in want:
            variants.append(ensure_mixture(cfg, store, tracker, base, tasks, train_seed=train_seed))
        if "merged" in want:
            variants.append(ensure_merged(cfg, store, base, specialists, task_data=tasks,
                                          in_memory=cfg["strategy"].get("merge_in_memory", False)))
        by_seed[seed] = variants
    evaluate = cfg["eval"].get("enabled", True)
    base_variant = Variant("base", base.path, base.key)
    order = (["base"] if "base" in want else []) + [v.name for v in by_seed[seeds[0]]]
    measured: dict[str, Measured] = {}
    results: dict[str, dict] = {}
    for name in order:
        runs = {seed: base_variant if name == "base" else next(v for v in by_seed[seed] if v.name == name)
                for seed in (seeds[:1] if name == "base" else seeds)}
        per_seed = {seed: ensure_evaluation(cfg, store, v, tasks) if evaluate else Measured({})
                    for seed, v in runs.items()}
        measured[name], extra = _combine_seeds(per_seed)
        artifacts = [str(v.path) if v.path else f"in-memory:{v.key}" for v in runs.values()]
        results[name] = {"metrics": dict(measured[name].metrics),
                         "artifact": artifacts[0] if len(artifacts) == 1 else artifacts, **(extra or {})}
        details = [v.details for v in runs.values() if v.details]
        if details:  # e.g. a layer-wise merge's per-block weights (one entry per training seed)
            results[name]["details"] = details[0] if len(details) == 1 else details
        tracker.log_metrics({f"{name}/{k}": val for k, val in measured[name].metrics.items()})
    comparisons, verdict, degradation = [], {}, {}
    if evaluate:
        started = time.perf_counter()
        intervals, comparisons, verdict, degradation = evidence(cfg, measured)
        log.info("intervals, %d paired comparisons and the verdict took %.1f s", len(comparisons),
                 time.perf_counter() - started)
        for name, (ci95, n) in intervals.items():
            results[name] = {**results[name], "ci95": ci95, "n": n}
            tracker.log_metrics({f"{name}/{k}/ci95_{end}": b for k, ci in ci95.items() if ci
                                 for end, b in zip(("lo", "hi"), ci, strict=True)})
        if verdict.get("winner") is not None:
            tracker.log_summary({"verdict/winner": verdict["winner"], "verdict/difference": verdict["difference"],
                                 "verdict/ci95_lo": verdict["ci95"][0], "verdict/ci95_hi": verdict["ci95"][1],
                                 "verdict/p_value": verdict["p_value"]})
    objective = write_results(cfg, run_dir, results, describe_subsets(cfg["eval"]), comparisons=comparisons,
                              verdict=verdict, seeds=seeds)
    if line := describe_verdict(verdict):
        print(line)
    if line := describe_forgetting(forgetting_changes(comparisons, measured),
                                   what="95% paired bootstrap interval over the same items"):
        print(line)
    if cfg["analysis"].get("enabled", True):
        analyse_replicates(cfg, run_dir, base, by_seed, results, tracker,
                           evidence_blocks={"verdict": verdict, "degradation": degradation})
    columns = sorted({k for r in results.values() for k in r["metrics"]})
    tracker.log_table("results", ["variant", *columns],
                      [[n, *(r["metrics"].get(c) for c in columns)] for n, r in results.items()])
    tracker.log_summary({"objective": objective})
    return objective
