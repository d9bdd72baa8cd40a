"""W&B sweep files: same parameters and ranges as the Optuna spaces; their command composes with Hydra."""

from pathlib import Path

import pytest
import yaml

from mixmerge.sweep.wandb_sweeps import agent_command, check_against_space, load_sweep, sample_values

REPO = Path(__file__).resolve().parents[2]
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
TOY_APP = Path(__file__).parent / "toy_app" / "app.py"


def _optuna_space(method: str) -> tuple[dict, list]:
    node = yaml.safe_load((REPO / "conf" / "hparams_search" / "space" / f"{method}.yaml").read_text())[method]
    ranges = {}
    for k, v in node["params"].items():
        lo, hi = v[v.index("(") + 1:v.index(")")].split(",")
        ranges[k] = (float(lo), float(hi))
    return ranges, node.get("constraints", [])


def test_there_are_grid_and_bayes_sweeps():
    assert {load_sweep(p)["method"] for p in SWEEPS} == {"grid", "bayes"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_matches_the_optuna_space(path):
    sweep = load_sweep(path)
    assert path.read_text().startswith("# W&B ")
    params = sweep["parameters"]
    methods = [params["merge"]["value"]] if "value" in params["merge"] else params["merge"]["values"]
    for method in methods:
        ranges, constraints = _optuna_space(method)
        assert check_against_space(sweep, ranges, constraints) == []


def test_check_against_space_finds_problems():
    sweep = {"method": "bayes", "parameters": {"merge": {"value": "della"},
                                               "merge.density": {"min": 0.2, "max": 0.9},
                                               "merge.epsilon": {"min": 0.0, "max": 0.2},
                                               "merge.lr": {"min": 0.0, "max": 1.0}}}
    problems = check_against_space(sweep, {"merge.density": (0.2, 0.9), "merge.epsilon": (0.0, 0.1)},
                                   ["merge.density + merge.epsilon < 1"])
    assert problems[0].startswith("merge.epsilon: [0.2] outside [0.0, 0.1]")
    assert problems[1].startswith("merge.lr: not in the Optuna space")
    assert problems[2].startswith("constraint 'merge.density + merge.epsilon < 1' broken")


def test_agent_command_is_what_wandb_runs():
    sweep = load_sweep(REPO / "sweeps" / "della_bayes.yaml")
    argv = agent_command(sweep, {"merge.weight": 0.3, "merge.density": 0.5, "merge.epsilon": 0.1,
                                 "merge.lambda": 1.0})
    assert argv == ["/usr/bin/env", "python", "run.py", "merge=della", "merge.weight=0.3", "merge.density=0.5",
                    "merge.epsilon=0.1", "merge.lambda=1.0"]


def test_commands_compose_with_hydra():
    """Dry run: every corner of every sweep, as W&B's agent would call it, composes with Hydra."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(TOY_APP.parent / "conf"), version_base="1.3"):
        for path in SWEEPS:
            sweep = load_sweep(path)
            for values in sample_values(sweep):
                argv = agent_command(sweep, values)
                assert argv[:3] == ["/usr/bin/env", "python", "run.py"]
                merge = compose("config", overrides=argv[3:]).merge
                for key, value in values.items():
                    got = merge.method if key == "merge" else merge[key.split(".", 1)[1]]
                    assert got == value, (path.name, key)
