"""One table and the paper's figures from a sweep directory of ``metrics.json`` files.

Each job of a multirun leaves ``<sweep_dir>/<job>/metrics.json`` (variants -> metrics, objective, resolved
config) next to Hydra's ``.hydra/overrides.yaml``. ``collect_metrics`` flattens them into rows,
``write_report`` writes ``report.csv``, ``report.md`` and plots (merged-model metric vs ``merge.weight`` per
method, with the specialists and the mixture as reference lines; the Pareto front when the objective has two
values), and ``best_per_method`` picks the best row of each merge method.

Intervals: a metric with a ``ci95`` in metrics.json gets ``<column>_lo`` / ``<column>_hi`` columns in
the CSV; the Markdown tables show it as ``value [lo, hi]`` and the weight-sweep plots draw it as a band.
With replicates, the standard deviation over seeds (``spread``) is ``<column>_sd``, shown as ``sd=…``.
metrics.json files written before intervals existed (no ``ci95``) simply show none.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mixmerge.files import save_figure_atomic, write_text_atomic

METRICS_FILE = "metrics.json"
# Row keys every report starts with; metric columns follow, sorted.
LEAD_COLUMNS = ("job", "method", "weight", "objective", "overrides")
MERGE_PARAMS = ("density", "epsilon", "gamma", "lambda")
# Suffixes of a column's 95 % interval bounds (``merged/aggregate_lo``) and of its standard deviation over
# seeds (``_sd``), right after the column itself in the CSV.
INTERVAL_SUFFIXES = ("_lo", "_hi")
SPREAD_SUFFIX = "_sd"
COMPANION_SUFFIXES = (*INTERVAL_SUFFIXES, SPREAD_SUFFIX)


def _read_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    import yaml

    data = yaml.safe_load(path.read_text()) or []
    return [str(x) for x in data]


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _interval(value: Any, where: str) -> tuple[float, float] | None:
    """A ci95 entry as (lo, hi); None when absent or null (a metric without per-example data)."""
    if value is None:
        return None
    if (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(b, int | float) and not isinstance(b, bool) for b in value)):
        return float(value[0]), float(value[1])
    raise ValueError(f"{where}: a ci95 entry must be [lo, hi] or null, got {value!r}; "
                     "rewrite that metrics.json or remove the job from the sweep directory")


def _put(row: dict[str, Any], column: str, value: Any, interval: Any, where: str, spread: Any = None) -> None:
    row[column] = value
    bounds = _interval(interval, f"{where} {column}")
    if bounds is not None:
        row[column + "_lo"], row[column + "_hi"] = bounds
    if _is_number(spread):
        row[column + SPREAD_SUFFIX] = float(spread)


def flatten_job(metrics: Mapping[str, Any], job: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """One row: job id, merge method and parameters, objective(s) and what they were computed from,
    ``<variant>/<task>/<metric>`` values with their ``_lo``/``_hi`` interval bounds and ``_sd`` spread over
    seeds, and the run's verdict
    (``verdict/winner``, ``verdict/difference`` = mixture − merge with bounds, ``verdict/p_value``)."""
    config = metrics.get("config") or {}
    row: dict[str, Any] = {"job": job, "method": _get(config, "merge.method"),
                           "weight": _get(config, "merge.weight"), "overrides": " ".join(overrides)}
    for p in MERGE_PARAMS:
        v = _get(config, f"merge.{p}")
        if v is not None:
            row[p] = v
    objective = metrics.get("objective")
    if isinstance(objective, list | tuple):
        for i, v in enumerate(objective):
            row[f"objective_{i}"] = v
        row["objective"] = objective[0] if len(objective) == 1 else None
    else:
        row["objective"] = objective
    source = config.get("objective") if isinstance(config.get("objective"), Mapping) else None
    if source and source.get("variant") and isinstance(source.get("metric"), str):
        row["objective_source"] = f"{source['variant']}/{source['metric']}"
        row["objective_statistic"] = source.get("statistic", "mean")
    where = f"job {job}"
    for variant, body in (metrics.get("variants") or {}).items():
        body = body or {}
        intervals, spread = body.get("ci95") or {}, body.get("spread") or {}
        for name, value in (body.get("metrics") or {}).items():
            _put(row, f"{variant}/{name}", value, intervals.get(name), where, spread.get(name))
    verdict = metrics.get("verdict")
    if isinstance(verdict, Mapping):
        row["verdict/winner"] = verdict.get("winner")
        row["verdict/best_merge"] = verdict.get("best_merge")
        _put(row, "verdict/difference", verdict.get("difference"), verdict.get("ci95"), where)
        row["verdict/p_value"] = verdict.get("p_value")
    return row


def collect_metrics(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job's metrics.json under ``sweep_dir`` as a flat row, ordered by job (numeric names first)."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for path in sweep_dir.rglob(METRICS_FILE):
        job_dir = path.parent
        metrics = json.loads(path.read_text())
        rel = job_dir.relative_to(sweep_dir).as_posix() or "."
        rows.append(flatten_job(metrics, rel, _read_overrides(job_dir)))

    def order(row: Mapping[str, Any]) -> tuple:
        parts = row["job"].split("/")
        return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)

    return sorted(rows, key=order)


def companion_columns(columns: Iterable[str]) -> set[str]:
    """The ``<column>_lo`` / ``_hi`` / ``_sd`` columns among ``columns`` whose ``<column>`` is there too."""
    columns = set(columns)
    return {c for c in columns if c.endswith(COMPANION_SUFFIXES) and c[:-3] in columns}


def columns_of(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every column of ``rows``: job, method, weight, merge parameters, objectives, the metrics sorted (each
    followed by its ``_lo``/``_hi`` bounds and ``_sd``), the overrides last."""
    seen: set[str] = set()
    for r in rows:
        seen.update(r)
    bounds = companion_columns(seen)
    lead = [c for c in LEAD_COLUMNS if c in seen]
    params = [c for c in MERGE_PARAMS if c in seen]
    objectives = sorted(c for c in seen if c.startswith("objective_") and c not in bounds)
    rest = sorted(seen - set(lead) - set(params) - set(objectives) - bounds)
    with_bounds = [c for col in lead[:-1] + params + objectives + rest
                   for c in (col, *(col + s for s in COMPANION_SUFFIXES if col + s in bounds))]
    return with_bounds + lead[-1:]


