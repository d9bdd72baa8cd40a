"""Strategies: what a run does (conf/strategy/<name>.yaml). Each is one function of the resolved config."""

from __future__ import annotations

from collections.abc import Callable

STRATEGIES: dict[str, str] = {
    # name -> "module:function"; imported lazily so that `--help` stays fast
    "compare": "mixmerge.pipeline:run_compare",
    "specialist": "mixmerge.pipeline:run_compare",
    "mixture": "mixmerge.pipeline:run_compare",
    "merge": "mixmerge.strategy.merge_only:run",
    "score": "mixmerge.strategy.score:run",
    "analyze": "mixmerge.strategy.analyze:run",
    "rounds": "mixmerge.strategy.rounds:run",
    "report": "mixmerge.strategy.report:run",
    "prepare": "mixmerge.strategy.prepare:run",
    "plan": "mixmerge.strategy.plan:run",
}


def get_strategy(name: str) -> Callable:
    import importlib

    if name not in STRATEGIES:
        raise ValueError(f"strategy.name={name!r} is not one of {sorted(STRATEGIES)}")
    module, func = STRATEGIES[name].split(":")
    return getattr(importlib.import_module(module), func)
