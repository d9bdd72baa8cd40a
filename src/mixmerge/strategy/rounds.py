"""`strategy=rounds`: merge new specialists into a main model over time and watch each skill's retention.

Round k adds the specialists named in ``strategy.rounds[k].add``:

* ``base_mode: previous`` — the new specialists are fine-tuned *from round k-1's model*, which is also the
  merge base: round k = merge(base = model_{k-1}, models = new specialists);
* ``base_mode: original`` — the new specialists are fine-tuned from the original base, and round k-1's
  model is one more task vector: round k = merge(base = original, models = [model_{k-1}, *new specialists]).

A round with a single model and ``merge: null`` is that model as is (round 1 = the first specialist).
Every round model is evaluated on every task seen so far; ``rounds.md``/``rounds.json`` hold the table
(rows = rounds, columns = metrics) and ``rounds_retention.png`` each skill's metrics across rounds.
Every specialist, merge and evaluation is a cached artifact, so a rerun is all cache hits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mixmerge.files import save_figure_atomic, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

BASE_MODES = ("previous", "original")
# Merge keys that apply to every method; a round naming another method than the merge group keeps only these.
GENERIC_MERGE_KEYS = ("seed", "dtype", "out_dtype", "vocab_policy", "max_base_distance", "shard_size_mb")


def round_merge_config(global_merge: Mapping[str, Any], round_merge: Mapping[str, Any] | None) -> dict | None:
    """The merge config of one round: the round's keys over the merge group's (generic keys only if the
    round names a different method); None when the round does not merge."""
    if round_merge is None:
        return None
    round_merge = dict(round_merge)
    method = round_merge.get("method", global_merge.get("method"))
    if method == global_merge.get("method"):
        start = dict(global_merge)
    else:
        start = {k: global_merge[k] for k in GENERIC_MERGE_KEYS if k in global_merge}
    merged = {**start, **{k: v for k, v in round_merge.items() if v is not None or k == "weights"}, "method": method}
    from mixmerge.merge.params import IO_KEYS

    for k in IO_KEYS:
        merged.pop(k, None)
    return merged


def needs_task_data(merge_cfg: Mapping[str, Any]) -> bool:
    """A data-aware merge (Fisher, RegMean) whose statistics the pipeline computes from each specialist's task data."""
    from mixmerge.merge.registry import get_method

    kind = get_method(str(merge_cfg["method"])).kind
    return ((kind == "fisher" and not merge_cfg.get("fisher_paths"))
            or (kind == "regmean" and not merge_cfg.get("gram_paths")))


def plan_rounds(strategy_cfg: Mapping[str, Any], task_names: Sequence[str], global_merge: Mapping[str, Any]) -> list[dict]:
    """Check ``strategy.rounds`` before any work; return ``[{add, merge, n_models}]`` per round."""
    from mixmerge.merge import validate_merge_config

    mode = strategy_cfg.get("base_mode", "previous")
    if mode not in BASE_MODES:
        raise ValueError(f"strategy.base_mode={mode!r} is not one of {BASE_MODES}")
    rounds = strategy_cfg.get("rounds") or []
    if not rounds:
        raise ValueError("strategy.rounds is empty; give e.g. rounds: [{add: [codegen]}, {add: [codesum], "
                         "merge: {method: ties}}]")
    seen: set[str] = set()
    plan = []
    for k, rnd in enumerate(rounds, start=1):
        where = f"strategy.rounds[{k - 1}]"
        add = list(rnd.get("add") or [])
        if not add:
            raise ValueError(f"{where}.add is empty; name the specialist tasks this round adds")
        unknown = [t for t in add if t not in task_names]
        if unknown:
            raise ValueError(f"{where}.add names {unknown}, not tasks of the task config {sorted(task_names)}; "
                             "pick a task config that has them, e.g. task=three")
        again = [t for t in add if t in seen]
        if again:
            raise ValueError(f"{where}.add repeats {again}, already added in an earlier round")
        seen.update(add)
        n_models = len(add) + (1 if k > 1 and mode == "original" else 0)
        merge = round_merge_config(global_merge, rnd.get("merge"))
        if merge is None and n_models > 1:
            raise ValueError(f"{where}.merge is null but the round has {n_models} models to combine; "
                             "give merge: {method: ties} (or linear, dare, ...)")
        if merge is not None:
            try:
                validate_merge_config(merge, n_models=n_models)
            except ValueError as err:
                raise ValueError(f"{where}.merge: {err}") from err
            if k > 1 and mode == "original" and needs_task_data(merge):
                raise ValueError(f"{where}.merge: method {merge['method']} needs each merged model's statistics on "
                                 f"its own task's data, and round {k - 1}'s main model has no single task; use "
                                 "strategy.base_mode=previous (the new specialists merge into it) or give the "
                                 "statistics' paths (merge.fisher_paths)")
        plan.append({"add": add, "merge": merge, "n_models": n_models})
    return plan


