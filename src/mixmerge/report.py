"""Plain-text result tables (Markdown), printed at the end of a run and written beside metrics.json."""

from __future__ import annotations

from collections.abc import Mapping


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def format_interval(value, interval=None, spread=None) -> str:
    """``0.1033 [0.0700, 0.1400]``: a value with its 95% interval (and ``sd 0.0120`` over seeds if given)."""
    text = _fmt(value)
    if value is not None and interval:
        text += f" [{_fmt(interval[0])}, {_fmt(interval[1])}]"
    if value is not None and spread is not None:
        text += f" sd {_fmt(spread)}"
    return text


def format_table(metrics_by_variant: Mapping[str, Mapping[str, float]], *, caption: str = "",
                 intervals: Mapping[str, Mapping[str, list | None]] | None = None,
                 spreads: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """One row per variant, one column per metric (``aggregate`` last), as a Markdown table; each value
    with its 95% interval when ``intervals`` has one, and its standard deviation over seeds from ``spreads``.
    An lm-eval ``*_stderr`` column is left out where its metric shows an interval (metrics.json keeps it)."""
    intervals, spreads = intervals or {}, spreads or {}
    shown = {f"{k}_stderr" for ci in intervals.values() for k, v in ci.items() if v}
    columns = sorted({k for m in metrics_by_variant.values() for k in m if k != "aggregate" and k not in shown})
    if any("aggregate" in m for m in metrics_by_variant.values()):
        columns.append("aggregate")
    header = ["variant", *columns]
    rows = [[name, *(format_interval(m.get(c), (intervals.get(name) or {}).get(c), (spreads.get(name) or {}).get(c))
                     for c in columns)] for name, m in metrics_by_variant.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    if caption:
        lines.append(f"\n{caption}")
    return "\n".join(lines)
