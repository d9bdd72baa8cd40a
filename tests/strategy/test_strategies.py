"""conf/strategy/<name>.yaml ↔ strategy/<name>.py: every strategy config has its module, every module a config."""

from __future__ import annotations

import importlib

import pytest
import yaml

from mixmerge.strategy import STRATEGIES, get_strategy
from tests.conftest import REPO

CONFS = sorted((REPO / "conf" / "strategy").glob("*.yaml"))
MODULES = sorted(p.stem for p in (REPO / "src" / "mixmerge" / "strategy").glob("*.py") if p.stem != "__init__")
PRESETS = {"specialist": "compare", "mixture": "compare"}  # compare with a shorter strategy.variants


@pytest.mark.parametrize("conf", CONFS, ids=[p.stem for p in CONFS])
def test_each_strategy_config_runs_the_module_of_its_name(conf):
    data = yaml.safe_load(conf.read_text())
    name = data.get("strategy", data)["name"]  # `# @package _global_` configs nest it
    assert name == conf.stem
    module = PRESETS.get(name, name)
    assert STRATEGIES[name] == f"mixmerge.strategy.{module}"
    assert get_strategy(name) is importlib.import_module(f"mixmerge.strategy.{module}").run


def test_every_strategy_module_has_a_config_and_the_registry_nothing_else():
    assert sorted({PRESETS.get(p.stem, p.stem) for p in CONFS}) == MODULES
    assert sorted(STRATEGIES) == sorted(p.stem for p in CONFS)


def test_an_unknown_strategy_names_the_choices():
    with pytest.raises(ValueError, match=r"strategy.name='mix_and_match' is not one of \['analyze', 'compare'"):
        get_strategy("mix_and_match")
