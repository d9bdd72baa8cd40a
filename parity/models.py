"""Seeded random models for the parity cases: a base and three specialists (base + small seeded deltas,
1 % of each tensor's RMS, as fine-tuning moves them) per architecture and dtype, and one peft LoRA
of the base. Written with transformers' ``save_pretrained`` (safetensors), no tokenizer, no hub."""

from __future__ import annotations

from pathlib import Path

import torch

HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, VOCAB = 64, 128, 3, 4, 2, 256
DELTA_SCALE = 0.01  # of each tensor's RMS: norms (near 1) move by ~0.01, not by 1 % of their small spread, which
# would quantise their deltas to a few thousand float32 levels and tie magnitudes at TIES' threshold


def _config(arch: str):
    common = {"hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS,
              "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB,
              "max_position_embeddings": 128}
    if arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common, tie_word_embeddings=False)
    from transformers import LlamaConfig

    return LlamaConfig(**common, tie_word_embeddings=(arch == "tied"))


def _model(arch: str, seed: int):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch))
    with torch.no_grad():  # norms and biases start at 1 / 0: give them seeded values too
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.02)
    return model


def build_models(root: Path, arch: str, dtype: str) -> dict[str, Path]:
    """BASE, M1, M2, M3 (and ADAPTER for llama float32) under ``root``; returns placeholder -> folder."""
    root = Path(root)
    seed = 1000 * ("llama", "qwen2", "tied").index(arch) + (0 if dtype == "float32" else 500)
    base = _model(arch, seed)
    torch_dtype = getattr(torch, dtype)
    paths = {"BASE": root / "base"}
    base.to(torch_dtype).save_pretrained(paths["BASE"])
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    for i in (1, 2, 3):
        gen = torch.Generator().manual_seed(seed + i)
        spec = _model(arch, seed)
        with torch.no_grad():
            for name, p in spec.named_parameters():
                rms = float(base_state[name].float().pow(2).mean().sqrt())
                noise = torch.randn(p.shape, generator=gen) * (DELTA_SCALE * rms)
                p.copy_(base_state[name] + noise)
        paths[f"M{i}"] = root / f"m{i}"
        spec.to(torch_dtype).save_pretrained(paths[f"M{i}"])
    if arch == "llama" and dtype == "float32":
        paths["ADAPTER"] = _adapter(base, root / "adapter", seed)
    return paths


def _adapter(base, out: Path, seed: int) -> Path:
    """A rank-4 peft LoRA of the base on q/v projections, with seeded non-zero A and B."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(seed + 99)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    peft_model.save_pretrained(out)
    return out
