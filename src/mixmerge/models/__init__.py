"""Base models: the embedded GGUF default, the tiny test model, hub models and local folders.

Everything resolves to an HF-format folder on disk plus a key that identifies its weights, so the
later stages (training, merging, evaluation) treat every base the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mixmerge.cache import ArtifactStore, content_key
from mixmerge.dtypes import torch_dtype
from mixmerge.models.gguf import convert_gguf_to_hf, find_packaged_file
from mixmerge.models.hub import ModelNotAvailableError, cached_snapshot, resolve_hub_snapshot
from mixmerge.models.tiny import write_tiny_model

log = logging.getLogger(__name__)

__all__ = [
    "BaseModel",
    "ModelNotAvailableError",
    "load_model",
    "load_tokenizer",
    "resolve_base_model",
]

SOURCES = ("gguf", "tiny", "hub", "local")


@dataclass(frozen=True)
class BaseModel:
    """A base model as the pipeline sees it: a folder and the key of its weights."""

    name: str
    path: Path
    key: str
    origin: str  # human-readable: where the weights came from


def _embedded_tokenizer(store: ArtifactStore, gguf_cfg: Mapping[str, Any]):
    """The SmolLM2 tokenizer (with chat template), converted from the GGUF once and cached."""
    from transformers import AutoTokenizer

    gguf_path = find_packaged_file(gguf_cfg["package"], gguf_cfg["file"])

    def build(work: Path) -> dict:
        AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).save_pretrained(work)
        return {"source": str(gguf_path)}

    art = store.get_or_build("tokenizer", {"gguf": dict(gguf_cfg)}, build, label="embedded tokenizer")
    return load_tokenizer(art.path)


def resolve_base_model(model_cfg: Mapping[str, Any], store: ArtifactStore) -> BaseModel:
    """Make sure the base model exists as an HF folder and return it (converting or building once)."""
    source, name = model_cfg["source"], model_cfg["name"]
    if source not in SOURCES:
        raise ValueError(f"model.source={source!r} is not one of {SOURCES}")
    if source == "gguf":
        hub_id = model_cfg.get("hub_id")
        if model_cfg.get("prefer_hub_cache") and hub_id and (snap := cached_snapshot(hub_id)) is not None:
            log.info("base model %s: using the hub copy %s from the local HF cache (%s)", name, hub_id, snap)
            return BaseModel(name, snap, content_key("base", {"hub_id": hub_id, "snapshot": snap.name}),
                             f"hub cache {hub_id}")
        gguf_cfg = dict(model_cfg["gguf"])
        gguf_path = find_packaged_file(gguf_cfg["package"], gguf_cfg["file"])
        config = {"source": "gguf", "gguf": gguf_cfg, "dtype": model_cfg["dtype"]}
        art = store.get_or_build(
            "base",
            config,
            lambda work: convert_gguf_to_hf(gguf_path, work, dtype=torch_dtype(model_cfg["dtype"])),
            label=f"base {name} (GGUF conversion)",
        )
        log.info("base model %s: GGUF %s converted at %s", name, gguf_path.name, art.path)
        return BaseModel(name, art.path, art.key, f"GGUF {gguf_path.name}")
    if source == "tiny":
        sizes = dict(model_cfg["tiny"])
        tok_cfg = dict(model_cfg["gguf"])
        config = {"source": "tiny", "tiny": sizes, "tokenizer": tok_cfg}

        def build(work: Path) -> None:
            write_tiny_model(work, _embedded_tokenizer(store, tok_cfg), **sizes)

        art = store.get_or_build("base", config, build, label=f"base {name}")
        return BaseModel(name, art.path, art.key, f"tiny random init (seed {sizes.get('seed', 0)})")
    if source == "local":
        path = Path(model_cfg["path"]).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.path={str(path)!r} is not an HF folder (no config.json)")
        return BaseModel(name, path.resolve(), content_key("base", {"path": str(path.resolve())}), f"local {path}")
    hub_id = model_cfg["hub_id"]
    snap = resolve_hub_snapshot(hub_id, revision=model_cfg.get("revision"),
                                allow_download=bool(model_cfg.get("allow_download", True)))
    return BaseModel(name, snap, content_key("base", {"hub_id": hub_id, "snapshot": snap.name}), f"hub {hub_id}")


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | Path, *, dtype: str = "float32", device: str | torch.device = "cpu"):
    """Load an HF folder as a causal LM in ``dtype`` on ``device``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype))
    return model.to(device)
