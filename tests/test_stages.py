"""The stages (mixmerge.stages): the in-memory merge gives the same model as the streamed one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

FAST = ["model=tiny", "logger=none", "trainer.max_steps=2", "task.max_train_examples=16", "task.max_eval_examples=8",
        "eval=quick", "eval.loss.limit=8", "analysis.enabled=false", "strategy.variants=[merged]", "merge=ties",
        "merge.weight=0.3"]


def test_in_memory_merge_matches_the_streamed_merge(tmp_path):
    def run(name: str, *extra: str) -> dict:
        proc = subprocess.run([sys.executable, "run.py", *FAST, f"cache.root={tmp_path / name}",
                               f"hydra.run.dir={tmp_path / ('run_' + name)}", *extra], cwd=REPO,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((tmp_path / f"run_{name}" / "metrics.json").read_text())["variants"]["merged"]

    streamed = run("disk")
    resident = run("memory", "strategy.merge_in_memory=true")
    assert resident["artifact"].startswith("in-memory:") and not streamed["artifact"].startswith("in-memory:")
    for key, value in streamed["metrics"].items():
        assert resident["metrics"][key] == pytest.approx(value, abs=1e-5), key
