"""Checks on the merge inputs before any tensor is merged: each failure is a ValueError that names the
model, the tensor or the config field, and says what to do. mergekit skips mismatched tensors with a
warning; we refuse, unless ``merge.vocab_policy=truncate`` is asked for (embedding rows are cut to the
smallest vocabulary)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mixmerge.merge.io import LoraAdapterSource

ARCH_KEYS = ("architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "tie_word_embeddings", "vocab_size")
VOCAB_TENSOR_HINTS = ("embed_tokens", "lm_head", "wte", "embed_out", "word_embeddings")


def read_config(path: Path) -> dict | None:
    cfg = Path(path) / "config.json"
    return json.loads(cfg.read_text()) if cfg.is_file() else None


def check_architectures(base_path: Path, model_paths: Sequence[Path], vocab_policy: str) -> None:
    base_cfg = read_config(base_path)
    if base_cfg is None:
        raise ValueError(f"merge.base={str(base_path)!r} has no config.json; it must be an HF model folder")
    for path in model_paths:
        cfg = read_config(path)
        if cfg is None:  # a LoRA adapter: its shapes are checked against the base tensor by tensor
            continue
        for key in ARCH_KEYS:
            if key == "vocab_size" and vocab_policy == "truncate":
                continue
            if base_cfg.get(key) != cfg.get(key):
                what = "vocabulary sizes" if key == "vocab_size" else "architectures"
                hint = " (or set merge.vocab_policy=truncate)" if key == "vocab_size" else ""
                raise ValueError(f"different {what}: {path} has {key}={cfg.get(key)!r} but merge.base "
                                 f"{base_path} has {base_cfg.get(key)!r}; merge only models of one base{hint}")


def _tokenizer_vocab(path: Path):
    tok = Path(path) / "tokenizer.json"
    if not tok.is_file():
        return None
    data = json.loads(tok.read_text())
    added = sorted((t.get("id"), t.get("content")) for t in data.get("added_tokens", []))
    return data.get("model", {}).get("vocab"), added


def check_tokenizers(base_path: Path, model_paths: Sequence[Path], vocab_policy: str) -> None:
    if vocab_policy == "truncate":
        return
    ref_file = Path(base_path) / "tokenizer.json"
    if not ref_file.is_file():
        return
    ref_bytes, ref = ref_file.read_bytes(), None
    for path in model_paths:
        other_file = Path(path) / "tokenizer.json"
        if not other_file.is_file() or other_file.read_bytes() == ref_bytes:
            continue  # identical files: no need to parse 3 MB of JSON
        ref = ref or _tokenizer_vocab(base_path)
        if _tokenizer_vocab(path) != ref:
            raise ValueError(f"different tokenizers: {path}/tokenizer.json does not match merge.base's "
                             f"{base_path}/tokenizer.json (vocabulary or added tokens differ)")


def check_tensors(base, sources: Sequence, labels: Sequence[str], vocab_policy: str) -> dict[str, tuple[int, ...]]:
    """Same tensor names and shapes everywhere; returns name -> output shape (truncated if asked)."""
    names = base.names()
    base_set = set(names)
    shapes: dict[str, tuple[int, ...]] = {}
    for src, label in zip(sources, labels, strict=True):
        missing = sorted(base_set - set(src.names()))
        if missing:
            raise ValueError(f"missing tensor: {label} has no {missing[0]!r} (and {len(missing) - 1} more) "
                             f"that merge.base has")
        extra = sorted(set(src.names()) - base_set)
        if extra:
            raise ValueError(f"missing tensor: merge.base has no {extra[0]!r} that {label} has")
    for name in names:
        shape = base.shape(name)
        for src, label in zip(sources, labels, strict=True):
            other = src.shape(name)
            if other == shape:
                continue
            is_vocab = any(h in name for h in VOCAB_TENSOR_HINTS) and other[1:] == shape[1:]
            if is_vocab and vocab_policy == "truncate":
                shape = (min(shape[0], other[0]), *shape[1:])
                continue
            hint = " (different vocabulary sizes; merge.vocab_policy=truncate cuts to the smallest)" if is_vocab else ""
            raise ValueError(f"shape mismatch: tensor {name!r} is {tuple(other)} in {label} but "
                             f"{tuple(base.shape(name))} in merge.base{hint}")
        shapes[name] = tuple(shape)
    return shapes


def all_finite(tensor) -> bool:
    """No NaN/Inf in a float torch tensor or numpy array (the fused path's); other dtypes are finite.

    A finite sum proves every entry finite (NaN/Inf propagate) in one pass without a mask; only an
    overflowing sum needs the exact check."""
    if isinstance(tensor, np.ndarray):
        if tensor.dtype.kind != "f":
            return True
        return bool(np.isfinite(tensor.sum(dtype=np.float64))) or bool(np.isfinite(tensor).all())
    if not tensor.is_floating_point():
        return True
    return bool(tensor.sum().isfinite()) or bool(tensor.isfinite().all())


def check_finite(name: str, tensor, label: str) -> None:
    """A torch tensor or a numpy array (the fused path's) must hold no NaN/Inf."""
    if not all_finite(tensor):
        raise ValueError(f"NaN/Inf in input: tensor {name!r} of {label} has non-finite values; "
                         f"fix or re-train that model before merging")


def check_same_base(base, sources: Sequence, labels: Sequence[str], max_relative_distance: float,
                    n_probe: int = 4) -> None:
    """Refuse a base that is not the specialists' base: on a few 2-D tensors, a fine-tune stays close
    to its base (relative distance ||theta - base|| / ||base|| far below 1); an unrelated model does not.
    ``merge.max_base_distance`` (default 0.5) is the bound."""
    probes = [n for n in base.names() if len(base.shape(n)) == 2 and ".layers." in n][:n_probe]
    if not probes:
        probes = [n for n in base.names() if len(base.shape(n)) == 2][:n_probe]
    for name in probes:
        b = base.read_f32(name)
        denom = float(np.linalg.norm(b))
        if denom == 0:
            continue
        for src, label in zip(sources, labels, strict=True):
            if isinstance(src, LoraAdapterSource):
                continue
            dist = float(np.linalg.norm(src.read_f32(name) - b)) / denom
            if dist > max_relative_distance:
                raise ValueError(f"merge.base does not look like the base of {label}: tensor {name!r} differs "
                                 f"by {dist:.0%} of its norm (> merge.max_base_distance={max_relative_distance}); "
                                 f"pass the model the specialists were fine-tuned from")
