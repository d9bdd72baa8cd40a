"""Which number of a variant's metrics a sweeper optimises: its value, or the pessimistic end of its interval.

``objective.statistic=mean`` returns the metric as reported (with replicates: the mean over seeds).
``lcb`` returns the end of its 95 % interval that is worse for the objective's direction: the lower bound
when maximising, the upper bound when minimising. A merge that only looks good by luck on a small
evaluation then stops winning the search. Pure: mappings in, floats out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

STATISTICS = ("mean", "lcb")
DIRECTIONS = ("maximize", "minimize")


def validate_objective(objective: Mapping[str, Any]) -> None:
    """Raise ValueError naming ``objective.statistic`` / ``objective.direction`` when either is not known."""
    statistic = objective.get("statistic", "mean")
    if statistic not in STATISTICS:
        raise ValueError(f"objective.statistic={statistic!r} must be one of {list(STATISTICS)}: mean (the metric "
                         "itself) or lcb (the worse end of its 95 % interval)")
    metric = objective.get("metric")
    n = len(metric) if isinstance(metric, list | tuple) else 1
    for direction in _directions(objective.get("direction", "maximize"), n):
        if direction not in DIRECTIONS:
            raise ValueError(f"objective.direction={direction!r} must be 'maximize' or 'minimize'")


def _directions(direction: Any, n: int) -> list[str]:
    """One direction per objective metric; a single direction applies to all of them."""
    directions = [direction] if isinstance(direction, str) else [str(d) for d in direction]
    if len(directions) == 1:
        return directions * n
    if len(directions) != n and n != 1:
        raise ValueError(f"objective.direction={directions} has {len(directions)} entries for {n} objective "
                         "metric(s); give one direction, or one per entry of objective.metric")
    return directions


def metric_statistic(variant: Mapping[str, Any], metric: str, *, statistic: str = "mean",
                     direction: str = "maximize", where: str = "") -> float:
    """``metric`` of one variant's ``metrics.json`` entry under ``statistic`` (NaN when the metric is missing,
    which the sweeper counts as a failed trial). ``lcb`` without a finite ci95 for the metric is an error."""
    if statistic not in STATISTICS or direction not in DIRECTIONS:
        validate_objective({"statistic": statistic, "direction": direction})
    value = float((variant.get("metrics") or {}).get(metric, math.nan))
    if statistic == "mean" or math.isnan(value):
        return value
    interval = (variant.get("ci95") or {}).get(metric)
    if not (isinstance(interval, Sequence) and len(interval) == 2
            and all(isinstance(b, int | float) and math.isfinite(b) for b in interval)):
        raise ValueError(
            f"objective.statistic=lcb needs the 95 % interval of {where + '/' if where else ''}{metric}, but its ci95 "
            f"is {interval!r} (an evaluation that reports no interval for it, e.g. a metric without per-example "
            "data); set objective.statistic=mean, or objective.metric to a metric that has an interval")
    lo, hi = float(interval[0]), float(interval[1])
    return lo if direction == "maximize" else hi


def objective_values(objective: Mapping[str, Any], variant: Mapping[str, Any]) -> list[float]:
    """One value per entry of ``objective.metric`` (a string or a list) for ``objective.variant``'s entry."""
    validate_objective(objective)
    metrics = objective["metric"] if isinstance(objective["metric"], list | tuple) else [objective["metric"]]
    directions = _directions(objective.get("direction", "maximize"), len(metrics))
    statistic = objective.get("statistic", "mean")
    return [metric_statistic(variant, m, statistic=statistic, direction=d, where=objective.get("variant", ""))
            for m, d in zip(metrics, directions, strict=True)]
