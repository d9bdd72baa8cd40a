"""Search spaces: constraint parsing, validation messages, constrained sampling, grids, the shipped spaces."""

from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from hydra_plugins.mixmerge_optuna_sweeper._impl import parse_params
from mixmerge.sweep import space as sp

SPACES = Path(__file__).resolve().parents[2] / "conf" / "hparams_search" / "space"
DELLA = [sp.ParamSpec("merge.weight", "float", 0.05, 0.95), sp.ParamSpec("merge.density", "float", 0.2, 0.9),
         sp.ParamSpec("merge.epsilon", "float", 0.0, 0.2)]
DENS_EPS = sp.parse_constraint("merge.density + merge.epsilon < 1")


def test_parse_constraint():
    c = sp.parse_constraint(" merge.density+merge.gamma <= 1.0 ")
    assert c.terms == ("merge.density", "merge.gamma") and c.bound == 1.0 and not c.strict
    assert DENS_EPS.strict and DENS_EPS.holds({"merge.density": 0.7, "merge.epsilon": 0.29})
    assert not DENS_EPS.holds({"merge.density": 0.7, "merge.epsilon": 0.3})
    with pytest.raises(sp.SearchSpaceError, match="cannot parse"):
        sp.parse_constraint("merge.density * 2 < 1")


def test_constrained_sampling_never_breaks_the_constraint():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sp.validate_space(DELLA, [DENS_EPS], {"merge.density": [0, 1], "merge.epsilon": [0, 1]})
    draws = []
    for _ in range(300):
        trial = study.ask()
        draws.append(sp.suggest_params(trial, DELLA, [DENS_EPS]))
        study.tell(trial, 0.0)
    assert all(d["merge.density"] + d["merge.epsilon"] < 1 for d in draws)
    assert all(0.0 <= d["merge.epsilon"] <= 0.2 and 0.2 <= d["merge.density"] <= 0.9 for d in draws)
    # Clipping only bites near density 0.9; elsewhere epsilon still spans its range.
    assert max(d["merge.epsilon"] for d in draws) > 0.18
    assert max(d["merge.density"] + d["merge.epsilon"] for d in draws) > 0.98


@pytest.mark.parametrize(("specs", "constraints", "domains", "sampler", "message"), [
    ([], [], {}, "tpe", "nothing to search"),
    ([sp.ParamSpec("merge.weight", "float", 0.9, 0.1)], [], {}, "tpe", "interval\\(0.9, 0.1\\) is empty"),
    ([sp.ParamSpec("merge.weight", "float", 0.1, 1.5)], [], {"merge.weight": [0, 1]}, "tpe",
     "leaves the valid domain"),
    ([sp.ParamSpec("merge.density", "float", 0.2, 1.0), sp.ParamSpec("merge.epsilon", "float", 0.0, 0.2)],
     [DENS_EPS], {}, "tpe", "cannot always hold: with merge.density at its maximum \\(1.0\\)"),
    (DELLA[:1], [], {}, "cmaes", "CMA-ES needs at least 2 continuous parameters"),
    (DELLA, [], {}, "grid", "grid sampler needs discrete values"),
    (DELLA[:2], [DENS_EPS], {}, "tpe", "names \\['merge.epsilon'\\]"),
    ([sp.ParamSpec("merge.lr", "float", 0.0, 1.0, log=True)], [], {}, "tpe", "positive lower bound"),
    ([sp.ParamSpec("merge.density", "float", 0.2, 0.5), sp.ParamSpec("merge.epsilon", "categorical",
                                                                     choices=(0.0, 0.1))],
     [DENS_EPS], {}, "tpe", "must be an interval"),
])
def test_invalid_spaces_are_rejected_with_the_field_and_the_fix(specs, constraints, domains, sampler, message):
    with pytest.raises(sp.SearchSpaceError, match=message):
        sp.validate_space(specs, constraints, domains, sampler)


def test_grid_points_drop_infeasible_combinations():
    specs = [sp.ParamSpec("merge.density", "categorical", choices=(0.5, 0.8, 0.9)),
             sp.ParamSpec("merge.epsilon", "float", 0.0, 0.2, step=0.1)]
    assert sp.grid_values(specs[1]) == [0.0, 0.1, 0.2]
    points = sp.grid_points(specs, [DENS_EPS])
    assert len(points) == 3 + 2 + 1  # 0.5 with all three epsilons, 0.8 with 0.0/0.1, 0.9 with 0.0
    assert {"merge.density": 0.9, "merge.epsilon": 0.1} not in points
    sp.validate_space(specs, [DENS_EPS], sampler="grid")  # a grid tolerates infeasible points


def test_hydra_optuna_sweeper_syntax_is_understood():
    specs, fixed = parse_params(["merge.weight=interval(0.1, 0.9)", "merge.k=range(1, 7, 2)",
                                 "merge.lr=tag(log, interval(1e-5, 1e-2))", "merge.method=choice(ties, dare)",
                                 "merge.lambda=1.0", "merge.weight=interval(0.2, 0.8)"])
    by = {s.name: s for s in specs}
    assert by["merge.weight"] == sp.ParamSpec("merge.weight", "float", 0.2, 0.8)  # the last mention wins
    assert (by["merge.k"].kind, by["merge.k"].low, by["merge.k"].high, by["merge.k"].step) == ("int", 1, 5, 2)
    assert by["merge.lr"].log and by["merge.lr"].low == pytest.approx(1e-5)
    assert by["merge.method"].choices == ("ties", "dare")
    assert fixed == ["merge.lambda=1.0"]


def _load_space(method: str):
    node = OmegaConf.to_container(OmegaConf.load(SPACES / f"{method}.yaml"))[method]
    specs, _ = parse_params([f"{k}={v}" for k, v in (node.get("params") or {}).items()])
    return specs, [sp.parse_constraint(c) for c in node.get("constraints", [])], node.get("domains", {})


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare", "della", "breadcrumbs",
                                    "slerp", "fisher"])
def test_shipped_spaces_are_valid(method):
    specs, constraints, domains = _load_space(method)
    sp.validate_space(specs, constraints, domains, "tpe")
    assert specs[0].name == "merge.weight"
    first_line = (SPACES / f"{method}.yaml").read_text().splitlines()[0]
    assert first_line.startswith("# Search space of")


def test_model_stock_has_nothing_to_search():
    specs, constraints, domains = _load_space("model_stock")
    with pytest.raises(sp.SearchSpaceError, match="nothing to search"):
        sp.validate_space(specs, constraints, domains)


@pytest.mark.parametrize("sampler", [
    optuna.samplers.TPESampler(n_startup_trials=4, multivariate=True, constant_liar=True, seed=0),
    optuna.samplers.CmaEsSampler(n_startup_trials=2, seed=0),
], ids=["tpe", "cmaes"])
def test_model_based_samplers_accept_the_clipped_range(sampler):
    """Past their random start-up trials, TPE and CMA-ES run with the clipped (dynamic) epsilon range and
    keep the constraint; Optuna samples the clipped parameter independently (for CMA-ES: at random)."""
    study = optuna.create_study(sampler=sampler, direction="maximize")
    for _ in range(30):
        trial = study.ask()
        p = sp.suggest_params(trial, DELLA, [DENS_EPS])
        assert p["merge.density"] + p["merge.epsilon"] < 1
        study.tell(trial, -(p["merge.weight"] - 0.3) ** 2 - (p["merge.density"] - 0.6) ** 2 - p["merge.epsilon"])
    assert study.best_value > -0.05  # the optimum is 0 at (0.3, 0.6, 0.0)
