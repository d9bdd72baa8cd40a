"""W&B sweep definitions under ``sweeps/``: load, check against our search spaces, expand the command.

W&B's agent runs ``command`` with ``${args_no_hyphens}`` replaced by ``key=value`` pairs, which are Hydra
overrides, so a W&B sweep drives ``run.py`` directly. A controller needs a W&B server, so here we can only
check the files: that their parameters exist in the matching Optuna space and stay inside its ranges and
constraints, and that the expanded command is one Hydra accepts (tests compose it with ``--cfg job``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mixmerge.sweep import space as sp

# What W&B's agent puts in place of the command macros (wandb/wandb_agent.py), except the args.
AGENT_MACROS = {"env": ["/usr/bin/env"], "interpreter": ["python"]}


def load_sweep(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    for key in ("program", "method", "parameters", "command"):
        if key not in data:
            raise ValueError(f"{path}: a W&B sweep needs '{key}'")
    if data["method"] not in ("grid", "random", "bayes"):
        raise ValueError(f"{path}: method={data['method']!r} is not one of grid, random, bayes")
    return data


def agent_command(sweep: Mapping[str, Any], values: Mapping[str, Any]) -> list[str]:
    """The argv W&B's agent would run for one set of parameter ``values``, built with wandb's own helper
    for the argument formats."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    fixed = {k: v["value"] for k, v in sweep["parameters"].items() if "value" in v}
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in {**fixed, **values}.items()}})
    macros = {**AGENT_MACROS, "program": [str(sweep["program"])], **args}
    argv: list[str] = []
    for chunk in sweep["command"]:
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += [str(x) for x in macros.get(chunk[2:-1]) or []]
        else:
            argv.append(chunk)
    return argv


def sample_values(sweep: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Corner points of the sweep: every grid combination, or each range's min and max (others at min)."""
    params = {k: v for k, v in sweep["parameters"].items() if "value" not in v}
    if sweep["method"] == "grid":
        specs = [sp.ParamSpec(k, "categorical", choices=tuple(v["values"])) for k, v in params.items()]
        return sp.grid_points(specs)
    low = {k: (v["min"] if "min" in v else v["values"][0]) for k, v in params.items()}
    points = [dict(low)]
    for k, v in params.items():
        points.append({**low, k: v["max"] if "max" in v else v["values"][-1]})
    return points


def check_against_space(sweep: Mapping[str, Any], space: Mapping[str, Any],
                        constraints: Sequence[str] = ()) -> list[str]:
    """Problems with a W&B sweep relative to an Optuna space ``{param: (low, high)}``: unknown parameters,
    values outside the range, and grid points or range corners that break a constraint."""
    problems = []
    parsed = [sp.parse_constraint(c) for c in constraints]
    for name, body in sweep["parameters"].items():
        if "value" in body or "." not in name:  # fixed values and config-group choices (merge=ties)
            continue
        if name not in space:
            problems.append(f"{name}: not in the Optuna space ({sorted(space)})")
            continue
        lo, hi = space[name]
        vals = body.get("values") or [body.get("min"), body.get("max")]
        bad = [v for v in vals if v is None or not lo <= float(v) <= hi]
        if bad:
            problems.append(f"{name}: {bad} outside [{lo}, {hi}]")
    searched = [k for k, v in sweep["parameters"].items() if "value" not in v]
    for c in parsed:
        if not set(c.terms) <= set(searched):
            continue
        if sweep["method"] == "grid":
            broken = [p for p in sample_values(sweep) if not c.holds(p)]
        else:  # a continuous sweep may draw all maxima at once
            worst = {t: sweep["parameters"][t].get("max", max(sweep["parameters"][t].get("values", [0])))
                     for t in c.terms}
            broken = [] if c.holds(worst) else [worst]
        if broken:
            problems.append(f"constraint {c.text!r} broken by {broken[:3]}")
    return problems
