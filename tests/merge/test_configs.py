"""Every conf/merge YAML: a one-line header comment, the shared keys from _base.yaml, a valid method config,
the dare alias; the Optuna spaces cover exactly the methods of conf/merge that have one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mixmerge.merge import IO_KEYS, get_method, validate_merge_config

CONF = Path(__file__).resolve().parents[2] / "conf" / "merge"
BASE = CONF / "_base.yaml"
FILES = sorted(p for p in CONF.glob("*.yaml") if not p.name.startswith("_"))


def test_one_file_per_method():
    from mixmerge.merge import ALIASES, METHODS

    assert {p.stem for p in FILES} == (set(METHODS) | set(ALIASES)) - {"breadcrumbs_ties"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_yaml_is_valid(path):
    text = path.read_text()
    assert text.startswith("# ") and "\n" in text
    own = yaml.safe_load(text)
    assert own.pop("defaults") == ["_base", "_self_"], f"{path.name} must extend _base.yaml"
    shared = yaml.safe_load(BASE.read_text())
    assert not set(own) & set(shared), f"{path.name} repeats shared keys {set(own) & set(shared)}"
    cfg = {**shared, **own}
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


def test_base_yaml_holds_the_io_keys():
    assert set(IO_KEYS) <= set(yaml.safe_load(BASE.read_text()))


def test_optuna_spaces_list_every_searchable_method():
    """The hparams_search list of spaces is the conf/merge methods that have a space file: a method's
    search space is added by its file alone (Hydra cannot interpolate the merge choice in that list)."""
    search = CONF.parent / "hparams_search"
    doc = yaml.safe_load((search / "merge_optuna.yaml").read_text())
    listed = next(d["/hparams_search/space@hydra.sweeper.spaces"] for d in doc["defaults"] if isinstance(d, dict)
                  and "/hparams_search/space@hydra.sweeper.spaces" in d)
    spaces = {p.stem for p in (search / "space").glob("*.yaml")}
    assert spaces <= {p.stem for p in FILES}, "a search space for a method that conf/merge does not have"
    assert sorted(listed) == sorted(spaces)
    for name in spaces:
        assert list(yaml.safe_load((search / "space" / f"{name}.yaml").read_text())) == [name]