def _repair_exact_match(cfg, store, variant, splits, task: str) -> dict[str, float]:
    """``<task>/exact_match`` of greedy repairs (cached per model and data), when ``strategy.repair_eval`` asks."""
    import json

    from mixmerge.eval.repair import repair_exact_match
    from mixmerge.models import load_model, load_tokenizer

    rcfg = dict(cfg["strategy"].get("repair_eval") or {})
    if not rcfg.get("enabled", False) or not cfg["eval"].get("enabled", True):
        return {}
    limit = rcfg.get("limit")
    examples = splits.test if limit is None else splits.test[: int(limit)]
    key_cfg = {"repair_eval": rcfg, "prompt_style": cfg["model"]["prompt_style"], "data": splits.key}

    def build(work: Path) -> dict:
        model = load_model(variant.path, dtype=cfg["model"]["dtype"])
        model.eval()
        em = repair_exact_match(model, load_tokenizer(variant.path), examples,
                                max_new_tokens=int(rcfg.get("max_new_tokens", 256)),
                                batch_size=int(rcfg.get("batch_size", 8)), prompt_style=cfg["model"]["prompt_style"])
        write_json_atomic(work / "metrics.json", {f"{task}/exact_match": em})
        return {"n_examples": len(examples)}

    art = store.get_or_build("eval", key_cfg, build, inputs={"model": variant.key},
                             label=f"repair exact match of {variant.name}")
    return json.loads((art.path / "metrics.json").read_text())


def run(cfg: Mapping[str, Any], *, store, run_dir: Path, tracker) -> float | None:
    """Round by round: specialists → merge into the main model → evaluate on all tasks seen → report."""
    from mixmerge.data import load_tasks
    from mixmerge.eval.evidence import intervals
    from mixmerge.models import BaseModel
    from mixmerge.stages import Variant, ensure_base, ensure_evaluation, ensure_merged, ensure_specialist
    from mixmerge.sweep.objective import metric_statistic

    strategy = cfg["strategy"]
    mode = strategy.get("base_mode", "previous")
    tasks = load_tasks(cfg["task"], store=store, seed=cfg["seed"])
    plan = plan_rounds(strategy, list(tasks), cfg["merge"])
    original = ensure_base(cfg, store)
    current: Variant | None = None
    seen: list[str] = []
    rows = []
    for k, rnd in enumerate(plan, start=1):
        name = f"round{k}"
        train_from = original
        if mode == "previous" and current is not None:
            train_from = BaseModel(f"round{k - 1}", current.path, current.key, f"round {k - 1} of strategy=rounds")
        specialists = [ensure_specialist(cfg, store, tracker, train_from, t, tasks[t]) for t in rnd["add"]]
        models = ([current] if mode == "original" and current is not None else []) + specialists
        if rnd["merge"] is None:
            model = models[0]
        else:
            merge_base = train_from if mode == "previous" else original
            model = ensure_merged({**cfg, "merge": rnd["merge"]}, store, merge_base, models, task_data=tasks)
        current = Variant(name, model.path, model.key)
        seen += rnd["add"]
        heldout = {t: tasks[t] for t in seen}
        measured = ensure_evaluation(cfg, store, current, heldout) if cfg["eval"].get("enabled", True) else None
        metrics = dict(measured.metrics) if measured else {}
        ci95, n = intervals(measured, cfg["eval"], seed=int(cfg["eval"].get("seed", 0)),
                            n_resamples=int((cfg["eval"].get("bootstrap") or {}).get("resamples", 2000))
                            ) if measured else ({}, {})
        for t in seen:
            if tasks[t].info.get("source") == "repair":
                metrics.update(_repair_exact_match(cfg, store, current, tasks[t], t))
        for m in metrics:  # a metric measured outside the evaluation stage carries no per-example data here
            ci95.setdefault(m, None)
            n.setdefault(m, None)
        log.info("round %d (+%s, %s): %s", k, rnd["add"], (rnd["merge"] or {}).get("method", "no merge"), metrics)
        rows.append({"round": k, "added": rnd["add"], "tasks_seen": list(seen),
                     "merge": rnd["merge"], "base_mode": mode, "artifact": str(current.path), "key": current.key,
                     "metrics": metrics, "ci95": ci95, "n": n})
        tracker.log_metrics({f"{name}/{m}": v for m, v in metrics.items()})
    write_rounds_report(rows, run_dir)
    # The sweeper's number: the last round's objective.metric (multi-objective lists are not supported here).
    metric = cfg["objective"].get("metric", "aggregate")
    objective = metric_statistic(rows[-1], metric, statistic=cfg["objective"].get("statistic", "mean"),
                                 direction=cfg["objective"].get("direction", "maximize"), where=f"round {rows[-1]['round']}"
                                 ) if isinstance(metric, str) and metric in rows[-1]["metrics"] else None
    tracker.log_summary({"objective": objective})
    return objective


