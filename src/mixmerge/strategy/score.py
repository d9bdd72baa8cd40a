"""`strategy=score`: score other tools' outputs (human-eval samples, CodeXGLUE files) with our evaluators."""

from __future__ import annotations

from pathlib import Path


def run(cfg, *, store, run_dir: Path, tracker):
    from mixmerge.eval.score import run as score_files

    report = score_files(cfg["eval"], run_dir)
    tracker.log_summary(report)
    return report.get("pass@1", report.get("bleu4"))
