"""`strategy=methods` (``experiment=methods``): every merge method against the mixture and the specialists.

The specialists and the mixture are trained once (cached). Each candidate in ``strategy.candidates`` is a
merge config; a candidate with a ``grid`` (the uniform methods: one weight for the whole model) is merged
at every grid point and the point with the best validation score is kept; a candidate with ``search:
layerwise`` runs that many Optuna trials of the layer-wise search (``sweep/layerwise.py``). Selection never
looks at the test items: grid points and trials are scored by the held-out loss on each task's
**validation** split, and only the chosen merge of each candidate is evaluated on the **test** split with
the run's ``eval`` config, like the specialists and the mixture. So every number in the table is a
fresh measurement, not the maximum of several noisy ones.

Reported (``methods.md``, ``methods.json``, ``methods.png``): every variant's metrics with 95% intervals;
each candidate against the best uniform merge (chosen, too, on validation) and against the mixture, as
paired tests on the same items, with Holm-adjusted p-values over the family of candidates (so "beats the
best uniform merge" survives the number of methods tried), and the share of the gap between the best
uniform merge and the mixture that the candidate closes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mixmerge.cache import ArtifactStore
from mixmerge.eval import evidence as ev
from mixmerge.eval.evidence import AGGREGATE, Measured
from mixmerge.files import json_safe, save_figure_atomic, write_json_atomic, write_text_atomic
from mixmerge.report import format_interval, format_table
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

CANDIDATE_KEYS = ("merge", "grid", "search", "n_trials", "layerwise")
# The layer-wise search's defaults (hparams_search=merge_optuna_layerwise's): K blocks, logit offset ranges.
LAYERWISE_DEFAULTS = {"blocks": 4, "weight_range": 2.0, "density_range": 2.0}
SEARCHES = ("layerwise",)
GENERATIVE_PARTS = ("humaneval", "mbpp", "humaneval_plus", "mbpp_plus", "codesum")


def plan_candidates(strategy_cfg: Mapping[str, Any], global_merge: Mapping[str, Any], n_models: int) -> list[dict]:
    """``strategy.candidates`` checked before any work: ``[{name, points: [merge config, ...], search,
    n_trials, uniform}]``. Every grid point is validated as a merge config of ``n_models`` models."""
    from mixmerge.merge import validate_merge_config
    from mixmerge.strategy.rounds import GENERIC_MERGE_KEYS

    candidates = strategy_cfg.get("candidates") or {}
    if not isinstance(candidates, Mapping) or not candidates:
        raise ValueError("strategy.candidates is empty; give name: {merge: {method: ties}, grid: {weight: [0.3, 0.7]}} "
                         "entries (see conf/strategy/methods.yaml)")
    generic = {k: global_merge[k] for k in GENERIC_MERGE_KEYS if k in global_merge}
    plan = []
    for name, entry in candidates.items():
        where = f"strategy.candidates.{name}"
        if entry is None:
            continue  # a candidate switched off from the command line: strategy.candidates.fisher=null
        unknown = sorted(set(entry) - set(CANDIDATE_KEYS))
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}; known: {', '.join(CANDIDATE_KEYS)}")
        merge = {**generic, **dict(entry.get("merge") or {})}
        if "method" not in merge:
            raise ValueError(f"{where}.merge.method is missing; name the merge method, e.g. {{method: ties}}")
        grid = dict(entry.get("grid") or {})
        search = entry.get("search")
        if search is not None and search not in SEARCHES:
            raise ValueError(f"{where}.search={search!r} is not one of {SEARCHES} (or null)")
        if search is not None and grid:
            raise ValueError(f"{where} has both a grid and a search; give one")
        n_trials = int(entry.get("n_trials") or 0)
        if search is not None and n_trials < 1:
            raise ValueError(f"{where}.n_trials={entry.get('n_trials')!r}: a search needs at least 1 trial")
        for key, values in grid.items():
            if not isinstance(values, Sequence) or isinstance(values, str) or not values:
                raise ValueError(f"{where}.grid.{key}={values!r} must be a non-empty list of values")
        points = [merge]
        for key, values in grid.items():
            points = [{**p, key: v} for p in points for v in values]
        for p in points:
            try:
                validate_merge_config(p, n_models=n_models)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from err
        layerwise = {**LAYERWISE_DEFAULTS, **dict(entry.get("layerwise") or {})}
        if search == "layerwise":
            from mixmerge.sweep.layerwise import block_space, validate_layerwise

            try:  # the space (blocks, ranges, method) and the all-zero seed point as a trial would see it
                seed = block_space(blocks=layerwise["blocks"], method=merge["method"],
                                   weight_range=layerwise["weight_range"], density_range=layerwise["density_range"])
                point = {k.rsplit(".", 1)[1]: v for k, v in seed["enqueue"][0].items()}
                validate_layerwise({**layerwise, "point": point}, merge, n_models)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from err
        plan.append({"name": str(name), "points": points, "search": search, "n_trials": n_trials,
                     "uniform": bool(grid), "layerwise": layerwise})
    if not plan:
        raise ValueError("strategy.candidates: every candidate is null; keep at least one")
    return plan


def selection_eval(eval_cfg: Mapping[str, Any], tasks: Sequence[str]) -> dict:
    """The run's eval config with only the held-out loss on: the cheap, low-noise score that picks a grid
    point or a search trial (aggregate = minus the mean loss over tasks)."""
    out = {**eval_cfg, **{p: {**dict(eval_cfg.get(p) or {}), "enabled": False} for p in GENERATIVE_PARTS}}
    out["loss"] = {**dict(eval_cfg.get("loss") or {}), "enabled": True}
    out["lm_eval"] = {**dict(eval_cfg.get("lm_eval") or {}), "tasks": []}
    out["aggregate"] = {"method": "mean", "terms": {f"{t}/loss": -1.0 for t in tasks}, "weights": None}
    return out


def validation_view(tasks: Mapping[str, Any]) -> dict:
    """Each task's splits with the validation split where evaluation reads ``test``, under its own key."""
    for name, splits in tasks.items():
        if not splits.valid:
            raise ValueError(f"task {name} has no validation split to select merges on; give it one "
                             f"(task.tasks.{name}.valid_fraction or a valid file)")
    return {name: replace(s, test=s.valid, key=f"{s.key}:valid") for name, s in tasks.items()}


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None stays None): controls the chance of any
    false "significant" among the family, uniformly more powerful than Bonferroni."""
    order = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m, out, running = len(order), [None] * len(p_values), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def gap_closed(candidate: float, uniform: float, mixture: float) -> float | None:
    """Share of the (mixture − best uniform merge) gap a candidate closes: 0 = no better than the uniform
    merge, 1 = as good as the mixture, > 1 = beyond it; None when the mixture is not ahead (no gap to close).
    Both are higher-is-better aggregates."""
    gap = mixture - uniform
    if not all(math.isfinite(x) for x in (candidate, uniform, mixture)) or gap <= 1e-12:
        return None  # the uniform merge is already as good as the mixture: no gap to close
    return (candidate - uniform) / gap


def candidate_rows(names: Sequence[str], measured: Mapping[str, Measured], reference: str, eval_cfg: Mapping, *,
                   mixture: str = "mixture", seed: int = 0, n_resamples: int = 2000) -> list[dict]:
    """Per candidate: aggregate, paired comparison with ``reference`` (the best uniform merge) and with the
    mixture, Holm-adjusted p-values over the candidates, and the gap closed."""
    rows = []
    for name in names:
        m = measured[name]
        vs_ref = None if name == reference else ev.compare_on(name, m, reference, measured[reference], AGGREGATE,
                                                               eval_cfg, seed=seed, n_resamples=n_resamples)
        vs_mix = (ev.compare_on(name, m, mixture, measured[mixture], AGGREGATE, eval_cfg, seed=seed,
                                n_resamples=n_resamples) if mixture in measured else None)
        closed = (gap_closed(m.metrics.get(AGGREGATE, math.nan), measured[reference].metrics.get(AGGREGATE, math.nan),
                             measured[mixture].metrics.get(AGGREGATE, math.nan)) if mixture in measured else None)
        rows.append({"variant": name, "aggregate": m.metrics.get(AGGREGATE), "vs_best_uniform": vs_ref,
                     "vs_mixture": vs_mix, "gap_closed": closed})
    for key in ("vs_best_uniform", "vs_mixture"):
        adjusted = holm([(r[key] or {}).get("p_value") for r in rows])
        for r, p in zip(rows, adjusted, strict=True):
            if r[key] is not None:
                r[key] = {**r[key], "p_holm": p}
    return rows


def outcome(row: Mapping[str, Any], alpha: float = 0.05) -> str:
    """"better" / "worse" (for the candidate ``row["a"]``) only when the paired interval excludes 0 and the
    Holm-adjusted p-value is at most ``alpha``; otherwise "not separable"."""
    lo, hi = row["ci95"]
    if lo <= 0 <= hi or row.get("p_holm", row["p_value"]) > alpha:
        return "not separable"
    return "better" if row["better"] == row["a"] else "worse"


def describe_comparison(row: Mapping[str, Any] | None) -> str:
    """``+0.0123 [+0.0040, +0.0210], p_holm 0.004: better`` (or "not separable")."""
    if row is None:
        return "—"
    lo, hi = row["ci95"]
    return (f"{row['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}], p_holm {row.get('p_holm', row['p_value']):.3g}: "
            f"{outcome(row)}")


def comparison_table(rows: Sequence[Mapping[str, Any]], reference: str, selected: Mapping[str, str]) -> str:
    lines = ["| candidate | chosen on validation | aggregate | − best uniform (" + reference + ") | − mixture | gap closed |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        closed = ("reference" if r["vs_best_uniform"] is None else
                  "no gap" if r["gap_closed"] is None else f"{100 * r['gap_closed']:.0f}%")
        lines.append(f"| {r['variant']} | {selected.get(r['variant'], '')} | {format_interval(r['aggregate'])} | "
                     f"{describe_comparison(r['vs_best_uniform'])} | {describe_comparison(r['vs_mixture'])} | {closed} |")
    return "\n".join(lines)


def plot_methods(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Forest plot: each candidate's paired difference from the mixture on the aggregate, with its 95%
    interval (left of 0: the mixture is better); the best uniform merge's row in bold."""
    shown = [r for r in rows if r["vs_mixture"] is not None]
    if not shown:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(shown) + 1.4))
    for y, r in enumerate(reversed(shown)):
        c = r["vs_mixture"]
        lo, hi = c["ci95"]
        colour = {"better": "tab:green", "worse": "tab:red"}.get(outcome(c), "tab:gray")
        ax.errorbar(c["difference"], y, xerr=[[c["difference"] - lo], [hi - c["difference"]]], fmt="o",
                    color=colour, capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([r["variant"].removeprefix("merged/") for r in reversed(shown)])
    ax.set_xlabel("candidate − mixture on the aggregate (95% paired bootstrap CI;\n"
                  "green/red: separable after Holm's adjustment, grey: not separable)")
    ax.set_title("Merge methods against the data mixture (test split)")
    fig.tight_layout()
    out = save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)
    return out