def reference_variants(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The non-merged variants the jobs report (base, each ``specialist/<task>``, mixture), in that order."""
    columns = {c for r in rows for c in r}
    specialists = sorted({"specialist/" + c.split("/")[1] for c in columns
                          if c.startswith("specialist/") and c.count("/") >= 2})
    return [v for v in ("base", *specialists, "mixture") if any(c.startswith(v + "/") for c in columns)]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))


def best_per_method(rows: Sequence[Mapping[str, Any]], metric: str = "objective",
                    maximize: bool = True) -> dict[str, dict[str, Any]]:
    """The row with the best ``metric`` for each merge method (rows without a finite value are ignored)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        v = r.get(metric)
        if not _is_number(v):
            continue
        method = str(r.get("method"))
        cur = best.get(method)
        if cur is None or (v > cur[metric] if maximize else v < cur[metric]):
            best[method] = dict(r)
    return dict(sorted(best.items()))


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def interval_of(row: Mapping[str, Any], column: str) -> tuple[float, float] | None:
    """``column``'s 95 % interval in ``row`` (its ``_lo``/``_hi`` entries), or None when it has none."""
    lo, hi = row.get(column + "_lo"), row.get(column + "_hi")
    return (float(lo), float(hi)) if _is_number(lo) and _is_number(hi) else None


def format_cell(row: Mapping[str, Any], column: str) -> str:
    """``value [lo, hi]`` when the column has an interval in this row (`` sd=…`` after it with a spread
    over seeds), else the value alone."""
    text = _fmt(row.get(column))
    interval = interval_of(row, column)
    if interval is not None and text:
        text += f" [{_fmt(interval[0])}, {_fmt(interval[1])}]"
    if _is_number(row.get(column + SPREAD_SUFFIX)) and text:
        text += f" sd={_fmt(float(row[column + SPREAD_SUFFIX]))}"
    return text


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table; bound and spread columns are folded into their column (``format_cell``)."""
    columns = [c for c in columns if c not in companion_columns(columns)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def weight_sweep_series(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[str, dict[str, Any]]:
    """What the weight-sweep figure draws, as numpy arrays (NaN bounds where a job has no interval).

    ``{"lines": {method: {"weight", "value", "lo", "hi"}}, "references": {variant: {"value", "lo", "hi"}}}``:
    one line per merge method sorted by weight; for a ``merged/<metric>`` figure, the reference variants'
    mean value and mean bounds over the jobs that report them (cached, so equal in every job)."""
    import numpy as np

    lines: dict[str, dict[str, Any]] = {}
    pts = [r for r in rows if _is_number(r.get("weight")) and _is_number(r.get(metric))]
    for method in sorted({str(r["method"]) for r in pts}):
        mine = sorted(((float(r["weight"]), float(r[metric]), *(interval_of(r, metric) or (np.nan, np.nan)))
                       for r in pts if str(r["method"]) == method), key=lambda p: p[:2])
        weight, value, lo, hi = (np.array(col, dtype=float) for col in zip(*mine, strict=True))
        lines[method] = {"weight": weight, "value": value, "lo": lo, "hi": hi}
    references: dict[str, dict[str, float]] = {}
    suffix = metric.split("/", 1)[1] if metric.startswith("merged/") else None
    for ref in reference_variants(rows) if suffix else ():
        column = f"{ref}/{suffix}"
        values = [float(r[column]) for r in rows if _is_number(r.get(column))]
        bounds = [b for r in rows if (b := interval_of(r, column)) is not None]
        if values:
            references[ref] = {"value": float(np.mean(values)),
                               "lo": float(np.mean([b[0] for b in bounds])) if bounds else np.nan,
                               "hi": float(np.mean([b[1] for b in bounds])) if bounds else np.nan}
    return {"lines": lines, "references": references}


def plot_weight_sweep(rows: Sequence[Mapping[str, Any]], metric: str, path: Path) -> Path | None:
    """``metric`` of the merged model vs ``merge.weight``, one line per method; dashed lines mark the
    specialists and the mixture (their mean over jobs) as in the paper's weight-sweep figure. Shaded
    bands are the 95 % intervals, where the jobs' metrics.json carry them (``weight_sweep_series``)."""
    series = weight_sweep_series(rows, metric)
    if not series["lines"]:
        return None
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, line in series["lines"].items():
        (drawn,) = ax.plot(line["weight"], line["value"], marker="o", label=f"merged: {method}")
        has = np.isfinite(line["lo"]) & np.isfinite(line["hi"])
        if has.any():
            ax.fill_between(line["weight"], np.where(has, line["lo"], line["value"]),
                            np.where(has, line["hi"], line["value"]), where=has, color=drawn.get_color(),
                            alpha=0.2, linewidth=0)
    for i, (ref, ref_line) in enumerate(series["references"].items()):
        color = "0.5" if ref == "base" else f"C{6 + i % 4}"
        ax.axhline(ref_line["value"], linestyle="--", linewidth=1, color=color, label=ref)
        if np.isfinite(ref_line["lo"]) and np.isfinite(ref_line["hi"]):
            ax.axhspan(ref_line["lo"], ref_line["hi"], color=color, alpha=0.1, linewidth=0)
    ax.set_xlabel("merge.weight (share of the first specialist)")
    ax.set_ylabel(metric + (" (bands: 95 % interval)" if any(
        np.isfinite(line["lo"]).any() for line in series["lines"].values()) else ""))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure_atomic(fig, path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_pareto(solutions: Sequence[Mapping[str, Any]], directions: Sequence[str], out_dir: Path,
                 names: Sequence[str] = ("objective_0", "objective_1"),
                 others: Sequence[Sequence[float]] = ()) -> dict[str, Path]:
    """``pareto_front.csv`` (params and values of each Pareto-optimal trial) and, for two objectives,
    ``pareto_front.png`` (the front over all other points)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    param_names = sorted({k for s in solutions for k in s.get("params", {})})
    n_obj = len(directions)
    value_names = list(names[:n_obj]) + [f"objective_{i}" for i in range(len(names), n_obj)]
    header = ["trial", *value_names, *param_names]
    lines = [header] + [[s.get("trial", ""), *s["values"], *(s.get("params", {}).get(p, "") for p in param_names)]
                        for s in solutions]
    csv_path = out_dir / "pareto_front.csv"
    write_text_atomic(csv_path, _csv_text(lines))
    out = {"pareto_csv": csv_path}
    if n_obj == 2 and solutions:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4))
        if others:
            ax.scatter([o[0] for o in others], [o[1] for o in others], s=12, color="0.7", label="all")
        front = sorted((s["values"][0], s["values"][1]) for s in solutions)
        ax.plot([x for x, _ in front], [y for _, y in front], marker="o", color="C3", label="Pareto front")
        ax.set_xlabel(f"{value_names[0]} ({directions[0]})")
        ax.set_ylabel(f"{value_names[1]} ({directions[1]})")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        png = out_dir / "pareto_front.png"
        save_figure_atomic(fig, png, dpi=120, bbox_inches="tight")
        plt.close(fig)
        out["pareto_plot"] = png
    return out


def _csv_text(lines: Sequence[Sequence[Any]]) -> str:
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(lines)
    return buf.getvalue()


def pareto_rows(rows: Sequence[Mapping[str, Any]], directions: Sequence[str] = ("maximize", "maximize")
                ) -> list[dict[str, Any]]:
    """Rows on the Pareto front of (objective_0, objective_1)."""
    from mixmerge.sweep.study import pareto_ranks

    pts = [r for r in rows if _is_number(r.get("objective_0")) and _is_number(r.get("objective_1"))]
    ranks = pareto_ranks([(r["objective_0"], r["objective_1"]) for r in pts], directions)
    return [dict(r) for r, k in zip(pts, ranks, strict=True) if k == 0]


def write_report(rows: Sequence[Mapping[str, Any]], out_dir: Path, metric: str = "objective",
                 maximize: bool = True, directions: Sequence[str] = ("maximize", "maximize")) -> dict[str, Path]:
    """report.csv, report.md (all jobs + best per method) and the plots; returns their paths by name."""
    if not rows:
        raise ValueError("write_report: no rows; is there a metrics.json under the sweep directory?")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = columns_of(rows)
    out: dict[str, Path] = {}
    out["csv"] = out_dir / "report.csv"
    write_text_atomic(out["csv"], _csv_text([cols] + [[r.get(c, "") for c in cols] for r in rows]))

    best = best_per_method(rows, metric, maximize)
    md = [f"# Sweep report ({len(rows)} jobs)\n", "## Best configuration per method "
          f"({'max' if maximize else 'min'} {metric})\n"]
    # Ranked by the objective: also show the metric it was computed from, with its interval.
    sources = sorted({b["objective_source"] for b in best.values() if "objective_source" in b}) \
        if metric == "objective" else []
    best_cols = [c for c in ("method", "job", "weight", *MERGE_PARAMS, metric, "objective_statistic", *sources,
                             "overrides") if any(c in b for b in best.values())]
    md.append(markdown_table(list(best.values()), best_cols) if best else "_no finite values_\n")
    md += ["\n## All jobs\n", markdown_table(rows, cols)]

    bounds = companion_columns(cols)
    metric_cols = [c for c in cols if c.startswith("merged/") and c not in bounds] or [metric]
    for m in metric_cols:
        png = plot_weight_sweep(rows, m, out_dir / f"weight_sweep_{m.replace('/', '_')}.png")
        if png is not None:
            out[f"weight_sweep:{m}"] = png
            md.append(f"\n![{m} vs merge.weight]({png.name})\n")
    front = pareto_rows(rows, directions)
    if front:
        sols = [{"trial": r["job"], "values": [r["objective_0"], r["objective_1"]],
                 "params": {k: r[k] for k in ("method", "weight", *MERGE_PARAMS) if k in r}} for r in front]
        others = [(r["objective_0"], r["objective_1"]) for r in rows
                  if _is_number(r.get("objective_0")) and _is_number(r.get("objective_1"))]
        out.update(write_pareto(sols, directions, out_dir, others=others))
        md.append(f"\n## Pareto front ({len(front)} jobs)\n\n![Pareto front](pareto_front.png)\n")
    out["markdown"] = out_dir / "report.md"
    write_text_atomic(out["markdown"], "".join(md))
    return out


def format_best(best: Mapping[str, Mapping[str, Any]], metric: str = "objective") -> str:
    """Text for the end of a sweep: one line per method with its best value and overrides."""
    return "\n".join(f"best {method}: {metric}={format_cell(r, metric)} job={r.get('job')} {r.get('overrides', '')}"
                     for method, r in best.items())


def default_metric(rows: Sequence[Mapping[str, Any]]) -> str:
    """The scalar to rank by: the objective, or for multi-objective runs the merged model's aggregate."""
    for metric in ("objective", "merged/aggregate", "objective_0"):
        if any(_is_number(r.get(metric)) for r in rows):
            return metric
    return "objective"


def report_sweep(sweep_dir: Path, out_dir: Path | None = None, metric: str | None = None,
                 maximize: bool = True, directions: Sequence[str] = ("maximize", "maximize")) -> dict[str, Path]:
    """Collect, write the report under ``<sweep_dir>/report`` (or ``out_dir``) and print the best per method
    (by ``metric``; None: ``default_metric``); what ``run.py strategy=report`` and the sweeper's end call."""
    rows = collect_metrics(Path(sweep_dir))
    metric = metric or default_metric(rows)
    paths = write_report(rows, Path(out_dir) if out_dir else Path(sweep_dir) / "report", metric, maximize,
                         directions)
    print(format_best(best_per_method(rows, metric, maximize), metric))
    return paths
