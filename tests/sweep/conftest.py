"""Fixtures for the sweep tests: run the toy Hydra app as a real multirun in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

TOY_APP = Path(__file__).parent / "toy_app" / "app.py"
REPO = Path(__file__).resolve().parents[2]


class Toy:
    """Runs ``app.py -m ...`` with its own study database, sweep dirs and job log under ``tmp``."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.db = f"sqlite:///{tmp / 'studies.db'}"
        self.log = tmp / "jobs.jsonl"

    def start(self, *overrides: str, sweep: str = "sweep", report: bool = False,
              storage: bool = True) -> subprocess.Popen:
        # The end-of-sweep report (plots, ~2 s) only where a test looks at it.
        args = [sys.executable, str(TOY_APP), "-m", *([f"hydra.sweeper.storage={self.db}"] if storage else []),
                f"hydra.sweeper.report={str(report).lower()}",
                f"hydra.sweep.dir={self.tmp / sweep}", f"toy.log_path={self.log}", *overrides]
        env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO / "src")}
        return subprocess.Popen(args, cwd=self.tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    def run(self, *overrides: str, sweep: str = "sweep", check: bool = True,
            report: bool = False, storage: bool = True) -> subprocess.CompletedProcess:
        proc = self.start(*overrides, sweep=sweep, report=report, storage=storage)
        out, _ = proc.communicate(timeout=180)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
        if check and proc.returncode != 0:
            raise AssertionError(f"toy sweep failed ({proc.returncode}):\n{out[-4000:]}")
        return result

    def jobs(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def study(self, name: str) -> optuna.Study:
        return optuna.load_study(study_name=name, storage=self.db)


@pytest.fixture
def toy(tmp_path) -> Toy:
    return Toy(tmp_path)
