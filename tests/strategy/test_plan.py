"""strategy=plan on the tiny model: it lists what a run would build, runs nothing, sees what the cache holds
after a real run, and estimates the rest from the cache's measured build times."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mixmerge.strategy.plan import PlannedItem, estimate_seconds, format_plan
from tests.conftest import REPO

FAST = ["model=tiny", "logger=none", "trainer.max_steps=2", "task.max_train_examples=16",
        "task.max_eval_examples=8", "eval=quick", "eval.loss.limit=4", "analysis.enabled=false"]


def _run(tmp_path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "run.py", *FAST, f"cache.root={tmp_path / 'cache'}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _kinds(cache) -> set[str]:
    return {p.parent.parent.name for p in cache.glob("*/*/manifest.json")}


@pytest.mark.slow
def test_plan_runs_nothing_then_sees_the_cache_and_estimates_from_it(tmp_path):
    plan = _run(tmp_path, "strategy=plan", "merge=dare", f"hydra.run.dir={tmp_path / 'plan1'}")
    assert _kinds(tmp_path / "cache") <= {"dataset"}  # no model was built: only the task data was read
    items = json.loads((tmp_path / "plan1" / "plan.json").read_text())["items"]
    labels = [i["label"] for i in items]
    assert labels[:3] == ["base tiny", "specialist/codegen", "specialist/codesum"]
    assert {"merged (dare)", "evaluation of base", "evaluation of merged"} <= set(labels)
    assert all(not i["cached"] for i in items)
    assert "no measurement in the cache" in plan.stdout and "TO DO" in plan.stdout

    _run(tmp_path, "merge=ties", f"hydra.run.dir={tmp_path / 'real'}")  # a real run fills the cache
    plan = _run(tmp_path, "strategy=plan", "merge=dare", f"hydra.run.dir={tmp_path / 'plan2'}")
    items = {i["label"]: i for i in json.loads((tmp_path / "plan2" / "plan.json").read_text())["items"]}
    for label in ("base tiny", "specialist/codegen", "specialist/codesum", "mixture", "evaluation of base"):
        assert items[label]["cached"], label
    todo = [i for i in items.values() if not i["cached"]]
    assert [i["label"] for i in todo] == ["merged (dare)", "evaluation of merged"]
    merged = json.loads(next((tmp_path / "cache" / "merged").glob("*/manifest.json")).read_text())
    assert items["merged (dare)"]["estimate_s"] == pytest.approx(merged["build_seconds"])
    assert "To run: 2 of " in plan.stdout and "without a measurement" not in plan.stdout


def test_estimates_use_seconds_per_step_on_the_same_base(tmp_path):
    from mixmerge.cache import ArtifactStore, write_json_atomic

    store = ArtifactStore(tmp_path)
    for key, base, seconds, steps in (("a", "B1", 10.0, 5), ("b", "B1", 30.0, 5), ("c", "B2", 999.0, 1)):
        write_json_atomic(tmp_path / "specialist" / key / "manifest.json",
                          {"build_seconds": seconds, "steps": steps, "inputs": {"base": base}})
    est, basis = estimate_seconds(store, "specialist", {"trainer": {"max_steps": 100}}, {"base": "B1"})
    assert est == pytest.approx(400.0) and basis == "4.00 s/step x 100 steps (2 measured, same base)"
    est, basis = estimate_seconds(store, "merged", {}, {"base": "B1"})
    assert est is None and basis == "no measurement in the cache"
    text = format_plan([PlannedItem("specialist", "k1", "specialist/x", False, est, basis),
                        PlannedItem("merged", "k2", "merged (ties)", True)], "Plan:")
    assert "To run: 1 of 2 (1 train); estimated 0 s plus 1 without a measurement" in text, text
