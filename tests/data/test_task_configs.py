"""The conf/task/*.yaml files: same shape, and each one loads (or fails clearly when it needs the hub)."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mixmerge.data import load_tasks
from mixmerge.data.rows import DatasetNotAvailableError

CONF = Path(__file__).resolve().parents[2] / "conf" / "task"
SHAPE = {"name", "tasks", "mixture", "max_train_examples", "max_eval_examples", "packing"}  # max_length: finetune.max_length


def _load(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"), resolve=True)


@pytest.mark.parametrize("name", ["mixture", "codegen", "codesum", "hub"])
def test_task_config_shape(name):
    text = (CONF / f"{name}.yaml").read_text()
    assert text.startswith("# ")
    cfg = _load(name)
    assert set(cfg) == SHAPE and cfg["name"] == name
    assert set(cfg["mixture"]["weights"]) == set(cfg["tasks"])
    assert cfg["mixture"]["by"] in ("examples", "tokens")


@pytest.mark.parametrize("name", ["mixture", "codegen", "codesum"])
def test_embedded_task_configs_load(name, store):
    cfg = _load(name)
    cfg["max_train_examples"], cfg["max_eval_examples"] = 8, 4
    tasks = load_tasks(cfg, store=store, seed=0)
    assert set(tasks) == set(cfg["tasks"])
    assert all(t.counts() == {"train": 8, "valid": 4, "test": 4} for t in tasks.values())


def test_hub_config_offline_names_the_dataset(store, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DatasetNotAvailableError, match="KodCode/KodCode-V1-SFT-R1"):
        load_tasks(_load("hub"), store=store, seed=0)
