"""The sweeper class Hydra discovers: a thin shell that imports the implementation (and Optuna, about
0.2 s) only when a sweep is set up, not on every ``python run.py``. See ``_impl.py`` for the loop."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class MixmergeOptunaSweeper(Sweeper):
    def __init__(self, **kwargs: Any) -> None:
        from ._impl import OptunaSweeperImpl

        self.impl = OptunaSweeperImpl(**kwargs)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.impl.sweep(arguments)
