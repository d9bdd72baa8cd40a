"""Figures and tables of a weight analysis: layers on the x axis, one line per model or pair.

Figures mirror the paper's: the L2 norm of each model's delta per layer (its Figure 2) and the Pearson
correlation between task vectors per layer (its Figure 3), plus cosine and sign-conflict rate, and
per-module-type panels of each. Every file is written atomically (temp file + rename).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from mixmerge.analysis.layers import MODULE_TYPES
from mixmerge.analysis.stream import ALL, AnalysisResult
from mixmerge.files import save_figure_atomic, write_json_atomic, write_text_atomic

__all__ = ["plot_analysis", "write_tables"]

NORM_COLUMNS = ("model", "layer", "module", "l2", "rms", "base_l2", "rel_l2", "numel")
PAIR_COLUMNS = ("pair", "model_a", "model_b", "layer", "module", "pearson", "cosine", "sign_conflict_rate", "numel")

_PAIR_STATS = {
    "pearson": ("Pearson r of task vectors", "Pearson r (unitless)", (-1.05, 1.05)),
    "cosine": ("Cosine similarity of task vectors", "cosine (unitless)", (-1.05, 1.05)),
    "sign_conflict_rate": ("Sign-conflict rate of task vectors", "fraction of co-updated weights", (0.0, 1.0)),
}


def _clean(value):
    """NaN/inf are not JSON; write them as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_tables(result: AnalysisResult, out_dir: str | Path) -> dict[str, Path]:
    """Every number as JSON (``analysis.json``) and CSV (``delta_norms.csv``, ``task_vector_similarity.csv``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_dict()
    data["norm_rows"] = [{k: _clean(v) for k, v in r.items()} for r in data["norm_rows"]]
    data["pair_rows"] = [{k: _clean(v) for k, v in r.items()} for r in data["pair_rows"]]
    paths = {
        "json": out / "analysis.json",
        "norms_csv": out / "delta_norms.csv",
        "pairs_csv": out / "task_vector_similarity.csv",
    }
    write_json_atomic(paths["json"], data)
    write_text_atomic(paths["norms_csv"], _csv_text(result.norm_rows, NORM_COLUMNS))
    write_text_atomic(paths["pairs_csv"], _csv_text(result.pair_rows, PAIR_COLUMNS))
    return paths


def _series(rows: Sequence[dict], key: str, name: str, module: str, stat: str, layers: Sequence[int]):
    by_layer = {r["layer"]: r[stat] for r in rows if r[key] == name and r["module"] == module}
    return [by_layer.get(layer, math.nan) for layer in layers]


def _save(fig, out: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    paths = []
    for fmt in formats:
        paths.append(save_figure_atomic(fig, out / f"{stem}.{fmt}", format=fmt, dpi=120, bbox_inches="tight"))
    return paths


def _line_figure(plt, layers, lines: dict[str, list[float]], title: str, ylabel: str, ylim=None):
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, ys in lines.items():
        ax.plot(layers, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel("decoder layer index")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=8)
    return fig


def _module_grid(plt, layers, modules, lines_per_module: dict[str, dict[str, list[float]]], title, ylabel, ylim=None):
    cols = min(4, len(modules))
    rows = math.ceil(len(modules) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False, sharex=True)
    for ax, module in zip(axes.flat, modules, strict=False):
        for label, ys in lines_per_module[module].items():
            ax.plot(layers, ys, marker="o", markersize=2, label=label)
        ax.set_title(module, fontsize=9)
        ax.grid(alpha=0.3)
        if ylim is not None:
            ax.set_ylim(*ylim)
    for ax in list(axes.flat)[len(modules):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("decoder layer index")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8,
                   bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def plot_analysis(result: AnalysisResult, out_dir: str | Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write the analysis figures in every format of ``formats``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers = result.block_layers()
    present = {r["module"] for r in result.norm_rows if isinstance(r["layer"], int)}
    modules = [m for m in MODULE_TYPES if m in present]
    written: list[Path] = []

    lines = {m: _series(result.norm_rows, "model", m, ALL, "l2", layers) for m in result.models}
    fig = _line_figure(plt, layers, lines, "L2 norm of the weight delta from the base per layer",
                       "‖θ_model − θ_base‖₂ (weight units)")
    written += _save(fig, out, "delta_l2_by_layer", formats)
    plt.close(fig)

    grid = {mod: {m: _series(result.norm_rows, "model", m, mod, "l2", layers) for m in result.models}
            for mod in modules}
    fig = _module_grid(plt, layers, modules, grid, "L2 norm of the weight delta per module type",
                       "‖Δθ‖₂ (weight units)")
    written += _save(fig, out, "delta_l2_by_module", formats)
    plt.close(fig)

    if result.pairs:
        pair_names = list(dict.fromkeys(r["pair"] for r in result.pair_rows))
        for stat, (title, ylabel, ylim) in _PAIR_STATS.items():
            lines = {p: _series(result.pair_rows, "pair", p, ALL, stat, layers) for p in pair_names}
            fig = _line_figure(plt, layers, lines, f"{title} per layer", ylabel, ylim)
            written += _save(fig, out, f"{stat}_by_layer", formats)
            plt.close(fig)
        grid = {mod: {p: _series(result.pair_rows, "pair", p, mod, "pearson", layers) for p in pair_names}
                for mod in modules}
        fig = _module_grid(plt, layers, modules, grid, "Pearson r of task vectors per module type",
                           "Pearson r (unitless)", (-1.05, 1.05))
        written += _save(fig, out, "pearson_by_module", formats)
        plt.close(fig)
    return written
