"""Fixtures for the merge tests: the tiny base model and fake specialists (base + small seeded deltas)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

os.environ.setdefault("WANDB_MODE", "disabled")



def make_specialist(base: Path, out: Path, seed: int, scale: float = 0.01) -> Path:
    """Copy ``base`` to ``out`` with seeded Gaussian deltas (relative size ``scale``) on float tensors."""
    shutil.copytree(base, out)
    weights = out / "model.safetensors"
    state = load_file(str(weights))
    gen = torch.Generator().manual_seed(seed)
    for name, t in state.items():
        if t.is_floating_point():
            state[name] = t + scale * t.float().std().clamp(min=1e-3) * torch.randn(t.shape, generator=gen)
    save_file(state, str(weights), metadata={"format": "pt"})
    (out / "manifest.json").unlink(missing_ok=True)
    return out


def make_lora_adapter(base: Path, out: Path, *, r: int, alpha: int, targets: list[str], seed: int) -> Path:
    """A peft LoRA of ``base`` with random A and B (entries ~0.02: ΔW is a few % of the tiny weights)."""
    from peft import LoraConfig, get_peft_model

    from mixmerge.models import load_model

    model = get_peft_model(load_model(base), LoraConfig(r=r, lora_alpha=alpha, target_modules=targets))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(str(out), safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tiny_base(tiny_base) -> Path:
    """The session's tiny model (tests/conftest.py) as a folder path."""
    return tiny_base.path


@pytest.fixture(scope="session")
def specialists(tiny_base, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("specialists")
    return [make_specialist(tiny_base, root / f"spec{i}", seed=100 + i) for i in range(2)]


@pytest.fixture(scope="session")
def lora_adapter(tiny_base, tmp_path_factory) -> Path:
    """A peft LoRA adapter of the tiny base with non-zero B (so it changes the model)."""
    from peft import LoraConfig, get_peft_model

    from mixmerge.models import load_model

    model = load_model(tiny_base)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    out = tmp_path_factory.mktemp("lora") / "adapter"
    peft_model.save_pretrained(str(out), safe_serialization=True)
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    return out
