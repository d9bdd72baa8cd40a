"""Search spaces for hyperparameter sweeps: parameter specs, linear constraints, validation, sampling.

A space is a list of ``ParamSpec`` (float/int ranges or categorical choices) plus linear constraints such
as ``merge.density + merge.epsilon < 1``. Constraints are enforced by construction, not by rejection: the
last parameter of each constraint (in space order) is sampled from a range clipped by the values already
drawn, so no trial ever violates one. ``validate_space`` checks, before any trial runs, that this is always
possible and that every range lies inside its declared valid domain.

Pure: depends only on the standard library; ``suggest_params`` takes any object with Optuna's
``suggest_float``/``suggest_int``/``suggest_categorical`` methods.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Strict inequalities are kept strict by this margin when clipping a range.
STRICT_MARGIN = 1e-6


class SearchSpaceError(ValueError):
    """An invalid search space; the message names the parameter and the fix."""


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter. ``kind`` is "float", "int" or "categorical"."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def is_range(self) -> bool:
        return self.kind in ("float", "int")

    def values_bounds(self) -> tuple[float, float]:
        """Smallest and largest value the parameter can take (numeric parameters only)."""
        if self.is_range:
            return float(self.low), float(self.high)
        nums = [c for c in self.choices if isinstance(c, int | float) and not isinstance(c, bool)]
        if len(nums) != len(self.choices):
            raise SearchSpaceError(f"{self.name}: a constraint needs numeric values, got choices {self.choices}")
        return float(min(nums)), float(max(nums))


@dataclass(frozen=True)
class Constraint:
    """``sum(terms) < bound`` (or ``<=`` when not strict)."""

    terms: tuple[str, ...]
    bound: float
    strict: bool = True
    text: str = ""

    def holds(self, params: Mapping[str, Any]) -> bool:
        total = sum(float(params[t]) for t in self.terms)
        return total < self.bound if self.strict else total <= self.bound + 1e-12


_CONSTRAINT_RE = re.compile(r"^\s*(?P<lhs>[A-Za-z_][\w.@/-]*(?:\s*\+\s*[A-Za-z_][\w.@/-]*)*)\s*"
                            r"(?P<op><=|<)\s*(?P<rhs>[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*$")


def parse_constraint(text: str) -> Constraint:
    """Parse ``"a + b < 1"`` / ``"a + b <= 1"`` (a sum of parameter names bounded above by a number)."""
    m = _CONSTRAINT_RE.match(text)
    if m is None:
        raise SearchSpaceError(
            f"hydra.sweeper.constraints: cannot parse {text!r}; write a sum of parameters bounded above, "
            "e.g. 'merge.density + merge.epsilon < 1'")
    terms = tuple(t.strip() for t in m.group("lhs").split("+"))
    if len(set(terms)) != len(terms):
        raise SearchSpaceError(f"hydra.sweeper.constraints: {text!r} names a parameter twice")
    return Constraint(terms=terms, bound=float(m.group("rhs")), strict=m.group("op") == "<", text=text.strip())


def _check_param(spec: ParamSpec, domain: Sequence[float] | None) -> None:
    if spec.kind == "categorical":
        if not spec.choices:
            raise SearchSpaceError(f"hydra.sweeper.params.{spec.name}: choice() needs at least one value")
    elif spec.kind in ("float", "int"):
        if spec.low is None or spec.high is None or not spec.low < spec.high:
            raise SearchSpaceError(
                f"hydra.sweeper.params.{spec.name}: interval({spec.low}, {spec.high}) is empty; "
                "the lower bound must be below the upper bound")
        if spec.log and spec.low <= 0:
            raise SearchSpaceError(
                f"hydra.sweeper.params.{spec.name}: a log-scaled interval needs a positive lower bound, "
                f"got {spec.low}")
        if spec.step is not None and spec.step <= 0:
            raise SearchSpaceError(f"hydra.sweeper.params.{spec.name}: step must be positive, got {spec.step}")
    else:
        raise SearchSpaceError(f"hydra.sweeper.params.{spec.name}: unknown kind {spec.kind!r}")
    if domain is not None:
        lo_ok, hi_ok = float(domain[0]), float(domain[1])
        lo, hi = spec.values_bounds()
        if lo < lo_ok or hi > hi_ok:
            raise SearchSpaceError(
                f"hydra.sweeper.params.{spec.name}: the searched range [{lo}, {hi}] leaves the valid domain "
                f"[{lo_ok}, {hi_ok}] (hydra.sweeper.domains.{spec.name}); narrow the interval/choices")


def validate_space(specs: Sequence[ParamSpec], constraints: Sequence[Constraint] = (),
                   domains: Mapping[str, Sequence[float]] | None = None, sampler: str = "tpe") -> None:
    """Reject a space that is empty, leaves its valid domains, cannot honour a constraint, or does not
    suit the sampler (CMA-ES needs >= 2 continuous parameters; grid needs discrete ones)."""
    if not specs:
        raise SearchSpaceError(
            "hydra.sweeper.params is empty: nothing to search. Add e.g. 'merge.weight: interval(0.1, 0.9)' "
            "or pick an hparams_search config for a method that has tunable parameters")
    names = [s.name for s in specs]
    domains = dict(domains or {})
    for spec in specs:
        _check_param(spec, domains.get(spec.name))
    position = {n: i for i, n in enumerate(names)}
    for c in constraints:
        missing = [t for t in c.terms if t not in position]
        if missing:
            raise SearchSpaceError(
                f"hydra.sweeper.constraints: {c.text!r} names {missing}, which are not in hydra.sweeper.params "
                f"({names})")
        ordered = sorted(c.terms, key=position.__getitem__)
        last = next(s for s in specs if s.name == ordered[-1])
        others_max = sum(next(s for s in specs if s.name == t).values_bounds()[1] for t in ordered[:-1])
        last_low = last.values_bounds()[0]
        worst = others_max + last_low
        feasible = worst < c.bound if c.strict else worst <= c.bound
        if not feasible and sampler != "grid":  # a grid just drops its infeasible points
            raise SearchSpaceError(
                f"hydra.sweeper.constraints: {c.text!r} cannot always hold: with {' + '.join(ordered[:-1])} at "
                f"its maximum ({others_max}) even the smallest {last.name} ({last_low}) gives {worst}. Lower the "
                f"upper bound of {', '.join(ordered[:-1])} or the lower bound of {last.name}")
        if sampler != "grid" and not last.is_range:
            raise SearchSpaceError(
                f"hydra.sweeper.constraints: {c.text!r} clips {last.name}, the last of its parameters, so "
                f"{last.name} must be an interval(), not choice(); reorder hydra.sweeper.params")
    if sampler == "cmaes":
        n_cont = sum(1 for s in specs if s.is_range)
        if n_cont < 2:
            raise SearchSpaceError(
                f"hydra.sweeper.sampler: CMA-ES needs at least 2 continuous parameters, the space has {n_cont}; "
                "use hydra/sweeper/sampler=tpe")
    if sampler == "grid":
        for s in specs:
            if s.kind == "float" and s.step is None:
                raise SearchSpaceError(
                    f"hydra.sweeper.params.{s.name}: the grid sampler needs discrete values; use "
                    "choice(...) or range(start, stop, step) instead of interval()")


def grid_values(spec: ParamSpec) -> list[Any]:
    """The values of a discrete parameter, for the grid sampler (ranges include the upper bound)."""
    if spec.kind == "categorical":
        return list(spec.choices)
    step = spec.step if spec.step is not None else 1
    n = int(math.floor((spec.high - spec.low) / step + 1e-9)) + 1
    vals = [spec.low + i * step for i in range(n)]
    return [int(v) for v in vals] if spec.kind == "int" else [round(v, 12) for v in vals]


def grid_points(specs: Sequence[ParamSpec], constraints: Sequence[Constraint] = ()) -> list[dict[str, Any]]:
    """Every feasible combination of the grid, in a stable order."""
    names = [s.name for s in specs]
    points = [dict(zip(names, combo, strict=True))
              for combo in itertools.product(*(grid_values(s) for s in specs))]
    return [p for p in points if all(c.holds(p) for c in constraints)]


def suggest_params(trial: Any, specs: Sequence[ParamSpec], constraints: Sequence[Constraint] = ()) -> dict:
    """Draw one configuration from ``trial``, clipping the last parameter of each constraint so it holds."""
    position = {s.name: i for i, s in enumerate(specs)}
    clip_of: dict[str, list[Constraint]] = {}
    for c in constraints:
        last = max(c.terms, key=position.__getitem__)
        clip_of.setdefault(last, []).append(c)
    values: dict[str, Any] = {}
    for spec in specs:
        if spec.kind == "categorical":
            values[spec.name] = trial.suggest_categorical(spec.name, list(spec.choices))
            continue
        high = float(spec.high)
        for c in clip_of.get(spec.name, []):
            room = c.bound - sum(float(values[t]) for t in c.terms if t != spec.name)
            high = min(high, room - STRICT_MARGIN if c.strict else room)
        if spec.kind == "int":
            step = int(spec.step or 1)
            high_i = int(spec.low + math.floor((high - spec.low) / step) * step)
            values[spec.name] = trial.suggest_int(spec.name, int(spec.low), high_i, step=step, log=spec.log)
        else:
            step = spec.step
            if step is not None:
                high = spec.low + math.floor((high - spec.low) / step + 1e-9) * step
            values[spec.name] = trial.suggest_float(spec.name, float(spec.low), high, step=step, log=spec.log)
    return values


def check_points(specs: Sequence[ParamSpec], points: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a point to enqueue that does not give every searched parameter a value inside its range."""
    names = {s.name for s in specs}
    for point in points:
        if set(point) != names:
            raise SearchSpaceError(
                f"hydra.sweeper enqueue point {dict(point)} must name exactly the searched parameters {sorted(names)}; "
                f"missing {sorted(names - set(point))}, unknown {sorted(set(point) - names)}")
        for spec in specs:
            value = point[spec.name]
            if spec.kind == "categorical":
                ok = value in spec.choices
            else:
                ok = isinstance(value, int | float) and not isinstance(value, bool) and spec.low <= value <= spec.high
            if not ok:
                raise SearchSpaceError(f"hydra.sweeper enqueue point: {spec.name}={value!r} is outside its searched "
                                       f"range; widen hydra.sweeper.params.{spec.name} or change the point")
