"""run.py under Hydra multirun on the tiny model: a 2x2 merge grid that trains each specialist once,
one offline W&B run per job, and the sweep report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO

FAST = ["model=tiny", "trainer.max_steps=2", "task.max_train_examples=16", "task.max_eval_examples=8",
        "eval=quick", "eval.loss.limit=4", "analysis.enabled=false"]


def test_grid_multirun_trains_once_and_logs_one_wandb_run_per_job(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "run.py", "-m", *FAST, "merge=ties,dare", "merge.weight=0.3,0.7",
         f"cache.root={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep_dir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [(sweep_dir / str(i) / "run.log").read_text() for i in range(4)]
    # each specialist and the mixture are built by the first job only; later jobs hit the cache
    for label in ("specialist/codegen", "specialist/codesum", "mixture"):
        assert sum(f"cache miss: building {label} " in log for log in logs) == 1, label
        assert all(f"cache hit: {label}" in log for log in logs[1:]), label
    merged_keys = set()
    for i in range(4):
        metrics = json.loads((sweep_dir / str(i) / "metrics.json").read_text())
        assert metrics["objective"] == metrics["variants"]["merged"]["metrics"]["aggregate"]
        merged_keys.add(metrics["variants"]["merged"]["artifact"])
        runs = list((sweep_dir / str(i) / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs  # one W&B run per job, closed before the next job starts
        record = (runs[0] / f"run-{runs[0].name.rsplit('-', 1)[-1]}.wandb").read_bytes()
        merge = metrics["config"]["merge"]
        # the job's own resolved config and its logged metrics are in its own run
        assert f'"method":"{merge["method"]}"'.encode() in record
        assert f'"weight":{merge["weight"]}'.encode() in record
        assert b"merged/aggregate" in record and b"tiny" in record
    assert len(merged_keys) == 4  # four different merges

    report = subprocess.run([sys.executable, "run.py", "strategy=report", f"strategy.sweep_dir={sweep_dir}",
                             f"hydra.run.dir={tmp_path / 'report'}", "logger=none"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "best ties" in report.stdout and "best dare" in report.stdout
    table = (tmp_path / "report" / "report" / "report.md").read_text()
    assert table.count("| ties |") + table.count("| dare |") >= 2
    assert list((tmp_path / "report" / "report").glob("weight_sweep_*.png"))


def test_optuna_study_on_run_py_persists_and_resumes(tmp_path):
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    common = [sys.executable, "run.py", "-m", "hparams_search=merge_optuna", "merge=ties", *FAST, "logger=none",
              f"cache.root={tmp_path / 'cache'}", f"hydra.sweeper.storage={storage}"]

    def sweep(n_trials: int, name: str) -> list:
        proc = subprocess.run([*common, f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweep.dir={tmp_path / name}"],
                              cwd=REPO, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return sorted(p.parent.name for p in (tmp_path / name).glob("*/metrics.json"))

    first = sweep(2, "sweep1")
    assert len(first) == 2
    second = sweep(3, "sweep2")  # a new sweep directory, the same study: only the missing trial runs
    assert len(second) == 1 and second[0] not in first
    assert sweep(3, "sweep3") == []  # a finished study runs nothing

    import optuna

    study = optuna.load_study(study_name="tiny-merge-ties", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3
    for t in done:
        assert 0.0 <= t.params["merge.weight"] <= 1.0 and 0.0 < t.params["merge.density"] <= 1.0
        assert t.value < 0  # eval=quick: minus the mean held-out loss