def metric_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every metric any round reports, grouped by task (``<task>/<metric>``) with ``aggregate`` last."""
    names = {m for r in rows for m in r["metrics"]}
    return sorted(n for n in names if n != "aggregate") + (["aggregate"] if "aggregate" in names else [])


def retention(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[float | None]]:
    """Each metric across rounds (None before its task was added): the series the plot draws."""
    return {m: [r["metrics"].get(m) for r in rows] for m in metric_columns(rows)}


def rounds_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: one row per round, one column per metric seen so far (blank until its task is added)."""
    cols = metric_columns(rows)

    def fmt(v):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    lines = ["| round | added | merge | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 3)]
    for r in rows:
        method = (r["merge"] or {}).get("method", "—")
        lines.append(f"| {r['round']} | {', '.join(r['added'])} | {method} | "
                     + " | ".join(fmt(r["metrics"].get(c)) for c in cols) + " |")
    return "\n".join(lines)


def plot_retention(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """One panel per task, one line per metric, x = round; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {m: v for m, v in retention(rows).items() if "/" in m}
    by_task: dict[str, list[str]] = {}
    for m in series:
        by_task.setdefault(m.split("/", 1)[0], []).append(m)
    if not by_task:
        return None
    fig, axes = plt.subplots(1, len(by_task), figsize=(4 * len(by_task), 3.2), squeeze=False)
    rounds = [r["round"] for r in rows]
    for ax, (task, metrics) in zip(axes[0], by_task.items(), strict=True):
        for m in metrics:
            pts = [(x, y) for x, y in zip(rounds, series[m], strict=True) if y is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m.split("/", 1)[1])
        ax.set_title(task)
        ax.set_xlabel("round")
        ax.set_xticks(rounds)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)
    return path


def write_rounds_report(rows: Sequence[Mapping[str, Any]], run_dir: Path) -> dict[str, Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "rounds.json", {"rounds": list(rows), "retention": retention(rows)})
    table = rounds_table(rows)
    write_text_atomic(run_dir / "rounds.md", "# Merge rounds: every task seen so far, after each round\n\n" + table + "\n")
    print("\n" + table + "\n")
    files = {"json": run_dir / "rounds.json", "md": run_dir / "rounds.md"}
    plot = plot_retention(rows, run_dir / "rounds_retention.png")
    if plot is not None:
        files["plot"] = plot
    return files
