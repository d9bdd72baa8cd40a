"""`strategy=report`: for a finished multirun, one table (CSV, Markdown), the weight-sweep / Pareto plots, the
paper-style table and the sweep-level verdict (best merge of the sweep against the mixture)."""

from __future__ import annotations

from pathlib import Path


def run(cfg, *, store, run_dir: Path, tracker):
    from mixmerge.files import write_text_atomic
    from mixmerge.sweep.paper_table import COLUMNS, paper_rows, paper_table, sweep_verdict
    from mixmerge.sweep.report import collect_metrics, report_sweep

    strategy = cfg["strategy"]
    sweep_dir = Path(strategy["sweep_dir"])
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"strategy.sweep_dir={str(sweep_dir)!r} is not a directory (a multirun's sweep dir)")
    paths = report_sweep(sweep_dir, out_dir=run_dir / "report", metric=strategy.get("metric"),
                         maximize=bool(strategy.get("maximize", True)))
    tracker.log_images({k: p for k, p in paths.items() if str(p).endswith(".png")})
    rows = collect_metrics(sweep_dir)
    paths["paper_table"] = run_dir / "report" / "paper_table.md"
    if paper_rows(rows):
        table = paper_table(rows)
    else:
        table = (f"No job has {', '.join(c[0] for c in COLUMNS.values())}: the paper-style table needs an "
                 f"evaluation that computes them (eval=default); eval=quick computes the held-out loss only.")
    verdict = sweep_verdict(rows)
    write_text_atomic(paths["paper_table"], f"{table}\n\n{verdict}\n")
    print(f"\n{table}\n\n{verdict}\n")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return None
