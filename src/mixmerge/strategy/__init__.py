"""Strategies: what a run does. ``conf/strategy/<name>.yaml`` ↔ ``strategy/<name>.py``, each with one ``run``.

A strategy tells one story with the stages of ``mixmerge.stages`` (ensure base, specialists, mixture,
merge, evaluation). ``specialist`` and ``mixture`` are presets of ``compare`` (a shorter
``strategy.variants`` list), so they share its module.
"""

from __future__ import annotations

from collections.abc import Callable

STRATEGIES: dict[str, str] = {
    # strategy.name -> module whose ``run`` it calls; imported lazily so that `--help` stays fast
    "compare": "mixmerge.strategy.compare",
    "specialist": "mixmerge.strategy.compare",
    "mixture": "mixmerge.strategy.compare",
    "merge": "mixmerge.strategy.merge",
    "score": "mixmerge.strategy.score",
    "analyze": "mixmerge.strategy.analyze",
    "rounds": "mixmerge.strategy.rounds",
    "report": "mixmerge.strategy.report",
    "prepare": "mixmerge.strategy.prepare",
    "plan": "mixmerge.strategy.plan",
    "methods": "mixmerge.strategy.methods",
}


def get_strategy(name: str) -> Callable:
    """The ``run`` function of strategy ``name``."""
    import importlib

    if name not in STRATEGIES:
        raise ValueError(f"strategy.name={name!r} is not one of {sorted(STRATEGIES)}")
    return importlib.import_module(STRATEGIES[name]).run
