"""Plain-text result tables (Markdown), printed at the end of a run and written beside metrics.json."""

from __future__ import annotations

from collections.abc import Mapping


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def format_table(metrics_by_variant: Mapping[str, Mapping[str, float]], *, caption: str = "") -> str:
    """One row per variant, one column per metric (``aggregate`` last), as a Markdown table."""
    columns = sorted({k for m in metrics_by_variant.values() for k in m if k != "aggregate"})
    if any("aggregate" in m for m in metrics_by_variant.values()):
        columns.append("aggregate")
    header = ["variant", *columns]
    rows = [[name, *(_fmt(m.get(c)) for c in columns)] for name, m in metrics_by_variant.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    if caption:
        lines.append(f"\n{caption}")
    return "\n".join(lines)
