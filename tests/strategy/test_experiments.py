"""The paper's experiments as configs: each composes, and a multirun expands to the study's grid."""

from __future__ import annotations

import itertools
from pathlib import Path

import hydra
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"


def _compose(experiment):
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra.compose("config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    return OmegaConf.to_container(cfg, resolve=False)


def _grid(params):
    """The jobs Hydra's basic sweeper launches for ``hydra.sweeper.params``."""
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    axes = [[f"{o.key_or_group}={v}" for v in o.sweep_string_iterator()] for o in parsed]
    return list(itertools.product(*axes))


@pytest.mark.parametrize(("experiment", "models", "model_cfg"), [
    ("paper_qwen", ["qwen2.5-coder-1.5b", "qwen2.5-coder-7b"], "Qwen/Qwen2.5-Coder-1.5B"),
    ("paper_deepseek", ["deepseek-coder-1.3b", "deepseek-coder-6.7b"], "deepseek-ai/deepseek-coder-1.3b-base"),
])
def test_paper_experiments_sweep_four_methods_at_five_ratios_on_two_sizes(experiment, models, model_cfg):
    cfg = _compose(experiment)
    assert (CONF / "experiment" / f"{experiment}.yaml").read_text().startswith("# @package _global_")
    assert cfg["model"]["hub_id"] == model_cfg and cfg["task"]["name"] == "hub"
    assert cfg["trainer"]["accelerator"] == "gpu" and cfg["strategy"]["variants"] == [
        "base", "specialists", "mixture", "merged"]
    assert cfg["eval"]["humaneval"]["limit"] is None and cfg["eval"]["mbpp"]["enabled"]
    grid = _grid(cfg["hydra"]["sweeper"]["params"])
    assert len(grid) == 2 * 4 * 5
    assert {j[0] for j in grid} == {f"model={m}" for m in models}
    assert {j[1] for j in grid} == {"merge=linear", "merge=ties", "merge=dare", "merge=della"}
    assert {j[2] for j in grid} == {f"merge.weight={w}" for w in (0.1, 0.3, 0.5, 0.7, 0.9)}


def test_demo_is_the_same_design_on_the_embedded_model():
    cfg = _compose("demo")
    assert cfg["model"]["name"] == "smollm2-135m" and cfg["task"]["name"] == "mixture"
    assert cfg["trainer"]["accelerator"] == "cpu" and not cfg["eval"]["humaneval"]["enabled"]
    grid = _grid(cfg["hydra"]["sweeper"]["params"])
    assert len(grid) == 9 and ("merge=della", "merge.weight=0.7") in grid