def _select(cfg, store: ArtifactStore, base, specialists, tasks, valid, candidate: Mapping, sel_cfg
            ) -> tuple[dict, list[dict]]:
    """The candidate's chosen config overrides (``merge``, and ``layerwise`` for a search) picked on
    validation, and every point's or trial's validation score."""
    if candidate["search"] == "layerwise":
        return _search_layerwise(cfg, store, base, specialists, tasks, valid, candidate, sel_cfg)
    if len(candidate["points"]) == 1:
        return {"merge": candidate["points"][0]}, []
    scored = []
    for point in candidate["points"]:
        merged = ensure_merged({**cfg, "merge": point}, store, base, specialists, task_data=tasks,
                               in_memory=_in_memory(cfg, point))
        scored.append({"merge": point, "validation": _score(cfg, store, merged, valid, sel_cfg)})
    best = max(scored, key=lambda s: s["validation"])
    return {"merge": best["merge"]}, scored


def _search_layerwise(cfg, store: ArtifactStore, base, specialists, tasks, valid, candidate: Mapping, sel_cfg
                      ) -> tuple[dict, list[dict]]:
    """``n_trials`` of CMA-ES over the per-block offsets (``sweep/layerwise.py``), in memory, in this process:
    trial 0 is the analysis-derived seed (all offsets 0), each trial scored on validation."""
    import optuna

    from mixmerge.sweep.layerwise import block_space

    merge, lw = candidate["points"][0], candidate["layerwise"]
    space = block_space(blocks=lw["blocks"], method=merge["method"], weight_range=lw["weight_range"],
                        density_range=lw["density_range"])
    names = [k.rsplit(".", 1)[1] for k in space["params"]]  # e.g. attn_weight_0: group, field, block
    ranges = {name: float(lw[f"{name.split('_')[1]}_range"]) for name in names}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.CmaEsSampler(seed=int(cfg["seed"]), warn_independent_sampling=False)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial({name: 0.0 for name in ranges})
    scored = []
    for _ in range(candidate["n_trials"]):
        trial = study.ask()
        point = {name: trial.suggest_float(name, -r, r) for name, r in ranges.items()}
        overrides = {"merge": merge, "layerwise": {**lw, "point": point}}
        merged = ensure_merged({**cfg, **overrides}, store, base, specialists, task_data=tasks, in_memory=True)
        value = _score(cfg, store, merged, valid, sel_cfg)
        study.tell(trial, value)
        scored.append({**overrides, "validation": value, "details": merged.details})
    best = max(scored, key=lambda s: s["validation"])
    return {"merge": merge, "layerwise": best["layerwise"]}, scored


