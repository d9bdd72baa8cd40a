"""`strategy=merge`: merge arbitrary HF folders (or peft adapters) with no training and no evaluation."""

from __future__ import annotations

import logging
from pathlib import Path

from mixmerge.files import write_json_atomic

log = logging.getLogger(__name__)


def run(cfg, *, store, run_dir: Path, tracker) -> None:
    from mixmerge.merge.standalone import run as merge_standalone

    report = merge_standalone(cfg["merge"])
    write_json_atomic(run_dir / "merge_report.json", report)
    tracker.log_summary({"merge_seconds": report["time_s"]})
    log.info("merged %s into %s", cfg["merge"].get("models"), cfg["merge"].get("output"))
    return None
