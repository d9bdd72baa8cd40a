"""Shared fixtures for the data tests: the tiny model's tokenizer and the stdlib corpus (built once)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
MIXTURE_CFG = {
    "name": "mixture",
    "tasks": {"codegen": {"source": "stdlib"}, "codesum": {"source": "stdlib"}},
    "mixture": {"weights": {"codegen": 0.5, "codesum": 0.5}, "by": "examples"},
    "max_train_examples": 120,
    "max_eval_examples": 40,
    "max_length": 256,
    "packing": True,
}


@pytest.fixture(scope="session")
def store(session_store):
    """The session's artifact store (tests/conftest.py), shared with the tiny model."""
    return session_store


@pytest.fixture(scope="session")
def tokenizer(tiny_base):
    from mixmerge.models import load_tokenizer

    return load_tokenizer(tiny_base.path)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """Small hand-written files in exactly the hub schemas (tests/fixtures/data)."""
    return FIXTURES


@pytest.fixture(scope="session")
def mixture_cfg():
    return MIXTURE_CFG


@pytest.fixture(scope="session")
def stdlib_tasks(store):
    """Both embedded tasks from the real stdlib, capped as in MIXTURE_CFG."""
    from mixmerge.data import load_tasks

    return load_tasks(MIXTURE_CFG, store=store, seed=0)
