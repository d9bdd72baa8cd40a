"""One job: resolve and validate the config, open the tracker, run the strategy, return the objective."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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
