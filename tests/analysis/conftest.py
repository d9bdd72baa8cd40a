"""Shared fixtures for the analysis tests: the tiny base model folder and fine-tuned look-alikes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file


@pytest.fixture(scope="session")
def tiny_base(tiny_base) -> Path:
    """The session's tiny model (tests/conftest.py) as a folder path."""
    return tiny_base.path


def write_variant(base: Path, out: Path, deltas: dict[str, torch.Tensor], extra: dict | None = None) -> Path:
    """Copy ``base`` to ``out`` with ``deltas`` added to the named tensors (and ``extra`` tensors added)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(base / "config.json", out / "config.json")
    state = load_file(str(base / "model.safetensors"))
    for name, d in deltas.items():
        state[name] = (state[name].double() + d.double()).to(state[name].dtype)
    state.update(extra or {})
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return out


def correlated(shape, rho: float, seed: int, scale: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random tensors whose entries have Pearson correlation ``rho`` in expectation."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(shape, generator=g, dtype=torch.float64)
    z2 = torch.randn(shape, generator=g, dtype=torch.float64)
    return scale * z1, scale * (rho * z1 + (1 - rho**2) ** 0.5 * z2)


@pytest.fixture(scope="session")
def make_variant():
    return write_variant


@pytest.fixture(scope="session")
def make_correlated():
    return correlated
