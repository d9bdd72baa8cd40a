"""One job: resolve and validate the config, open the tracker, run the strategy, return the objective.
At the end of a multirun, ``SweepVerdictHint`` says where the sweep's own verdict is."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mixmerge.cache import ArtifactStore
from mixmerge.config import validate_config
from mixmerge.strategy import get_strategy
from mixmerge.tracking import open_tracker

log = logging.getLogger(__name__)


def run_job(cfg: DictConfig | dict, *, run_dir: str | Path, group: str | None = None) -> Any:
    """Validate everything before any work, then run ``strategy.name`` and return its objective."""
    # Lightning's start-up tips (e.g. "try litlogger") are noise in a research log; warnings still show.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    validate_config(config)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    strategy = get_strategy(config["strategy"]["name"])
    store = ArtifactStore(config["cache"]["root"], rebuild_broken=config["cache"].get("rebuild_broken", False))
    with open_tracker(config, run_dir, group=group) as tracker:
        return strategy(config, store=store, run_dir=run_dir, tracker=tracker)


def sweep_hint(sweep_dir: str | Path) -> str:
    """What to read after a multirun: each job's check covers its own merge only; the sweep's verdict
    (its best merge against the mixture) and the paper-style table come from ``strategy=report``."""
    import shlex

    sweep_dir = Path(sweep_dir)
    jobs = len(list(sweep_dir.rglob("metrics.json"))) if sweep_dir.is_dir() else 0
    lines = [f"Sweep finished: {jobs} jobs with metrics.json under {sweep_dir}. Each job's 'Measured on this "
             "run's merge' line compares that job's merge only with the mixture.",
             "The sweep's verdict (its best merge against the mixture), the paper-style table and the "
             "weight-sweep plots:",
             f"  python run.py strategy=report strategy.sweep_dir={shlex.quote(str(sweep_dir))}"]
    if (sweep_dir / "report" / "report.md").is_file():
        lines.append(f"(The sweeper's table and plots are already in {sweep_dir / 'report'}.)")
    return "\n".join(lines)


class SweepVerdictHint(Callback):
    """Hydra callback (hydra.callbacks in conf/config.yaml): prints ``sweep_hint`` when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print("\n" + sweep_hint(config.hydra.sweep.dir))
