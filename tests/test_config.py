"""Every config group option composes and validates; bad values fail before any work, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mixmerge.config import ConfigError, validate_config
from tests.conftest import REPO

CONF = REPO / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra",))


def _options(group: str) -> list[str]:
    """The selectable options (``_name.yaml`` files are partials that options extend, e.g. merge/_base)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.name.startswith("_"))


def _compose(overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


ALL_OPTIONS = [(g, o) for g in GROUPS for o in _options(g)]


def test_every_group_has_options():
    for group in ("model", "task", "finetune", "merge", "eval", "logger", "trainer", "strategy"):
        assert _options(group), group


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_every_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}"]
    if group == "strategy" and option == "score":
        overrides.append("eval.samples=/dev/null")
    if group == "strategy" and option == "report":
        overrides.append("strategy.sweep_dir=/tmp")
    if group == "strategy" and option == "merge":
        overrides += ["merge.base=/b", "merge.models=[/x,/y]", "merge.output=/o"]
    cfg = _compose(overrides)
    for line in (CONF / group / f"{option}.yaml").read_text().splitlines()[:1]:
        assert line.startswith("#"), f"{group}/{option}.yaml must start with a one-line comment"
    if group not in ("hparams_search", "experiment", "debug"):
        validate_config(cfg)


def test_default_config_is_the_study():
    cfg = _compose([])
    assert cfg["model"]["name"] == "smollm2-135m" and cfg["strategy"]["name"] == "compare"
    assert set(cfg["task"]["tasks"]) == {"codegen", "codesum"}
    assert cfg["merge"]["method"] == "ties"
    assert cfg["cache"]["root"].endswith("outputs/cache")


@pytest.mark.parametrize(("override", "field"), [
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("finetune.lr=-1", "finetune.lr"),
    ("finetune=lora", None),
    ("finetune.method=adam", "finetune.method"),
    ("model.dtype=float8", "model.dtype"),
    ("merge.density=1.5", "density"),
    ("+task.mixture.weights.docs=1", "task.mixture.weights"),
    ("eval.cache=sometimes", "eval.cache"),
])
def test_bad_values_name_the_field(override, field):
    cfg = _compose([override])
    if field is None:
        validate_config(cfg)
        return
    with pytest.raises((ConfigError, ValueError), match=field.replace(".", r"\.")):
        validate_config(cfg)


def test_bad_value_from_the_command_line_fails_before_any_work(tmp_path: Path):
    import subprocess
    import sys

    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "run.py", "model=tiny", "trainer.max_steps=0", f"cache.root={cache}",
                           f"hydra.run.dir={tmp_path / 'run'}", "logger=none"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "trainer.max_steps=0 must be >= 1" in proc.stderr
    assert not cache.exists()  # nothing was built
