"""Shared fixtures for the eval tests: the tiny random Llama (SmolLM2 tokenizer), built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"


@pytest.fixture(scope="session")
def tiny_model(tiny_base):
    import torch

    from mixmerge.models import load_model, load_tokenizer

    torch.manual_seed(0)
    return load_model(tiny_base.path), load_tokenizer(tiny_base.path)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES
