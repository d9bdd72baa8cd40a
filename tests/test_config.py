"""Every config group option composes and validates; bad values fail before any work, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mixmerge.config import ConfigError, validate_config, validate_known_keys
from tests.conftest import REPO

CONF = REPO / "conf"
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra",))


def _options(group: str) -> list[str]:
    """The options a user can pick; ``_*.yaml`` files are bases other options extend (conf/merge/_base.yaml)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


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
    validate_known_keys(cfg)  # presets (experiment, hparams_search) add only keys some config defines
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


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_steps=0", "trainer.max_steps=0 must be >= 1"),
    ("+merge.desnity=0.3", "unknown config key merge.desnity: did you mean merge.density?"),
])
def test_bad_value_from_the_command_line_fails_before_any_work(tmp_path: Path, override, message):
    import subprocess
    import sys

    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "run.py", "model=tiny", override, f"cache.root={cache}",
                           f"hydra.run.dir={tmp_path / 'run'}", "logger=none"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert not cache.exists()  # nothing was built


@pytest.mark.parametrize(("overrides", "message"), [
    (["+merge.desnity=0.3"], r"unknown config key merge\.desnity: did you mean merge\.density\?"),
    (["merge=linear", "+merge.densty=0.3"], r"merge\.densty: did you mean merge\.density\?"),
    (["+eval.humaneval.limt=3"], r"eval\.humaneval\.limt: did you mean eval\.humaneval\.limit\?"),
    (["+trainer.max_step=3"], r"trainer\.max_step: did you mean trainer\.max_steps\?"),
    (["+finetune.lora.rank=8"], r"finetune\.lora\.rank: finetune\.lora defines \['alpha', 'dropout', 'r', "),
    (["+sed=1"], r"unknown config key sed: did you mean seed\?.*conf/config\.yaml"),
    (["+strategy.merge_in_memmory=true"], r"strategy\.merge_in_memmory: did you mean strategy\.merge_in_memory"),
    (["+cache.rebuild=true"], r"cache\.rebuild: did you mean cache\.rebuild_broken\?"),
])
def test_unknown_keys_are_refused_naming_the_close_match(overrides, message):
    cfg = _compose(overrides)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


@pytest.mark.parametrize("overrides", [
    ["+task.tasks.docs={source: stdlib}"],                         # task names are the user's to choose
    ["+analysis.paths={codegen: /a, codesum: /b}"],                 # defined by strategy/analyze.yaml
    ["merge=linear", "+merge.density=0.5"],                         # defined by another merge method
    ["model=tiny", "+model.path=/some/folder", "+merge.check_finite=false"],  # read by code, no YAML default
    ["experiment=demo"], ["hparams_search=merge_optuna_two_stage", "experiment=paper_qwen"],
])
def test_keys_that_some_config_defines_are_accepted(overrides):
    validate_known_keys(_compose(overrides))


def test_metric_names_below_aggregate_terms_are_free():
    cfg = _compose([])
    cfg["eval"]["aggregate"]["terms"]["codegen/mbpp_pass@1"] = 1.0  # a metric name is the user's to choose
    validate_known_keys(cfg)
    cfg["eval"]["aggregate"]["methd"] = "min"
    with pytest.raises(ConfigError, match=r"eval\.aggregate\.methd: did you mean eval\.aggregate\.method\?"):
        validate_known_keys(cfg)


def test_bad_rebuild_broken_value_names_the_field():
    with pytest.raises(ConfigError, match=r"cache\.rebuild_broken='sometimes' must be true"):
        validate_config(_compose(["cache.rebuild_broken=sometimes"]))


@pytest.mark.parametrize(("overrides", "message"), [
    (["replicates=0"], r"replicates=0 must be at least 1"),
    (["replicates=[1,1]"], r"replicates=\[1, 1\].*distinct integers"),
    (["replicates=two"], r"replicates='two' is not a count or a list of seeds"),
    (["eval.bootstrap.resamples=200"], r"eval\.bootstrap\.resamples=200 must be an integer of at least 1000"),
    (["trainer.precision=bf32"], r"trainer\.precision='bf32' is not one of .*trainer\.precision=auto"),
])
def test_bad_replicates_resamples_and_precision_name_the_field_and_the_fix(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(_compose(overrides))


@pytest.mark.parametrize("overrides", [["replicates=3"], ["replicates=[0,7,42]"], ["eval.bootstrap.resamples=1000"]])
def test_good_replicates_and_resamples_are_accepted(overrides):
    validate_config(_compose(overrides))
