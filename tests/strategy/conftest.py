"""Fixtures for the strategy tests: Hydra-composed run configs on the tiny model, one shared artifact store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")

CONF = Path(__file__).resolve().parents[2] / "conf"
# Small enough that a specialist trains in seconds on 2 cores; shared so specialists are cache hits across tests.
TINY_RUN = ["model=tiny", "eval=quick", "logger=none", "trainer.max_steps=2", "trainer.enable_progress_bar=false",
            "task.max_train_examples=16", "task.max_eval_examples=8", "eval.loss.limit=8"]


@pytest.fixture(scope="session")
def compose_cfg(session_store):
    """``compose_cfg(*overrides)`` -> the resolved run config as a dict, caching into the session's store."""
    import hydra
    from omegaconf import OmegaConf

    def compose(*overrides: str) -> dict:
        with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = hydra.compose("config", overrides=[*TINY_RUN, f"cache.root={session_store.root}", *overrides])
        return OmegaConf.to_container(cfg, resolve=True)

    return compose


@pytest.fixture
def run_strategy(session_store, tmp_path):
    """``run_strategy(fn, cfg) -> (objective, run_dir)`` with a disabled tracker, as run.py would call it."""
    from mixmerge.tracking import open_tracker

    def go(fn, cfg, name="run"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        with open_tracker(cfg, run_dir) as tracker:
            return fn(cfg, store=session_store, run_dir=run_dir, tracker=tracker), run_dir

    return go