def _score(cfg, store, variant: Variant, valid, sel_cfg) -> float:
    measured = ensure_evaluation({**cfg, "eval": sel_cfg}, store, variant, valid)
    return float(measured.metrics[AGGREGATE])


def _in_memory(cfg, merge_cfg) -> bool:
    """In-memory merging where the resident task vectors serve the method (linear and task-vector methods)."""
    from mixmerge.merge.registry import get_method

    return bool(cfg["strategy"].get("merge_in_memory", True)) and get_method(merge_cfg["method"]).task_vector_family


def _describe_point(point: Mapping[str, Any], grid_keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={point[k]}" for k in grid_keys if k in point)


def run(cfg: Mapping[str, Any], *, store: ArtifactStore, run_dir: Path, tracker: Tracker):
    from mixmerge.data import load_tasks
    from mixmerge.eval import describe_subsets
    from mixmerge.tasks import headline_metrics

    tasks = load_tasks(cfg["task"], store=store, seed=cfg["seed"])
    plan = plan_candidates(cfg["strategy"], cfg["merge"], len(tasks))
    valid = validation_view(tasks)
    sel_cfg = selection_eval(cfg["eval"], list(tasks))
    base = ensure_base(cfg, store)
    specialists = [ensure_specialist(cfg, store, tracker, base, t, s) for t, s in tasks.items()]
    mixture = ensure_mixture(cfg, store, tracker, base, tasks)
    variants: list[Variant] = [Variant("base", base.path, base.key), *specialists, mixture]
    selected: dict[str, str] = {}
    selection: dict[str, Any] = {}
    uniform: list[str] = []
    for candidate in plan:
        started = time.perf_counter()
        chosen, scored = _select(cfg, store, base, specialists, tasks, valid, candidate, sel_cfg)
        name = f"merged/{candidate['name']}"
        grid_keys = sorted({k for p in candidate["points"] for k in p if any(p[k] != q.get(k) for q in candidate["points"])})
        selected[name] = (_describe_point(chosen["merge"], grid_keys) if candidate["uniform"]
                          else f"best of {len(scored)} trials" if scored else "")
        selection[name] = {"chosen": chosen, "scored": scored, "seconds": time.perf_counter() - started}
        merged = ensure_merged({**cfg, **chosen}, store, base, specialists, task_data=tasks,
                               in_memory=_in_memory(cfg, chosen["merge"]) or "layerwise" in chosen)
        variants.append(replace(merged, name=name))
        if candidate["uniform"]:
            uniform.append(name)
        log.info("%s: chose %s in %.0f s", name, selected[name] or chosen["merge"]["method"],
                 selection[name]["seconds"])
    # The reference "best uniform merge" is chosen on validation too, not on the test items it is compared on.
    reference = (max(uniform, key=lambda n: max(s["validation"] for s in selection[n]["scored"]) if selection[n]["scored"]
                     else -math.inf) if uniform else None)
    measured = {v.name: ensure_evaluation(cfg, store, v, tasks) for v in variants}
    ev_cfg, seed = cfg["eval"], int(cfg["eval"].get("seed", 0))
    resamples = int((ev_cfg.get("bootstrap") or {}).get("resamples", 2000))
    intervals = {n: ev.intervals(m, ev_cfg, seed=seed, n_resamples=resamples) for n, m in measured.items()}
    comparisons = ev.paired_comparisons(measured, headline_metrics(), ev_cfg, seed=seed, n_resamples=resamples)
    merges = [v.name for v in variants if v.name.startswith("merged/")]
    rows = candidate_rows(merges, measured, reference or merges[0], ev_cfg, seed=seed, n_resamples=resamples)
    caption = describe_subsets(ev_cfg) + " [lo, hi]: 95% bootstrap interval over the evaluated examples."
    table = format_table({n: m.metrics for n, m in measured.items()}, caption=caption,
                         intervals={n: ci for n, (ci, _) in intervals.items()})
    versus = comparison_table(rows, reference or merges[0], selected)
    text = (f"{table}\n\nEach candidate against the best uniform merge ({reference}, chosen on validation) and the "
            f"mixture on the aggregate, paired over the same test items; p_holm: Holm-adjusted over the "
            f"{len(rows)} candidates. Grid points and search trials were scored on the validation split's "
            f"held-out loss only.\n\n{versus}\n")
    write_text_atomic(run_dir / "methods.md", text)
    plot = plot_methods(rows, run_dir / "methods.png")
    write_json_atomic(run_dir / "methods.json", json_safe({
        "variants": {n: {"metrics": dict(m.metrics), "ci95": intervals[n][0], "n": intervals[n][1]}
                     for n, m in measured.items()},
        "best_uniform": reference, "candidates": rows, "selection": selection, "comparisons": comparisons,
        "verdict": ev.verdict(measured, comparisons), "config": cfg}))
    print("\n" + text)
    if plot:
        print(f"Figure: {plot}")
    tracker.log_table("methods", ["candidate", "aggregate", "vs_best_uniform", "vs_mixture", "gap_closed"],
                      [[r["variant"], r["aggregate"], (r["vs_best_uniform"] or {}).get("difference"),
                        (r["vs_mixture"] or {}).get("difference"), r["gap_closed"]] for r in rows])
    best = max(rows, key=lambda r: r["aggregate"] if r["aggregate"] is not None else -math.inf)
    return best["aggregate"]
