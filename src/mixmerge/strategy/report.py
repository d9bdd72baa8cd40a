"""`strategy=report`: one table (CSV, Markdown) and the weight-sweep / Pareto plots for a finished multirun."""

from __future__ import annotations

from pathlib import Path


def run(cfg, *, store, run_dir: Path, tracker):
    from mixmerge.sweep.report import report_sweep

    strategy = cfg["strategy"]
    sweep_dir = Path(strategy["sweep_dir"])
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"strategy.sweep_dir={str(sweep_dir)!r} is not a directory (a multirun's sweep dir)")
    paths = report_sweep(sweep_dir, out_dir=run_dir / "report", metric=strategy.get("metric"),
                         maximize=bool(strategy.get("maximize", True)))
    tracker.log_images({k: p for k, p in paths.items() if str(p).endswith(".png")})
    for name, path in paths.items():
        print(f"{name}: {path}")
    return None
