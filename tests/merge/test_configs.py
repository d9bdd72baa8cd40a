"""Every conf/merge YAML: a one-line header comment, a valid method config, the dare alias."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mixmerge.merge import get_method, validate_merge_config

CONF = Path(__file__).resolve().parents[2] / "conf" / "merge"
FILES = sorted(CONF.glob("*.yaml"))
IO_KEYS = ("base", "models", "output", "from_mergekit")


def test_one_file_per_method():
    from mixmerge.merge import ALIASES, METHODS

    assert {p.stem for p in FILES} == (set(METHODS) | set(ALIASES)) - {"breadcrumbs_ties"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_yaml_is_valid(path):
    text = path.read_text()
    assert text.startswith("# ") and "\n" in text
    cfg = yaml.safe_load(text)
    for key in ("method", "weight", "weights", "seed", "dtype", *IO_KEYS):
        assert key in cfg, f"{path.name} lacks {key}"
    assert get_method(cfg["method"]).name == (path.stem if path.stem != "dare" else "dare_ties")
    n = 2
    validate_merge_config({k: v for k, v in cfg.items() if k not in IO_KEYS}, n)


def test_dare_is_documented_alias():
    text = (CONF / "dare.yaml").read_text()
    assert "alias of dare_ties" in text.splitlines()[0]


def test_hydra_composes_merge_group():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF.parent), version_base="1.3"):
        for name in ("ties", "dare", "della"):
            cfg = compose(overrides=[f"+merge={name}", "merge.density=0.3"])
            validate_merge_config({k: v for k, v in cfg.merge.items() if k not in IO_KEYS}, 2)
            assert cfg.merge.density == 0.3
